"""Predictions as COCO panoptic files (prn_model.predictions): resized back to the original size, written
as PNG + JSON."""

from __future__ import annotations

import json

import numpy as np

from prn_data.panoptic_io import read_rgb_ids
from prn_data.records import Segment
from prn_model.predictions import to_original_size, write_panoptic
from helpers import MERGE_CATS as CATS


def test_resize_back_and_write_coco_files(tmp_path):
    pan = np.full((4, 6), 9000, np.int32)
    pan[1:3, 0:2] = 1001
    pan[3, 5] = -1
    segs = [Segment(1001, 1, 0, True, False, 4, (0, 1, 2, 2), 0.7), Segment(9000, 9, 3, False, False, 19, (0, 0, 6, 4))]
    big, bsegs = to_original_size(pan, segs, (8, 12))
    assert big.shape == (8, 12) and (big[2:6, 0:4] == 1001).all() and big[7, 11] == -1
    assert [(s.id, s.area, s.bbox) for s in bsegs] == [(1001, 16, (0, 2, 4, 4)), (9000, 96 - 16 - 4, (0, 0, 12, 8))]
    path = write_panoptic(tmp_path, [(42, "000042.jpg", big, bsegs)], CATS)
    d = json.loads(path.read_text())
    assert d["annotations"][0]["image_id"] == 42 and d["annotations"][0]["file_name"] == "000042.png"
    assert [c["id"] for c in d["categories"]] == [1, 3, 7, 9]
    info = d["annotations"][0]["segments_info"]
    assert [(s["id"], s["category_id"], s["iscrowd"], s["area"]) for s in info] == [(1001, 1, 0, 16), (9000, 9, 0, 76)]
    ids = read_rgb_ids(tmp_path / "panoptic" / "000042.png")
    np.testing.assert_array_equal(ids, np.where(big < 0, 0, big))


def test_scores_are_written_clamped_to_0_1(tmp_path):
    """PRN's instance score is the center heatmap's peak (§3.5), which can overshoot 1: written clamped."""
    pan = np.full((4, 6), 9000, np.int32)
    pan[0, 0], pan[1, 1], pan[2, 2] = 1001, 1002, 3001
    segs = [Segment(1001, 1, 0, True, score=1.025), Segment(1002, 1, 0, True, score=-0.01),
            Segment(3001, 3, 1, True, score=0.5), Segment(9000, 9, 3, False)]
    path = write_panoptic(tmp_path, [("img", "img.jpg", pan, segs)], CATS)
    info = json.loads(path.read_text())["annotations"][0]["segments_info"]
    assert [s.get("score") for s in info] == [1.0, 0.0, 0.5, None]
    assert segs[0].score == 1.025  # the in-memory segments keep the predicted value


def _one(image_id, file_name):
    pan = np.full((2, 3), 9000, np.int32)
    return (image_id, file_name, pan, [Segment(9000, 9, 3, False, False, 6, (0, 0, 3, 2))])


def test_file_names_without_a_stem_or_twice_the_same_png_are_errors(tmp_path):
    """File names come from stores and datasets made by others: ``..`` or an empty name cannot name a PNG,
    and two images mapping to one PNG never overwrite each other."""
    import pytest

    from prn_data.errors import PrnError

    for bad in ["..", "", "sub/.."]:
        with pytest.raises(PrnError, match="no stem"):
            write_panoptic(tmp_path / "a", [_one(1, bad)], CATS)
    with pytest.raises(PrnError, match="would both be written as .*x.png"):
        write_panoptic(tmp_path / "b", [_one(1, "x.jpg"), _one(2, "dir/x.png")], CATS)
    assert not (tmp_path / "b" / "panoptic.json").exists()
    assert list((tmp_path).glob("*/*.json")) == [] and not (tmp_path.parent / "panoptic").exists()


def test_rewriting_a_prediction_folder_removes_only_the_png_it_listed_before(tmp_path):
    write_panoptic(tmp_path, [_one(1, "a.jpg"), _one(2, "b.jpg")], CATS)
    (tmp_path / "panoptic" / "mine.png").write_bytes(b"user file")
    write_panoptic(tmp_path, [_one(1, "a.jpg")], CATS)
    names = sorted(p.name for p in (tmp_path / "panoptic").iterdir())
    assert names == ["a.png", "mine.png"]
    assert [a["file_name"] for a in json.loads((tmp_path / "panoptic.json").read_text())["annotations"]] == ["a.png"]
