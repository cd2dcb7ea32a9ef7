"""Targets on real data (the shipped COCO sample, the Cityscapes frame in ../shared/data): the vectorised
generator agrees with a straightforward per-segment one (one np.where per segment), and with facts read
independently from the dataset files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prn_data.datasets import open_dataset
from prn_data.panoptic_io import read_rgb_ids
from prn_data.records import Sample
from prn_data.resize import ResizePolicy, resize_labels, resize_sample
from prn_data.targets import TargetParams, compute_targets, encode_instances

REPO = Path(__file__).resolve().parents[1]


def _reference():
    spec = importlib.util.spec_from_file_location("prn_bench_targets", REPO / "benchmarks" / "targets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.reference_targets


reference_targets = _reference()


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        # Both compute float maps in float64 and round once to float32, so they agree bit for bit.
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def check_sample(sample: Sample) -> dict:
    """Compare with the per-segment reference, with and without scores; return the targets."""
    t = compute_targets(sample.panoptic, sample.segments, source=sample.file_name)
    assert_same(t, reference_targets(sample.panoptic, sample.segments))
    rng = np.random.default_rng(0)
    scores = {s.id: float(rng.uniform(0.1, 1.0)) for s in sample.segments}
    ref = reference_targets(sample.panoptic, sample.segments, scores=scores)
    center, co, bo, w = encode_instances(sample.panoptic, sample.segments, 8.0, scores)
    np.testing.assert_array_equal(center, ref["center"])
    np.testing.assert_array_equal(co, ref["center_offset"])
    np.testing.assert_array_equal(bo, ref["box_offset"])
    np.testing.assert_array_equal(w, ref["offset_weight"])
    # Every non-crowd thing has its peak 1.0 at its rounded center of mass.
    for s in sample.segments:
        if s.isthing and not s.iscrowd:
            ys, xs = np.nonzero(sample.panoptic == s.id)
            assert t["center"][0, int(np.floor(ys.mean() + 0.5)), int(np.floor(xs.mean() + 0.5))] == 1.0
    return t


@pytest.fixture(scope="module")
def coco(coco_sample):
    return open_dataset(f"coco:{coco_sample}", "val2017")


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("resized", [False, True], ids=["original", "640x800"])
def test_coco_sample_matches_per_segment_reference(coco, coco_sample, index, resized):
    sample = coco.load(index)
    if resized:
        sample = resize_sample(sample, ResizePolicy())
        assert min(sample.size) == 640 or max(sample.size) == 800
    t = check_sample(sample)
    # Independently of the reader: foreground and crowd from the PNG and the JSON themselves.
    doc = json.loads((coco_sample / "annotations" / "panoptic_val2017.json").read_text())
    ann = next(a for a in doc["annotations"] if a["image_id"] == int(sample.image_id))
    things = {c["id"] for c in doc["categories"] if c["isthing"]}
    raw = read_rgb_ids(coco_sample / "annotations" / "panoptic_val2017" / ann["file_name"])
    if resized:
        raw = resize_labels(raw, sample.size)
    thing_ids = [s["id"] for s in ann["segments_info"] if s["category_id"] in things]
    crowd_ids = [s["id"] for s in ann["segments_info"] if s["iscrowd"]]
    assert crowd_ids, "the shipped sample has crowd regions"
    np.testing.assert_array_equal(t["foreground"], np.isin(raw, thing_ids).astype(np.uint8))
    crowd = np.isin(raw, crowd_ids)
    assert crowd.any() and not t["offset_weight"][crowd].any() and not t["center_weight"][crowd].any()
    assert (t["semantic"][raw == 0] == 255).all() and not t["semantic_weight"][raw == 0].any()


def test_cityscapes_frame_matches_per_segment_reference(cityscapes_sample):
    ds = open_dataset(f"cityscapes:{cityscapes_sample}", "val", format="gtfine")
    sample = ds.load(0)
    t = check_sample(sample)
    # From the label files themselves: things are label ids 24..33; instances are instanceIds >= 1000.
    stem = cityscapes_sample / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_"
    label_ids = np.asarray(Image.open(f"{stem}labelIds.png")).astype(np.int32)
    instance_ids = np.asarray(Image.open(f"{stem}instanceIds.png")).astype(np.int32)
    np.testing.assert_array_equal(t["foreground"], ((label_ids >= 24) & (label_ids <= 33)).astype(np.uint8))
    np.testing.assert_array_equal(t["offset_weight"], (instance_ids >= 1000).astype(np.float32))
    # Seven instances (SOURCE.md), all smaller than 4096 px in this 256×128 frame: semantic weight 3.
    assert len(np.unique(instance_ids[instance_ids >= 1000])) == 7
    assert (t["semantic_weight"][instance_ids >= 1000] == 3.0).all()
    assert t["center"].max() == 1.0


def test_cityscapes_frame_upscaled_with_default_params(cityscapes_sample):
    # At 640×1280 (nearest-exact ×5) the large segments cross the 4096 px small-instance threshold.
    ds = open_dataset(f"cityscapes:{cityscapes_sample}", "val", format="gtfine")
    sample = resize_sample(ds.load(0), ResizePolicy(short=640, max_long=1280))
    assert sample.size == (640, 1280)
    t = check_sample(sample)
    areas = {s.id: int((sample.panoptic == s.id).sum()) for s in sample.segments if s.isthing}
    assert any(a >= TargetParams().small_instance_area for a in areas.values())
    for sid, area in areas.items():
        expected = 3.0 if area < 4096 else 1.0
        assert (t["semantic_weight"][sample.panoptic == sid] == expected).all()
