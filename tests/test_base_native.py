"""`prn evaluate` scores a base network from its own predictions at their native size when they are files at
hand (``files:`` / ``coco-results:``, the store's recorded spec or ``--base-predictions``), as the paper's
protocol does, instead of the store's maps after their round trip through store resolution."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from prn_data.base import open_base
from prn_data.base.export import export_predictions
from prn_data.build import BuildConfig, build
from prn_data.datasets import open_dataset
from prn_data.errors import PrnError
from prn_data.resize import ResizePolicy
from prn_data.store import open_store
from prn_data.targets import TargetParams
from prn_data.testing import build_tiny_store, run_prn
from prn_model.cli import app
from prn_model.evaluate import evaluate_store

runner = CliRunner()


@pytest.fixture(scope="module")
def files_store(tmp_path_factory):
    """Two synthetic val scenes, the simulated base exported as files (prn's layout), and a store built from
    those files at a 32-px shorter side, so the base's maps lose detail on the way through the store."""
    tmp = tmp_path_factory.mktemp("native")
    ds = open_dataset("synthetic:2", "val")
    pred = tmp / "pred"
    export_predictions(ds, open_base("simulated:seed=3", ds.categories), pred)
    store = tmp / "s.zarr"
    result = build(BuildConfig(dataset="synthetic:2", split="val", base=f"files:{pred}", out=str(store),
                               scheduler="threads", workers=1, policy=ResizePolicy(short=32, max_long=64),
                               params=TargetParams(sigma=2.0)))
    assert result.ok, result.failures
    return str(store), pred


def test_native_base_score_is_prn_pq_on_the_same_files(files_store):
    store, pred = files_store
    res = evaluate_store(store, base_only=True, workers=1)
    assert res["scored"] == "original" and res["base_predictions"] == f"native predictions (files:{pred})"
    g = open_store(store).attrs["dataset"]["gt"]
    p = run_prn("pq", g["json"], g["png_dir"], pred / "panoptic.json", pred / "panoptic", "--json")
    ref = json.loads(p.stdout)
    for k in ("All", "Things", "Stuff"):
        assert res["base"][k] == pytest.approx(ref[k], abs=1e-12)
    # the round trip through the 32-px store loses pixels: a different (lower-SQ) figure
    trip = evaluate_store(store, base_only=True, workers=1, base_predictions="store")
    assert trip["base_predictions"] == "store resolution"
    assert trip["base"]["All"]["sq"] < res["base"]["All"]["sq"] - 0.01


def test_the_table_says_which_base_was_scored(files_store):
    store, pred = files_store
    r = runner.invoke(app, ["evaluate", "--store", store, "--base-only", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].endswith(f"; base: native predictions (files:{pred})")
    r = runner.invoke(app, ["evaluate", "--store", store, "--base-only", "--workers", "1", "--base-predictions", "store"])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].endswith("; base: store resolution")


def test_base_predictions_given_for_a_store_of_another_base(files_store, tmp_path):
    store, pred = files_store
    sim = build_tiny_store(tmp_path / "sim.zarr", n=2, split="val", short=32, max_long=64)
    # a simulated base is not files: the store's maps are scored, unless predictions are given
    assert evaluate_store(sim, base_only=True, workers=1)["base_predictions"] == "store resolution"
    given = evaluate_store(sim, base_only=True, workers=1, base_predictions=f"files:{pred}")
    ref = evaluate_store(store, base_only=True, workers=1)
    assert given["base"]["All"] == ref["base"]["All"]  # the same files, the same ground truth
    with pytest.raises(PrnError, match="expected files:… or coco-results:…"):
        evaluate_store(sim, base_only=True, base_predictions="simulated")
    with pytest.raises(PrnError, match="prediction directory does not exist"):
        evaluate_store(sim, base_only=True, base_predictions=f"files:{tmp_path / 'nope'}")
