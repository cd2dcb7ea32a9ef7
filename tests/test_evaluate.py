"""`prn pq` and `prn evaluate` (prn_model.evaluate, prn_model.scoring and the `prn evaluate` command): the
command-line forms, the choice of ground truth, streamed scoring, and an end-to-end run on a tiny synthetic
store with a checkpoint from a few training steps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from prn_data.datasets import open_dataset
from prn_data.errors import DatasetError
from prn_data.panoptic_io import read_rgb_ids
from prn_data.pq import pq_compute, pq_from_arrays
from prn_data.records import Segment
from prn_data.store import open_store
from prn_data.testing import perturb, repeat_images
from prn_model.cli import app
from prn_model.checkpoint import load_checkpoint
from prn_model.evaluate import evaluate_model, evaluate_store, predict
from prn_model.scoring import GroundTruth, StreamedScorer

from helpers import tiny_trained_run

runner = CliRunner()


@pytest.fixture(scope="module")
def perturbed(coco_sample, tmp_path_factory):
    gt_json = coco_sample / "annotations" / "panoptic_val2017.json"
    gt_dir = coco_sample / "annotations" / "panoptic_val2017"
    tmp = tmp_path_factory.mktemp("pq")
    pred_json = perturb(json.loads(gt_json.read_text()), gt_dir, tmp, seed=5)
    return gt_json, gt_dir, pred_json, tmp / "pred"


def test_prn_pq_json_is_pq_computes_form(perturbed):
    gt_json, gt_dir, pred_json, pred_dir = perturbed
    r = runner.invoke(app, ["pq", str(gt_json), str(gt_dir), str(pred_json), str(pred_dir), "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    ref = pq_compute(gt_json, gt_dir, pred_json, pred_dir, workers=1)
    for k in ("All", "Things", "Stuff"):
        assert set(got[k]) == {"pq", "sq", "rq", "n"}
        assert got[k] == pytest.approx(ref[k], abs=1e-12)
    assert {int(c) for c in got["per_class"]} == set(ref["per_class"])
    assert 0 < got["All"]["pq"] < 1


def test_prn_pq_table(perturbed):
    gt_json, gt_dir, pred_json, pred_dir = perturbed
    r = runner.invoke(app, ["pq", str(gt_json), str(gt_dir), str(pred_json), str(pred_dir), "--per-class"])
    assert r.exit_code == 0, r.output
    ref = pq_compute(gt_json, gt_dir, pred_json, pred_dir)
    lines = r.stdout.splitlines()
    all_row = next(line for line in lines if line.startswith("All "))
    pq_, sq, rq, n = all_row.split("|")[1].split()
    assert float(pq_) == round(100 * ref["All"]["pq"], 1) and int(n) == ref["All"]["n"]
    assert any(line.startswith("person ") for line in lines)


def test_prn_pq_bad_input_is_one_line_exit_2(perturbed, tmp_path):
    gt_json, gt_dir, pred_json, _ = perturbed
    cmd = [sys.executable, "-c", "from prn_data.cli import main; main()", "pq", str(gt_json), str(gt_dir), str(pred_json), str(tmp_path / "nope")]
    env = dict(os.environ, COLUMNS="500")  # rich wraps the message at the terminal width otherwise
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2
    assert "nope: PNG folder does not exist" in p.stderr and "Traceback" not in p.stderr


# --- prn evaluate ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny synthetic store and a checkpoint after 2 training steps."""
    return tiny_trained_run(tmp_path_factory.mktemp("evaluate"), iters=2)


