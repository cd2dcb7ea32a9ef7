"""`prn refine` (prn_model.refine): PRN on new images and a base network's predictions, without a store.

Checkpoints come from one training step on tiny stores (the shipped COCO sample at a 64-pixel shorter side,
and synthetic scenes); the refined PNG + JSON are scored by `prn pq`, compared with `prn evaluate`'s PRN
output for the same images, read back by `files:`, and the errors are checked by name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch

from prn_data.base import BasePrediction, open_base
from prn_data.base.export import export_predictions
from prn_data.build import BuildConfig, build
from prn_data.datasets import open_dataset
from prn_data.errors import BaseNetworkError, DatasetError
from prn_data.panoptic_io import read_rgb_ids, refresh_segments
from prn_data.pq import pq_compute
from prn_data.records import VOID
from prn_data.resize import ResizePolicy
from prn_data.store import open_store
from prn_data.targets import TargetParams
from prn_data.testing import COCO_SAMPLE, run_prn
from prn_model.checkpoint import read_checkpoint
from prn_model.evaluate import evaluate_store
from prn_model.refine import (
    ImageFolder,
    RefineError,
    image_sample,
    load_refiner,
    open_images,
    refine,
    refine_to_folder,
    resolve_categories,
)
from prn_model.train import train

from helpers import tiny_config, tiny_trained_run

GT_JSON = COCO_SAMPLE / "annotations" / "panoptic_val2017.json"
GT_DIR = COCO_SAMPLE / "annotations" / "panoptic_val2017"
IMAGES = COCO_SAMPLE / "val2017"
POLICY = ResizePolicy(short=64, max_long=96)


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory):
    """The COCO sample built at a 64-px shorter side with the simulated base, a checkpoint after one
    training step on it, and that base exported as files (prn's prediction layout)."""
    tmp = tmp_path_factory.mktemp("refine-coco")
    store = str(tmp / "coco.zarr")
    result = build(BuildConfig(dataset=f"coco:{COCO_SAMPLE}", split="val2017", base="simulated:seed=4", out=store,
                               scheduler="threads", workers=1, policy=POLICY, params=TargetParams(sigma=2.0)))
    assert result.ok, result.failures
    train(tiny_config(store, tmp / "run", iters=1), show_progress=False)
    ds = open_dataset(f"coco:{COCO_SAMPLE}", "val2017")
    export_predictions(ds, open_base("simulated:seed=4", ds.categories), tmp / "base")
    return {"store": store, "ckpt": tmp / "run" / "model.pt", "base": tmp / "base", "tmp": tmp}


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A tiny synthetic store (simulated base) and a checkpoint after one training step on it."""
    tmp = tmp_path_factory.mktemp("refine-synthetic")
    store, ckpt = tiny_trained_run(tmp, n=3, split="train", short=48)
    return {"store": store, "ckpt": ckpt, "tmp": tmp}


def _anns(path):
    return {str(a["image_id"]): a for a in json.loads(path.read_text())["annotations"]}


def test_checkpoint_records_how_inputs_were_made(coco_run):
    data = read_checkpoint(coco_run["ckpt"])["data"]
    attrs = open_store(coco_run["store"]).attrs
    for key in ("resize_policy", "target_params", "label_divisor", "categories", "canvas"):
        assert data[key] == attrs[key], key
    r = load_refiner(coco_run["ckpt"])
    assert r.policy == POLICY and r.params.sigma == 2.0 and r.source == "checkpoint" and not r.warnings
    assert r.canvas == tuple(attrs["canvas"]) and len(r.categories) == 133


def test_cli_refine_coco_sample_scored_by_prn_pq(coco_run, tmp_path):
    out = tmp_path / "refined"
    p = run_prn("refine", "--checkpoint", coco_run["ckpt"], "--images", IMAGES, "--base", f"files:{coco_run['base']}",
                "--out", out, "--device", "cpu")
    assert "refined 2 images" in p.stdout
    # One layout: panoptic.json + panoptic/<stem>.png, at each image's original size, COCO's integer ids.
    assert sorted(x.name for x in out.iterdir()) == ["panoptic", "panoptic.json"]
    anns = _anns(out / "panoptic.json")
    assert sorted(anns) == ["142238", "439180"]
    gt = _anns(GT_JSON)
    for key, a in anns.items():
        assert a["file_name"] == gt[key]["file_name"]
        assert read_rgb_ids(out / "panoptic" / a["file_name"]).shape == read_rgb_ids(GT_DIR / a["file_name"]).shape
    q = run_prn("pq", GT_JSON, GT_DIR, out / "panoptic.json", out / "panoptic", "--json")
    got = json.loads(q.stdout)
    ref = pq_compute(GT_JSON, GT_DIR, out / "panoptic.json", out / "panoptic", workers=1)
    for k in ("All", "Things", "Stuff"):
        assert got[k] == pytest.approx(ref[k], abs=1e-12)
    # files:OUT reads the refined predictions back unchanged.
    ds = open_dataset(f"coco:{COCO_SAMPLE}", "val2017")
    back = open_base(f"files:{out}", ds.categories)
    for i in range(len(ds)):
        s = ds.load(i)
        pred = back.predict([s])[0]
        ids = read_rgb_ids(out / "panoptic" / anns[s.image_id]["file_name"])
        np.testing.assert_array_equal(np.where(pred.panoptic < 0, 0, pred.panoptic), ids)


def test_refine_equals_evaluate_on_the_same_images(coco_run, tmp_path):
    """The inputs are made as the build makes them and padded to the training canvas, so refining the
    images gives exactly `prn evaluate`'s PRN output on the store built from them (same process, same
    threads): from the dataset with the simulated base, and from the image folder with its export."""
    ev = evaluate_store(coco_run["store"], checkpoint=coco_run["ckpt"], out=tmp_path / "ev", device="cpu", workers=1)
    assert ev["images"] == 2
    want = _anns(tmp_path / "ev" / "prn" / "panoptic.json")
    runs = {"dataset": (f"coco:{COCO_SAMPLE}", "simulated:seed=4"), "folder": (IMAGES, f"files:{coco_run['base']}")}
    for name, (images, base) in runs.items():
        summary = refine_to_folder(images, base, coco_run["ckpt"], tmp_path / name, split="val2017")
        assert summary["images"] == 2 and summary["missing"] == 0
        got = _anns(tmp_path / name / "panoptic.json")
        assert got == want, name
        for a in got.values():
            np.testing.assert_array_equal(read_rgb_ids(tmp_path / name / "panoptic" / a["file_name"]),
                                          read_rgb_ids(tmp_path / "ev" / "prn" / "panoptic" / a["file_name"]))


def test_cli_refine_synthetic_scored_by_prn_pq(synthetic_run, tmp_path):
    ds = open_dataset("synthetic:3", "train")
    out = tmp_path / "refined"
    run_prn("refine", "--checkpoint", synthetic_run["ckpt"], "--images", "synthetic:3", "--split", "train",
            "--base", "simulated", "--out", out, "--device", "cpu", "--batch", "2")
    anns = _anns(out / "panoptic.json")
    assert sorted(anns) == sorted(ds.keys())
    for i in range(len(ds)):
        a = anns[ds.keys()[i]]
        assert read_rgb_ids(out / "panoptic" / a["file_name"]).shape == ds.orig_size(i)
        assert all(0.0 <= s.get("score", 0.0) <= 1.0 for s in a["segments_info"])
    q = run_prn("pq", ds.json_path, ds.panoptic_dir, out / "panoptic.json", out / "panoptic", "--json")
    ref = pq_compute(ds.json_path, ds.panoptic_dir, out / "panoptic.json", out / "panoptic", workers=1)
    assert json.loads(q.stdout)["All"] == pytest.approx(ref["All"], abs=1e-12)


class BoxBase:
    """A base network for any image: the first stuff class everywhere, one thing box (score 0.9)."""

    spec = "test:box"

    def __init__(self, categories):
        self.stuff = next(c for c in categories if not c.isthing)
        self.thing = next(c for c in categories if c.isthing)

    def predict(self, samples):
        out = []
        for s in samples:
            h, w = s.orig_size
            pan = np.full((h, w), self.stuff.id * 1000, np.int32)
            pan[h // 4 : h // 2, w // 4 : w // 2] = self.thing.id * 1000 + 1
            from prn_data.records import Segment

            segs = [Segment(self.stuff.id * 1000, self.stuff.id, self.stuff.train_id, False),
                    Segment(self.thing.id * 1000 + 1, self.thing.id, self.thing.train_id, True, score=0.9)]
            out.append(BasePrediction(pan, refresh_segments(pan, segs), None, str(s.image_id)))
        return out


def test_refine_streams_in_flat_memory(synthetic_run):
    """Python's peak traced memory while refining 2N images is that of N: nothing per image is kept."""
    refiner = load_refiner(synthetic_run["ckpt"])
    base = BoxBase(refiner.categories)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (180, 240, 3), dtype=np.uint8) for _ in range(2)]

    def peak(n: int) -> int:
        images = (image_sample(frames[i % 2], f"frame{i:03d}.png") for i in range(n))
        tracemalloc.start()
        try:
            count = 0
            for r in refine(images, base, refiner, batch=2):
                assert r.panoptic.shape == (180, 240) and r.image_id == f"frame{count:03d}"
                count += 1
            assert count == n
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(2)  # first calls allocate caches
    small, large = peak(4), peak(8)
    # keeping each result (its panoptic map and base prediction at 180×240) would add 1.4 MB for 4 more
    # images; streaming, the peaks are equal to a few kB
    assert large < small + 500_000, (small, large)


