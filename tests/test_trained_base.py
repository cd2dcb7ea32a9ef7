"""The trained base network's code path: a ``blank`` store (constant base inputs), a plain PRN trained on it
for two steps, then run as a ``python:`` base through the adapter users' models go through, and a store
built with it."""

from __future__ import annotations

import numpy as np
import pytest

from prn_data.base import open_base
from prn_data.build import BuildConfig, build
from prn_data.datasets import open_dataset
from prn_data.datasets.synthetic import synthetic_categories
from prn_data.errors import BaseNetworkError
from prn_data.records import VOID
from prn_data.resize import ResizePolicy
from prn_data.store import open_store

from helpers import tiny_config

SIZE = {"min_size": (64, 64), "max_size": (64, 80)}


def _build(tmp_path, base: str, name: str) -> str:
    out = tmp_path / name
    r = build(BuildConfig(dataset="synthetic:3", split="train", base=base, out=str(out), workers=1,
                          scheduler="threads", policy=ResizePolicy(short=0),
                          dataset_options={"root": str(tmp_path / "scenes"), **SIZE}))
    assert not r.failures, r.failures
    return str(out)


def test_blank_base_then_trained_base(tmp_path, monkeypatch):
    from prn_model.train import train

    cats = synthetic_categories()
    ds = open_dataset("synthetic:3", "train", root=str(tmp_path / "scenes"), **SIZE)
    blank = open_base("python:prn_model.trained_base:blank", cats).predict([ds.load(0)])[0]
    assert (blank.panoptic == VOID).all() and blank.segments == [] and blank.probs is None

    # the blank store: zero instance maps, uniform probabilities; a plain PRN learns from the image alone
    store = _build(tmp_path, "python:prn_model.trained_base:blank", "blank.zarr")
    s = open_store(store).read_sample(0)
    assert not np.asarray(s["base/instance"]).any()
    np.testing.assert_allclose(np.asarray(s["base/semantic"]), 1.0 / len(cats), atol=1e-3)
    result = train(tiny_config(store, tmp_path / "run", iters=2, **{"model.residual": False}), show_progress=False)
    assert result["step"] == 2

    with pytest.raises(BaseNetworkError, match="PRN_BASE_CHECKPOINT"):
        open_base("python:prn_model.trained_base:factory,batch=2", cats).predict([ds.load(0)])
    monkeypatch.setenv("PRN_BASE_CHECKPOINT", str(tmp_path / "run" / "model.pt"))
    sample = ds.load(1)
    pred = open_base("python:prn_model.trained_base:factory", cats).predict([sample])[0]
    h, w = sample.panoptic.shape
    assert pred.panoptic.shape == (h, w) and pred.probs.shape == (len(cats), -(-h // 4), -(-w // 4))
    np.testing.assert_allclose(pred.probs.sum(axis=0), 1.0, atol=1e-4)
    assert {g.category_id for g in pred.segments} <= {c.id for c in cats}
    assert all(g.score is None or 0.0 <= g.score <= 1.0 for g in pred.segments)

    # and a store built with it, as with any user's model
    trained = open_store(_build(tmp_path, "python:prn_model.trained_base:factory", "trained.zarr"))
    assert trained.attrs["base"] == "python:prn_model.trained_base:factory" and trained.done.all()
