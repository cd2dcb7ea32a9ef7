"""Majority voting and panoptic merging (prn_model.merge, paper §3.5), and the ideal-outputs check on the
real COCO sample (PQ ≥ 99 at store resolution)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prn_data.build import BuildConfig, build
from prn_data.pq import pq_from_arrays
from prn_data.records import Category, CategorySet
from prn_data.store import open_store
from prn_model.merge import CategoryTables, _areas_boxes, merge_image, postprocess
from prn_model.ppgbf import PostProcessConfig

from helpers import MERGE_CATS as CATS



def scene(H=16, W=24):
    """Two square instances with exact offsets: X (rows 2–7, cols 2–7, center score 0.6) and
    Y (rows 8–13, cols 12–19, score 0.9); road below row 12 elsewhere, sky above."""
    center = torch.zeros(1, H, W)
    off = torch.zeros(2, H, W)
    box = torch.zeros(4, H, W)
    fg = torch.full((1, H, W), -5.0)
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    for (y0, y1, x0, x1), s in (((2, 7, 2, 7), 0.6), ((8, 13, 12, 19), 0.9)):
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        center[0, cy, cx] = s
        sl = (slice(y0, y1 + 1), slice(x0, x1 + 1))
        off[0][sl] = cy - ys[sl]
        off[1][sl] = cx - xs[sl]
        box[0][sl] = ys[sl] - y0
        box[1][sl] = y1 - ys[sl]
        box[2][sl] = xs[sl] - x0
        box[3][sl] = x1 - xs[sl]
        fg[0][sl] = 5.0
    sem = torch.zeros(4, H, W)
    sem[3] = 1.0
    sem[2, 12:] = 2.0
    return sem, center, off, box, fg


def test_majority_vote_ids_and_stuff():
    sem, center, off, box, fg = scene()
    sem[0, 2:4, 2:8] = 3.0  # X: 12 px say person
    sem[1, 4:8, 2:8] = 3.0  # ... 24 px say car → car
    sem[0, 8:14, 12:20] = 3.0  # Y: all person
    pan, segs = merge_image(sem, center, off, box, fg, tables=CategoryTables(CATS), cfg=PostProcessConfig(stuff_area=0, nms_kernel=3))
    exp = np.full((16, 24), 9000)
    exp[12:] = 7000
    exp[8:14, 12:20] = 1001  # Y: highest score, first person
    exp[2:8, 2:8] = 3001  # X: car
    np.testing.assert_array_equal(pan, exp)
    assert [(s.id, s.category_id, s.train_id, s.isthing, s.area) for s in segs] == [
        (1001, 1, 0, True, 48),
        (3001, 3, 1, True, 36),
        (7000, 7, 2, False, 4 * 24 - 16),
        (9000, 9, 3, False, 16 * 24 - 48 - 36 - 80),
    ]
    assert segs[2].bbox == (0, 12, 24, 4)


def test_instance_pixels_labelled_stuff_vote_by_their_thing_channels():
    sem, center, off, box, fg = scene()
    # Y's pixels are sky by the overall argmax, but among the thing channels car leads: Y is a car.
    # X: person overall on 30 px; on its other 6 px sky leads overall and car among the things: person wins 30:6.
    sem[1, 8:14, 12:20] = 0.5
    sem[0, 2:8, 2:8] = 3.0
    sem[0, 2, 2:8] = 0.0
    sem[1, 2, 2:8] = 0.5
    pan, segs = merge_image(sem, center, off, box, fg, tables=CategoryTables(CATS), cfg=PostProcessConfig(stuff_area=0, nms_kernel=3))
    assert [(s.id, s.area) for s in segs if s.isthing] == [(3001, 48), (1001, 36)]


def test_small_stuff_becomes_void_and_small_instances_are_dropped():
    sem, center, off, box, fg = scene()
    sem[0, 8:14, 12:20] = 3.0
    cfg = PostProcessConfig(stuff_area=81, min_instance_area=40, nms_kernel=3)
    pan, segs = merge_image(sem, center, off, box, fg, tables=CategoryTables(CATS), cfg=cfg)
    # road has 80 px (< 81): VOID; X has 36 px (< 40): dropped, its pixels go to sky (semantic argmax there).
    exp = np.full((16, 24), 9000)
    exp[12:] = -1
    exp[8:14, 12:20] = 1001
    np.testing.assert_array_equal(pan, exp)
    assert [s.id for s in segs] == [1001, 9000]


def test_foreground_off_pixels_are_not_grouped_and_padding_is_cropped():
    sem, center, off, box, fg = scene()
    fg[0, 2:8, 2:5] = -5.0  # half of X has no foreground: those pixels are stuff (sky)
    sem[0, 2:8, 5:8] = 3.0
    sem[0, 8:14, 12:20] = 3.0
    pad = lambda t: F.pad(t, (0, 8, 0, 16))  # noqa: E731 - a padded 32×32 canvas
    out = {"semantic": pad(sem)[None], "center": pad(center)[None], "center_offset": pad(off)[None],
           "box_offset": pad(box)[None], "foreground": pad(fg)[None]}
    (pan, segs), = postprocess(out, CATS, PostProcessConfig(stuff_area=0, nms_kernel=3), sizes=[(16, 24)])
    assert pan.shape == (16, 24)
    assert (pan[2:8, 2:5] == 9000).all() and (pan[2:8, 5:8] == 1002).all()


@pytest.mark.slow
def test_ideal_outputs_give_back_the_coco_ground_truth(coco_sample, tmp_path):
    """Head outputs a perfect PRN would give, from a real store of the COCO sample: its gt/ center heatmap,
    offsets and foreground as stored, and a one-hot semantic at full resolution (a 1/4 one-hot would blur
    every boundary by up to 2 px). Scored at store resolution against gt/."""
    res = build(BuildConfig(dataset=f"coco:{coco_sample}", split="val2017", base="none", out=str(tmp_path / "s.zarr"),
                            scheduler="threads", workers=1))
    assert res.ok, res.failures
    store = open_store(tmp_path / "s.zarr")
    n = len(store.categories)
    items = []
    for i in range(len(store)):
        x = store.read_sample(i)
        sem = x["gt/semantic"].astype(np.int64)
        out = {
            "semantic": torch.from_numpy((np.arange(n)[:, None, None] == sem[None]).astype(np.float32))[None],
            "center": torch.from_numpy(x["gt/center"])[None],
            "center_offset": torch.from_numpy(x["gt/center_offset"])[None],
            "box_offset": torch.from_numpy(x["gt/box_offset"])[None],
            "foreground": torch.from_numpy(x["gt/foreground"].astype(np.float32) * 20 - 10)[None, None],
        }
        (pan, segs), = postprocess(out, store.categories, PostProcessConfig())
        items.append((x["gt/panoptic"], x["gt/segments"], pan, segs))
    r = pq_from_arrays(items, store.categories)
    assert r["All"]["pq"] >= 0.99
    assert r["All"]["n"] == 8 and r["Stuff"]["pq"] == 1.0 and r["All"]["sq"] == 1.0


def test_thing_channels_as_a_view_or_a_copy():
    x = torch.arange(4 * 3, dtype=torch.float32).reshape(4, 3)
    run = CategoryTables(CATS)  # things are train ids 0, 1: a slice
    assert run.thing_run == (0, 2) and torch.equal(run.thing_logits(x), x[:2])
    mixed = CategoryTables(CategorySet([Category(1, "a", True, 0), Category(2, "b", False, 1), Category(3, "c", True, 2), Category(4, "d", False, 3)]))
    assert mixed.thing_run is None and torch.equal(mixed.thing_logits(x), x[[0, 2]])


def test_majority_vote_with_interleaved_thing_ids():
    # The scene of test_majority_vote_ids_and_stuff with the classes reordered so the things are not one
    # run of train ids (person 0, road 1, car 2, sky 3): same segments, same votes.
    cats = CategorySet([Category(1, "person", True, 0), Category(7, "road", False, 1), Category(3, "car", True, 2), Category(9, "sky", False, 3)])
    sem, center, off, box, fg = scene()
    sem = sem[[0, 2, 1, 3]].clone()
    sem[0, 2:4, 2:8] = 3.0
    sem[2, 4:8, 2:8] = 3.0
    sem[0, 8:14, 12:20] = 3.0
    # X's top rows: sky leads overall, car leads among the things → still car.
    sem[0, 2, 2:8] = 0.0
    sem[2, 2, 2:8] = 0.5
    pan, segs = merge_image(sem, center, off, box, fg, tables=CategoryTables(cats), cfg=PostProcessConfig(stuff_area=0, nms_kernel=3))
    assert [(s.id, s.category_id, s.area) for s in segs if s.isthing] == [(1001, 1, 48), (3001, 3, 36)]
    assert (pan[2, 2:8] == 3001).all()


def test_no_centers_gives_stuff_only():
    sem, center, off, box, fg = scene()
    center.zero_()  # no peak above θ: every foreground pixel stays unassigned, stuff takes the image
    for grouping in ("ppgbf", "panoptic_deeplab"):
        pan, segs = merge_image(sem, center, off, box, fg, tables=CategoryTables(CATS), cfg=PostProcessConfig(stuff_area=0, grouping=grouping))
        exp = np.full((16, 24), 9000)
        exp[12:] = 7000
        np.testing.assert_array_equal(pan, exp)
        assert [(s.id, s.area, s.bbox) for s in segs] == [(7000, 96, (0, 12, 24, 4)), (9000, 288, (0, 0, 24, 12))]


def test_areas_and_boxes_from_runs():
    # Label 1: an L of 4 px over rows 0–2, cols 0–1; label 2: two separate runs (row 0 col 3, row 2
    # cols 2–3); label 3 is absent; 0 is no segment.
    index = torch.tensor([[1, 0, 0, 2], [1, 0, 0, 0], [1, 1, 2, 2]], dtype=torch.int32)
    areas, boxes = _areas_boxes(index, 3)
    assert areas.tolist() == [4, 3, 0]
    assert boxes[:2].tolist() == [[0, 0, 2, 3], [2, 0, 2, 3]]  # COCO [x, y, w, h]