def test_errors_are_named(coco_run, synthetic_run, tmp_path):
    ckpt, base_dir = coco_run["ckpt"], coco_run["base"]
    # An image the base has no prediction for; with allow_missing it is refined from an empty prediction.
    flat = tmp_path / "one"
    shutil.copytree(base_dir, flat)
    data = json.loads((flat / "panoptic.json").read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 439180]
    (flat / "panoptic.json").write_text(json.dumps(data))
    with pytest.raises(BaseNetworkError, match=r"no prediction for image 000000439180 \(000000439180\.jpg\)"):
        refine_to_folder(IMAGES, f"files:{flat}", ckpt, tmp_path / "o1")
    s = refine_to_folder(IMAGES, f"files:{flat}", ckpt, tmp_path / "o2", allow_missing=True)
    assert s["images"] == 2 and s["missing"] == 1
    # A prediction listed in the JSON whose PNG is missing.
    gone = tmp_path / "gone"
    shutil.copytree(base_dir, gone)
    (gone / "panoptic" / "000000142238.png").unlink()
    with pytest.raises(BaseNetworkError, match=r"gone/panoptic/000000142238\.png: panoptic PNG is missing"):
        refine_to_folder(IMAGES, f"files:{gone}", ckpt, tmp_path / "o3")
    # Classes: the base's JSON lists other classes than the checkpoint's.
    other = tmp_path / "other"
    shutil.copytree(base_dir, other)
    data = json.loads((other / "panoptic.json").read_text())
    data["categories"] = data["categories"][:-1]
    (other / "panoptic.json").write_text(json.dumps(data))
    with pytest.raises(RefineError, match=rf"checkpoint {ckpt} and base files:{other} .* different classes "
                                          r"\(133 vs 132 classes: only the checkpoint has ids \[200\]\)"):
        refine_to_folder(IMAGES, f"files:{other}", ckpt, tmp_path / "o4")
    # ... or the images' dataset has other classes than the checkpoint's.
    with pytest.raises(RefineError, match=rf"checkpoint {synthetic_run['ckpt']} and dataset .* different classes"):
        refine_to_folder(f"coco:{COCO_SAMPLE}", "simulated", synthetic_run["ckpt"], tmp_path / "o5", split="val2017")
    # The simulated base needs ground truth; a folder of images has none.
    with pytest.raises(RefineError, match="simulates a base network from the ground truth"):
        refine_to_folder(IMAGES, "simulated", ckpt, tmp_path / "o6")
    # Not a folder nor a dataset; a dataset without --split; existing predictions are kept.
    with pytest.raises(DatasetError, match="nope: not a folder of images, nor a dataset spec"):
        refine_to_folder(tmp_path / "nope", f"files:{base_dir}", ckpt, tmp_path / "o7")
    with pytest.raises(RefineError, match="a dataset needs --split"):
        refine_to_folder(f"coco:{COCO_SAMPLE}", "simulated", ckpt, tmp_path / "o7")
    with pytest.raises(RefineError, match=r"o2/panoptic\.json: already exists"):
        refine_to_folder(IMAGES, f"files:{flat}", ckpt, tmp_path / "o2", allow_missing=True)


