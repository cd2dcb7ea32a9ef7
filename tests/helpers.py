"""Test builders that need ``prn_model`` (the others, which tests and benchmarks share, are in
:mod:`prn_data.testing`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prn_data.records import Category, CategorySet
from prn_data.testing import build_tiny_store
from prn_model.config import TrainConfig, config_from_dict, override
from prn_model.train import train

# The smallest network: ResNet-18 layout at 1/8 width; GroupNorm so batches of one behave.
TINY_MODEL = {"depth": 18, "widths": [8, 16, 32, 64], "n_en": 8, "c_de": 16, "skip_channels": 8,
              "semantic_head_channels": 16, "head_channels": 8, "norm": "group"}


def tiny_config(store: str, out: Path, **changes: Any) -> TrainConfig:
    """A training config of :data:`TINY_MODEL` on ``store`` for a few CPU steps, written to ``out``;
    ``changes`` are :func:`prn_model.config.override`'s dotted overrides."""
    d = {
        "model": TINY_MODEL,
        "data": {"store": store, "batch_size": 2, "num_workers": 0},
        "augment": {"gridmask": {"prob": 0.5, "d_min": 8, "d_max": 24}},
        "iters": 4,
        "log_every": 1,
        "checkpoint_every": 100,
        "device": "cpu",
        "out": str(out),
    }
    return override(config_from_dict(d), **changes)


def tiny_trained_run(tmp: Path, *, n: int = 2, split: str = "val", short: int = 32, max_long: int = 64,
                     iters: int = 1) -> tuple[str, Path]:
    """A tiny synthetic store (simulated base) of ``n`` samples at ``tmp/<split>.zarr`` and a checkpoint of
    :data:`TINY_MODEL` after ``iters`` training steps on it: ``(store, tmp/run/model.pt)``."""
    store = build_tiny_store(tmp / f"{split}.zarr", n=n, split=split, short=short, max_long=max_long)
    train(tiny_config(store, tmp / "run", iters=iters), show_progress=False)
    return store, tmp / "run" / "model.pt"


# Two things and two stuff classes with non-contiguous ids, for merging and prediction-file tests.
MERGE_CATS = CategorySet(
    [
        Category(1, "person", True, 0),
        Category(3, "car", True, 1),
        Category(7, "road", False, 2),
        Category(9, "sky", False, 3),
    ]
)
