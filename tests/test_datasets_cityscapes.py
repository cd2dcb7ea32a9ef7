"""Cityscapes readers: the real gtFine frame, deeplab2's panoptic-format sample, and tiny hand-made layouts."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from prn_data.datasets import open_dataset, open_described
from prn_data.panoptic_io import id2rgb, semantic_from_panoptic
from prn_data.records import VOID


def test_categories_are_the_19_evaluation_classes(cityscapes_sample):
    ds = open_dataset(f"cityscapes:{cityscapes_sample}", "val")
    cats = ds.categories
    assert len(cats) == 19
    assert [c.id for c in cats] == [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    assert [c.name for c in cats if c.isthing] == [
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"
    ]
    assert cats.by_id(26).train_id == 13 and cats.by_id(26).color == (0, 0, 142)


def test_real_gtfine_frame(cityscapes_sample):
    ds = open_dataset(f"cityscapes:{cityscapes_sample}", "val")
    assert ds.name == "cityscapes" and ds.describe()["options"] == {"format": "gtfine"}
    assert ds.keys() == ["frankfurt_000000_000294"]
    assert ds.orig_size(0) == (128, 256)
    s = ds.load(0)
    assert s.image.shape == (128, 256, 3) and s.panoptic.shape == (128, 256)
    things = [seg for seg in s.segments if seg.isthing]
    assert [seg.id for seg in things] == [24001, 24002, 24003, 24004, 26001, 26002, 26003]
    assert not any(seg.iscrowd for seg in s.segments)
    # Pixel counts of the instanceIds values 24000..24003 and 26000..26002 (np.unique of the file).
    assert [seg.area for seg in things] == [6, 42, 27, 32, 6, 224, 1572]
    assert s.gt_source["segment_ids"]["24001"] == 24000

    # Semantic from our panoptic map agrees with labelIds → train ids wherever that is not VOID, and VOID
    # is exactly where the label is ignored in evaluation (instanceIds agrees with labelIds everywhere).
    from cityscapesscripts.helpers.labels import id2label

    label_ids = np.asarray(Image.open(cityscapes_sample / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"))
    lut = np.full(256, 255, np.uint8)
    for lid, lab in id2label.items():
        if 0 <= lid < 256 and not lab.ignoreInEval:
            lut[lid] = lab.trainId
    expected = lut[label_ids]
    semantic = semantic_from_panoptic(s.panoptic, s.segments)
    assert np.array_equal(semantic, expected)
    # 1890 + 987 + 764 + 233 pixels of labels 1..4 (ego vehicle, rectification border, out of roi, static).
    assert (s.panoptic == VOID).sum() == 3874


def _write_gtfine(root, inst: np.ndarray, image_size=None, city="aachen", name="aachen_000001_000019"):
    (root / "leftImg8bit/val" / city).mkdir(parents=True)
    (root / "gtFine/val" / city).mkdir(parents=True)
    h, w = image_size or inst.shape
    img = (np.arange(h * w * 3) % 251).astype(np.uint8).reshape(h, w, 3)
    Image.fromarray(img).save(root / "leftImg8bit/val" / city / f"{name}_leftImg8bit.png")
    Image.fromarray(inst.astype(np.uint16)).save(root / "gtFine/val" / city / f"{name}_gtFine_instanceIds.png")
    return img


def test_gtfine_crowd_void_and_order_by_hand(tmp_path):
    # road 7, person instances 24000/24001, person crowd 24, car crowd 26, unlabeled 0, caravan 29000 (ignored
    # in evaluation, so VOID although it has instances), sky 23.
    inst = np.array(
        [
            [7, 7, 24001, 24001, 24, 24],
            [7, 24000, 24000, 26, 26, 0],
            [23, 23, 29000, 29000, 0, 0],
        ]
    )
    img = _write_gtfine(tmp_path, inst)
    s = open_dataset(f"cityscapes:{tmp_path}", "val").load(0)
    assert np.array_equal(s.image, img)
    # Order: by label id, instances by value, the class's crowd region last.
    expected = np.array(
        [
            [7000, 7000, 24002, 24002, 24003, 24003],
            [7000, 24001, 24001, 26001, 26001, -1],
            [23000, 23000, -1, -1, -1, -1],
        ]
    )
    assert s.panoptic.tolist() == expected.tolist()
    got = [(g.id, g.category_id, g.train_id, g.isthing, g.iscrowd, g.area, g.bbox) for g in s.segments]
    assert got == [
        (7000, 7, 0, False, False, 3, (0, 0, 2, 2)),
        (23000, 23, 10, False, False, 2, (0, 2, 2, 1)),
        (24001, 24, 11, True, False, 2, (1, 1, 2, 1)),
        (24002, 24, 11, True, False, 2, (2, 0, 2, 1)),
        (24003, 24, 11, True, True, 2, (4, 0, 2, 1)),
        (26001, 26, 13, True, True, 2, (3, 1, 2, 1)),
    ]
    assert s.gt_source["segment_ids"] == {"7000": 7, "23000": 23, "24001": 24000, "24002": 24001, "24003": 24, "26001": 26}


def test_real_panoptic_format_sample(cityscapes_panoptic_sample):
    ds = open_dataset(f"cityscapes:{cityscapes_panoptic_sample}", "dummy")
    assert ds.use_train_id is True  # category ids 0, 2, 8, 10, 13 are train ids
    assert ds.keys() == ["dummy_000000_000000"] and ds.orig_size(0) == (800, 800)
    s = ds.load(0)
    assert s.image.shape == (800, 800, 3)
    assert len(s.segments) == 10
    cars = [g for g in s.segments if g.category_id == 26]
    assert len(cars) == 6 and sum(g.iscrowd for g in cars) == 1
    # JSON order: 26000, 26 (crowd), 26001..26004 → k = 1..6 with the crowd region second.
    assert [g.id for g in cars] == [26001, 26002, 26003, 26004, 26005, 26006]
    assert [g.iscrowd for g in cars] == [False, True, False, False, False, False]
    assert int((s.panoptic == VOID).sum()) == 571
    data = json.loads((cityscapes_panoptic_sample / "gtFine/cityscapes_panoptic_dummy_trainId.json").read_text())
    infos = data["annotations"][0]["segments_info"]
    assert [g.area for g in s.segments] == [i["area"] for i in infos]
    assert sorted(g.category_id for g in s.segments if not g.isthing) == [7, 11, 21, 23]
    assert [g.train_id for g in s.segments] == [i["category_id"] for i in infos]


def test_panoptic_format_with_label_ids_is_detected(cityscapes_panoptic_sample, tmp_path):
    # The same annotation written as createPanopticImgs does without --use-train-id (label ids).
    src = cityscapes_panoptic_sample
    gt = tmp_path / "gtFine"
    gt.mkdir()
    data = json.loads((src / "gtFine/cityscapes_panoptic_dummy_trainId.json").read_text())
    for seg in data["annotations"][0]["segments_info"]:
        seg["category_id"] = seg["id"] // 1000 if seg["id"] >= 1000 else seg["id"]
    (gt / "cityscapes_panoptic_val.json").write_text(json.dumps(data))
    shutil.copytree(src / "gtFine/cityscapes_panoptic_dummy_trainId", gt / "cityscapes_panoptic_val")
    label_ds = open_dataset(f"cityscapes:{tmp_path}", "val", images_dir=src / "leftImg8bit")
    assert label_ds.use_train_id is False
    ref = open_dataset(f"cityscapes:{src}", "dummy").load(0)
    s = label_ds.load(0)
    assert np.array_equal(s.panoptic, ref.panoptic)
    assert [g.to_json() for g in s.segments] == [g.to_json() for g in ref.segments]
    again = open_described(json.loads(json.dumps(label_ds.describe())))
    assert again.keys() == label_ds.keys() and again.use_train_id is False


def test_panoptic_format_preferred_and_forced(tmp_path, cityscapes_panoptic_sample):
    # A root holding both layouts opens as the panoptic format unless format="gtfine" is asked for.
    inst = np.array([[7, 7], [26000, 26000]])
    _write_gtfine(tmp_path, inst, name="aachen_000000_000001")
    pan = np.array([[7, 7], [26000, 26000]])
    (tmp_path / "gtFine/cityscapes_panoptic_val").mkdir()
    Image.fromarray(id2rgb(pan)).save(tmp_path / "gtFine/cityscapes_panoptic_val/aachen_000000_000001_gtFine_panoptic.png")
    ann = {
        "annotations": [
            {
                "image_id": "aachen_000000_000001",
                "file_name": "aachen_000000_000001_gtFine_panoptic.png",
                "segments_info": [
                    {"id": 26000, "category_id": 26, "iscrowd": 0},
                    {"id": 7, "category_id": 7, "iscrowd": 0},
                ],
            }
        ]
    }
    (tmp_path / "gtFine/cityscapes_panoptic_val.json").write_text(json.dumps(ann))
    p = open_dataset(f"cityscapes:{tmp_path}", "val")
    g = open_dataset(f"cityscapes:{tmp_path}", "val", format="gtfine")
    assert p.describe()["gt"]["format"] == "cityscapes-panoptic"
    assert g.describe()["gt"]["format"] == "cityscapes-gtfine"
    a, b = p.load(0), g.load(0)
    assert a.panoptic.tolist() == b.panoptic.tolist() == [[7000, 7000], [26001, 26001]]
    assert a.gt_source["image"] == b.gt_source["image"]
