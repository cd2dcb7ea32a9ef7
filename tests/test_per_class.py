"""Per-class PQ of the base and PRN side by side (prn_model.evaluate.per_class_rows / format_per_class)."""

from __future__ import annotations

import numpy as np
import pytest

from prn_data.pq import pq_from_arrays
from prn_model.evaluate import format_per_class, per_class_rows

from helpers import MERGE_CATS  # person 1, car 3 (things); road 7, sky 9 (stuff)


def _seg(sid: int, cid: int) -> dict:
    return {"id": sid, "category_id": cid, "iscrowd": 0}


def test_per_class_rows_hand_case_sorted_by_difference():
    # 4×4: person on the left half (8 px), road on the right half (8 px)
    gt = np.full((4, 4), 7000)
    gt[:, :2] = 1001
    gt_segs = [_seg(1001, 1), _seg(7000, 7)]
    # base: person on 6 of its 8 px (IoU 6/8), road takes the other 2 (IoU 8/10)
    base = np.full((4, 4), 7000)
    base[:3, :2] = 1001
    # PRN: person exact; road exact except one pixel given to a car (road IoU 7/8, car FP)
    prn = gt.copy()
    prn[0, 3] = 3001
    res = {
        "base": pq_from_arrays([(gt, gt_segs, base, [_seg(1001, 1), _seg(7000, 7)])], MERGE_CATS),
        "prn": pq_from_arrays([(gt, gt_segs, prn, [_seg(1001, 1), _seg(7000, 7), _seg(3001, 3)])], MERGE_CATS),
    }
    rows = per_class_rows(res, MERGE_CATS)
    # sky occurs nowhere: no row; car only as PRN's false positive: PQ 0 for both
    assert [r["name"] for r in rows] == ["person", "road", "car"]
    person, road, car = rows
    assert person["base"]["pq"] == pytest.approx(75.0) and person["prn"]["pq"] == pytest.approx(100.0)
    assert person["diff"] == pytest.approx(25.0) and person["isthing"] and person["id"] == 1
    assert road["base"]["pq"] == pytest.approx(80.0) and road["prn"]["pq"] == pytest.approx(87.5)
    assert road["diff"] == pytest.approx(7.5) and not road["isthing"]
    assert car["base"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0} and car["diff"] == 0.0
    text = format_per_class(rows).splitlines()
    assert text[2].split() == ["person", "thing", "75.00", "75.00", "100.00", "100.00", "100.00", "100.00", "+25.00"]
    assert text[3].split()[0] == "road" and text[3].split()[-1] == "+7.50" and len(text) == 2 + 3
    # the base alone: best PQ first, no PRN columns
    alone = per_class_rows({"base": res["base"]}, MERGE_CATS)
    assert [r["name"] for r in alone] == ["road", "person"] and "diff" not in alone[0]
    assert "PRN" not in format_per_class(alone).splitlines()[1]
