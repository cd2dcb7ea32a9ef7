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