def test_cli_error_is_one_line(coco_run, tmp_path):
    flat = tmp_path / "one"
    shutil.copytree(coco_run["base"], flat)
    data = json.loads((flat / "panoptic.json").read_text())
    data["annotations"] = data["annotations"][:1]
    (flat / "panoptic.json").write_text(json.dumps(data))
    cmd = [sys.executable, "-c", "from prn_model.cli import main; main()", "refine", "--checkpoint",
           str(coco_run["ckpt"]), "--images", str(IMAGES), "--base", f"files:{flat}", "--out", str(tmp_path / "o"),
           "--device", "cpu"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, COLUMNS="400"))
    assert p.returncode == 2
    assert "no prediction for image 000000439180" in p.stderr and "Traceback" not in p.stderr
    assert len([line for line in p.stderr.splitlines() if "no prediction" in line]) == 1


def test_old_checkpoint_falls_back_to_its_store_then_to_defaults(coco_run, tmp_path):
    ckpt = torch.load(coco_run["ckpt"], map_location="cpu", weights_only=True)
    del ckpt["data"]  # as written before the store's record was kept
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    with pytest.warns(UserWarning, match="read them from its training store"):
        r = load_refiner(old)
    assert r.policy == POLICY and r.params.sigma == 2.0 and r.source == coco_run["store"]
    ckpt["config"]["data"]["store"] = str(tmp_path / "gone.zarr")
    torch.save(ckpt, old)
    with pytest.warns(UserWarning, match="cannot be opened; using the defaults"):
        r = load_refiner(old)
    assert r.policy == ResizePolicy() and r.params == TargetParams() and r.categories is None
    # The classes then come from the dataset, else from a files: base's JSON, checked against the model.
    ds = open_images(f"coco:{COCO_SAMPLE}", "val2017")
    assert resolve_categories(r, ds, f"files:{coco_run['base']}").to_json() == ds.categories.to_json()
    from_base = resolve_categories(r, ImageFolder(IMAGES), f"files:{coco_run['base']}")
    assert [(c.id, c.isthing) for c in from_base] == [(c.id, c.isthing) for c in ds.categories]
    with pytest.raises(RefineError, match="records no classes and neither the images nor the base list them"):
        resolve_categories(r, ImageFolder(IMAGES), "python:nowhere:factory")


def test_image_folder(tmp_path):
    (tmp_path / "b.PNG").write_bytes((IMAGES / "000000142238.jpg").read_bytes())
    (tmp_path / "a.jpg").write_bytes((IMAGES / "000000439180.jpg").read_bytes())
    (tmp_path / "notes.txt").write_text("x")
    f = ImageFolder(tmp_path)
    assert f.keys() == ["a", "b"]
    s = f.load(0)
    assert s.image_id == "a" and s.file_name == "a.jpg" and s.orig_size == s.image.shape[:2]
    assert s.segments == [] and (s.panoptic == VOID).all()
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="a.jpg and a.png have the same name"):
        ImageFolder(tmp_path)
