"""COCO panoptic reader on the shipped real sample (panopticapi's two val2017 images)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from prn_data.datasets import open_dataset, open_described
from prn_data.records import VOID


@pytest.fixture(scope="module")
def coco(coco_sample):
    return open_dataset(f"coco:{coco_sample}", "val2017")


@pytest.fixture(scope="module")
def coco_json(coco_sample):
    return json.loads((coco_sample / "annotations" / "panoptic_val2017.json").read_text())


def test_keys_sizes_and_categories(coco, coco_json):
    assert coco.name == "coco" and coco.split == "val2017"
    assert coco.keys() == ["142238", "439180"]
    assert len(coco) == 2
    assert coco.orig_size(0) == (427, 640) and coco.orig_size(1) == (360, 640)
    cats = coco.categories
    assert len(cats) == 133 and len(cats.thing_train_ids) == 80
    assert [c.id for c in cats] == [c["id"] for c in coco_json["categories"]]
    assert [c.train_id for c in cats] == list(range(133))
    person = cats.by_id(1)
    assert (person.name, person.isthing, person.train_id, person.color) == ("person", True, 0, (220, 20, 60))
    last = cats[132]
    assert last.id == 200 and not last.isthing


@pytest.mark.parametrize("index, n_seg, n_thing, n_crowd", [(0, 18, 15, 1), (1, 32, 28, 2)])
def test_segments_match_json_and_pixels(coco, coco_json, coco_sample, index, n_seg, n_thing, n_crowd):
    s = coco.load(index)
    ann = coco_json["annotations"][index]
    assert s.image_id == str(ann["image_id"]) and s.file_name == ann["file_name"].replace(".png", ".jpg")
    assert s.image.shape == (*coco.orig_size(index), 3) and s.image.dtype == np.uint8
    assert s.panoptic.dtype == np.int32 and s.orig_size == s.panoptic.shape
    assert len(s.segments) == n_seg
    assert sum(seg.isthing for seg in s.segments) == n_thing
    assert sum(seg.iscrowd for seg in s.segments) == n_crowd

    # Decode the PNG here independently and follow the id mapping back to the file ids.
    rgb = np.asarray(Image.open(coco_sample / "annotations" / "panoptic_val2017" / ann["file_name"])).astype(np.int64)
    file_ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    id_map = s.gt_source["segment_ids"]
    assert (s.panoptic == VOID).sum() == (file_ids == 0).sum()
    counters: dict[int, int] = {}
    for seg, info in zip(s.segments, ann["segments_info"]):
        assert id_map[str(seg.id)] == info["id"]
        assert seg.category_id == info["category_id"]
        assert seg.iscrowd == bool(info["iscrowd"])
        assert seg.area == info["area"]
        assert list(seg.bbox) == info["bbox"]
        assert np.array_equal(s.panoptic == seg.id, file_ids == info["id"])
        # Normalised id: category*1000 + k, k counting this class's things in JSON order.
        if seg.isthing:
            counters[seg.category_id] = counters.get(seg.category_id, 0) + 1
            assert seg.id == seg.category_id * 1000 + counters[seg.category_id]
        else:
            assert seg.id == seg.category_id * 1000
        assert seg.train_id == coco.categories.by_id(info["category_id"]).train_id
    assert s.gt_source["png"].endswith(ann["file_name"]) and s.gt_source["json"].endswith("panoptic_val2017.json")


def test_first_segment_by_hand(coco):
    s = coco.load(0)
    first = s.segments[0]
    # panopticapi's first segment of image 142238: a person, file id 3937500, area 3528, bbox [282,207,48,149].
    assert (first.id, first.category_id, first.area, first.bbox) == (1001, 1, 3528, (282, 207, 48, 149))
    assert s.gt_source["segment_ids"]["1001"] == 3937500


def test_image_is_the_decoded_jpeg(coco, coco_sample):
    s = coco.load(1)
    ref = np.asarray(Image.open(coco_sample / "val2017" / "000000439180.jpg").convert("RGB"))
    assert np.array_equal(s.image, ref)


def test_explicit_paths_and_describe_reopen(coco_sample, tmp_path):
    ds = open_dataset(
        f"coco:{tmp_path}",
        "anything",
        images_dir=coco_sample / "val2017",
        panoptic_dir=coco_sample / "annotations" / "panoptic_val2017",
        json_path=coco_sample / "annotations" / "panoptic_val2017.json",
    )
    assert ds.keys() == ["142238", "439180"]
    desc = json.loads(json.dumps(ds.describe()))  # JSON-able
    assert desc["gt"]["json"] == str((coco_sample / "annotations" / "panoptic_val2017.json").resolve())
    again = open_described(desc)
    a, b = ds.load(0), again.load(0)
    assert again.keys() == ds.keys()
    assert np.array_equal(a.panoptic, b.panoptic) and np.array_equal(a.image, b.image)
    assert [x.to_json() for x in a.segments] == [x.to_json() for x in b.segments]


def test_index_errors(coco):
    with pytest.raises(IndexError):
        coco.load(2)
    assert coco.index_of("439180") == 1


def test_dataset_pickles_for_workers(coco):
    import pickle

    clone = pickle.loads(pickle.dumps(coco))
    assert clone.keys() == coco.keys()
    assert np.array_equal(clone.load(0).panoptic, coco.load(0).panoptic)