@pytest.mark.slow
def test_evaluate_end_to_end(trained, tmp_path):
    store, ckpt = trained
    out = tmp_path / "eval"
    r = runner.invoke(app, ["evaluate", "--store", store, "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu", "--batch", "2"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["scored"] == "original" and res["images"] == 2
    for who in ("base", "prn"):
        assert {"All", "Things", "Stuff", "per_class"} <= set(res[who])
    lines = r.stdout.splitlines()
    assert lines[0].startswith("scored at original size")
    base_row = next(line for line in lines if line.startswith("base"))
    prn_row = next(line for line in lines if line.startswith("PRN"))
    diff_row = next(line for line in lines if line.startswith("diff"))
    b, p, d = (np.array(row.split()[1:], float) for row in (base_row, prn_row, diff_row))
    assert b[0] == pytest.approx(100 * res["base"]["All"]["pq"], abs=0.006)
    assert p[3] == pytest.approx(100 * res["prn"]["Things"]["pq"], abs=0.006)
    np.testing.assert_allclose(d, p - b, atol=0.011)

    # The written predictions are COCO panoptic files that score the same again against the dataset's own
    # ground truth (recorded in the store).

    g = open_store(store).attrs["dataset"]["gt"]
    for who in ("base", "prn"):
        again = pq_compute(g["json"], g["png_dir"], out / who / "panoptic.json", out / who / "panoptic")
        for k in ("All", "Things", "Stuff"):  # scored as they came, yet bit-identical to scoring the files
            assert again[k] == res[who][k]

    # --base-only gives the same base figures without a checkpoint.
    r = runner.invoke(app, ["evaluate", "--store", store, "--base-only", "--json"])
    assert r.exit_code == 0, r.output
    only = json.loads(r.stdout)
    assert "prn" not in only and only["base"]["All"] == pytest.approx(res["base"]["All"], abs=1e-12)


@pytest.mark.slow
def test_evaluate_falls_back_to_the_store_gt(trained, tmp_path):
    store, ckpt = trained
    copy = tmp_path / "nogt.zarr"
    shutil.copytree(store, copy)
    open_store(copy, "r+").set_attrs(dataset={})
    res = evaluate_store(str(copy), checkpoint=ckpt, device="cpu")
    assert res["scored"] == "store" and "store resolution" in res["ground_truth"]
    # base at store resolution: the store's own gt/ against its base/, scored directly
    s = open_store(copy)
    items = []
    for i in range(len(s)):
        x = s.read_sample(i)
        items.append((x["gt/panoptic"], x["gt/segments"], x["base/panoptic"], x["base/segments"]))
    ref = pq_from_arrays(items, s.categories)
    assert res["base"]["All"] == ref["All"]
    # the trainer's validation hook: PRN at store resolution, in percent
    model, _ = load_checkpoint(ckpt, "cpu")
    v = evaluate_model(model, str(copy), device="cpu")
    assert v["pq"] == pytest.approx(100 * res["prn"]["All"]["pq"], abs=1e-9)
    assert v["pq_th"] == pytest.approx(100 * res["prn"]["Things"]["pq"], abs=1e-9)


def test_evaluate_errors(trained, tmp_path):
    store, _ = trained
    r = runner.invoke(app, ["evaluate", "--store", store])
    assert r.exit_code != 0 and "--checkpoint" in str(r.exception)
    r = runner.invoke(app, ["evaluate", "--store", store, "--checkpoint", str(tmp_path / "none.pt"), "--device", "cpu"])
    assert "none.pt" in str(r.exception)


def test_streamed_scoring_is_bit_identical_to_scoring_the_written_files(perturbed, tmp_path):
    """The evaluator scores each image as it comes, in threads, out of order; the figures must still be
    those of pq_compute over the files it wrote (summed in the ground truth's order), bit for bit."""
    gt_json, gt_dir, pred_json, pred_dir = perturbed
    cats = open_dataset(f"coco:{gt_json.parents[1]}", "val2017").categories
    pred = {a["image_id"]: a for a in json.loads(pred_json.read_text())["annotations"]}
    big = repeat_images(json.loads(gt_json.read_text()), 6)
    (tmp_path / "gt.json").write_text(json.dumps(big))
    truth = GroundTruth("original", "test", json=tmp_path / "gt.json", png_dir=gt_dir,
                        annotations={a["image_id"]: a for a in big["annotations"]})
    ev = StreamedScorer(truth, cats, ("a", "b"), out_dir=tmp_path / "out", workers=3)
    order = list(np.random.default_rng(0).permutation(len(big["annotations"])))
    for k in order:
        a = big["annotations"][k]
        src = pred[int(a["image_id"].split("_")[0])]
        ids = read_rgb_ids(pred_dir / src["file_name"])
        segs = [Segment.from_json(s, cats) for s in src["segments_info"]]
        pan = np.where(ids == 0, -1, ids)
        # "b" drops every second segment: two different prediction sets against one ground truth read
        pan_b = np.where(np.isin(pan, [s.id for s in segs[::2]]), -1, pan)
        meta = {"image_id": a["image_id"], "file_name": a["file_name"], "orig_size": pan.shape}
        ev.add(meta, {"a": (pan, segs), "b": (pan_b, segs[1::2])})
        assert len(ev.pending) <= 2 * 3  # bounded: never the whole split in memory
    res = ev.finish()
    for name in ("a", "b"):
        written = json.loads((tmp_path / "out" / name / "panoptic.json").read_text())
        assert [w["image_id"] for w in written["annotations"]] == [big["annotations"][k]["image_id"] for k in order]
        ref = pq_compute(tmp_path / "gt.json", gt_dir, tmp_path / "out" / name / "panoptic.json", tmp_path / "out" / name / "panoptic", workers=1)
        assert res[name] == ref
    assert res["a"]["All"]["pq"] != res["b"]["All"]["pq"]

    ev = StreamedScorer(truth, cats, ("a",), workers=1)
    with pytest.raises(DatasetError, match="gt.json.*no ground truth for image id nope"):
        ev.add({"image_id": "nope", "file_name": "x.png", "orig_size": (1, 1)}, {"a": (np.zeros((1, 1), int), [])})
    ev.close()


def test_predict_with_a_reader_thread_yields_the_same_as_without(trained):
    store_url, ckpt = trained
    store = open_store(store_url)
    model, _ = load_checkpoint(ckpt, "cpu")
    idx = list(range(len(store)))
    runs = [list(predict(model, store, idx, device="cpu", batch=1, prefetch=pf)) for pf in (False, True)]
    assert [m["index"] for m, _ in runs[1]] == idx
    for (ma, (pa, sa)), (mb, (pb, sb)) in zip(*runs):
        assert ma["image_id"] == mb["image_id"]
        np.testing.assert_array_equal(pa, pb)
        assert [s.to_json() for s in sa] == [s.to_json() for s in sb]
    base_only = list(predict(None, store, idx, prefetch=True))
    assert [m["index"] for m, r in base_only] == idx and all(r is None for _, r in base_only)


def test_streamed_scoring_against_a_reopened_dataset(cityscapes_sample):
    """Ground truth from a dataset prn reads itself (Cityscapes gtFine, no COCO JSON): the ground truth
    as prediction scores PQ 1 on every class it holds; a prediction with one instance shifted scores what
    pq_from_arrays gives for the same pair."""

    ds = open_dataset(f"cityscapes:{cityscapes_sample}", "val")
    s = ds.load(0)
    thing = next(seg for seg in s.segments if seg.isthing and not seg.iscrowd)
    moved = s.panoptic.copy()
    moved[moved == thing.id] = -1
    moved[np.roll(s.panoptic == thing.id, 9, axis=1)] = thing.id
    truth = GroundTruth("original", "dataset", dataset=ds)
    ev = StreamedScorer(truth, ds.categories, ("same", "moved"), workers=2)
    meta = {"image_id": ds.keys()[0], "file_name": "x.png", "orig_size": s.panoptic.shape}
    ev.add(meta, {"same": (s.panoptic, s.segments), "moved": (moved, s.segments)})
    res = ev.finish()
    assert res["same"]["All"]["pq"] == 1.0 and res["same"]["All"]["n"] == len({g.category_id for g in s.segments if not g.iscrowd})
    assert res["moved"] == pq_from_arrays([(s.panoptic, s.segments, moved, s.segments)], ds.categories)
    assert res["moved"]["All"]["pq"] < 1.0
