"""coco-results: instance RLEs + semantic PNG merged by Kirillov et al.'s heuristic (hand-computed case)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from prn_data.base import open_base
from prn_data.base.coco_results import CocoResultsBase
from prn_data.errors import BaseNetworkError
from prn_data.records import VOID, Sample
from prn_data.testing import CATS


H, W = 20, 24


def rect(y0, y1, x0, x1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def rle(m):
    r = mask_utils.encode(np.asfortranarray(m))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def sample():
    return Sample(np.zeros((H, W, 3), np.uint8), np.full((H, W), VOID, np.int32), [], "7", "000007.jpg", (H, W))


@pytest.fixture()
def results(tmp_path):
    sem = np.full((H, W), 101, np.uint8)  # grass
    sem[:10] = 100  # sky
    sem[10:12, :2] = 100  # a 4 px sky island inside grass
    sem[18:] = 0  # no label
    (tmp_path / "sem").mkdir()
    Image.fromarray(sem).save(tmp_path / "sem" / "000007.png")
    anns = [
        {"image_id": 7, "category_id": 1, "segmentation": rle(rect(2, 8, 2, 10)), "score": 0.9},  # A 48 px
        {"image_id": 7, "category_id": 3, "segmentation": rle(rect(4, 10, 6, 14)), "score": 0.8},  # B, 16/48 on A
        {"image_id": 7, "category_id": 1, "segmentation": rle(rect(3, 7, 3, 9)), "score": 0.7},  # C inside A
        {"image_id": 7, "category_id": 3, "segmentation": rle(rect(14, 18, 18, 22)), "score": 0.6},  # E 16 px
        {"image_id": 7, "category_id": 3, "segmentation": rle(rect(12, 16, 0, 4)), "score": 0.4},  # D too weak
        {"image_id": 8, "category_id": 3, "segmentation": rle(rect(0, 5, 0, 5)), "score": 0.99},  # other image
    ]
    (tmp_path / "inst.json").write_text(json.dumps(anns))
    return tmp_path


def test_heuristic_hand_computed(results):
    base = open_base(f"coco-results:{results / 'inst.json'},{results / 'sem'},stuff_area=170", CATS)
    assert isinstance(base, CocoResultsBase) and base.stuff_area == 170 and base.overlap == 0.5
    p = base.predict([sample()])[0]
    segs = {s.id: (s.area, s.score) for s in p.segments}
    # A keeps 48 px; B 16 of its 48 px overlap A (1/3 ≤ 0.5) so it keeps the other 32; C lies inside A
    # (overlap 1) and is dropped; D is below confidence 0.5. Sky has 240 − 48 − 32 + 4 = 164 < 170 free
    # pixels → VOID; grass has 240 − 48 (no label) − 16 (E) − 4 (island) = 172 ≥ 170.
    assert segs == {1001: (48, 0.9), 3001: (32, 0.8), 3002: (16, 0.6), 101_000: (172, None)}
    assert p.panoptic[5, 7] == 1001 and p.panoptic[5, 11] == 3001 and p.panoptic[9, 7] == 3001
    assert p.panoptic[0, 0] == VOID and p.panoptic[19, 0] == VOID and p.panoptic[12, 0] == 101_000
    # Default stuff area 4096 drops both stuff classes at this size.
    p2 = open_base(f"coco-results:{results / 'inst.json'},{results / 'sem'}", CATS).predict([sample()])[0]
    assert sorted(s.id for s in p2.segments) == [1001, 3001, 3002]


def test_missing_semantic_and_bad_input(results):
    s = sample()
    s.image_id, s.file_name = "9", "000009.jpg"
    spec = f"coco-results:{results / 'inst.json'},{results / 'sem'}"
    with pytest.raises(BaseNetworkError, match=r"no semantic prediction for image 9 \(expected 000009.png\)"):
        open_base(spec, CATS).predict([s])
    p = open_base(spec, CATS, allow_missing=True).predict([s])[0]
    assert p.segments == [] and np.all(p.panoptic == VOID)
    Image.fromarray(np.full((H, W), 42, np.uint8)).save(results / "sem" / "000009.png")
    with pytest.raises(BaseNetworkError, match=r"000009.png: values \[42\] are not category ids"):
        open_base(spec, CATS).predict([s])
    with pytest.raises(BaseNetworkError, match="unknown option 'area'"):
        open_base(spec + ",area=3", CATS)
    with pytest.raises(BaseNetworkError, match="does not exist"):
        open_base(f"coco-results:{results / 'nope.json'},{results / 'sem'}", CATS)
    (results / "inst.json").write_text(json.dumps(
        [{"image_id": 7, "category_id": 1, "segmentation": [[0, 0, 5, 0, 5, 5]], "score": 0.9}]))
    with pytest.raises(BaseNetworkError, match=r"inst.json \(image 7\): instance segmentation must be an RLE"):
        open_base(spec, CATS).predict([sample()])
