"""Majority voting and panoptic merging (prn_model.merge, paper §3.5), semantic upsampling, writing the
result, and the ideal-outputs check on the real COCO sample (PQ ≥ 99 at store resolution)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prn_data.panoptic_io import read_rgb_ids
from prn_data.records import Category, CategorySet, Segment
from prn_model.merge import CategoryTables, argmax_upsampled, logits_at, merge_image, postprocess, semantic_labels, to_original_size, write_panoptic
from prn_model.ppgbf import PostProcessConfig

CATS = CategorySet(
    [
        Category(1, "person", True, 0),
        Category(3, "car", True, 1),
        Category(7, "road", False, 2),
        Category(9, "sky", False, 3),
    ]
)


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
    pan, segs = merge_image(sem, center, off, box, fg, CategoryTables(CATS), PostProcessConfig(stuff_area=0, nms_kernel=3))
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
    pan, segs = merge_image(sem, center, off, box, fg, CategoryTables(CATS), PostProcessConfig(stuff_area=0, nms_kernel=3))
    assert [(s.id, s.area) for s in segs if s.isthing] == [(3001, 48), (1001, 36)]


def test_small_stuff_becomes_void_and_small_instances_are_dropped():
    sem, center, off, box, fg = scene()
    sem[0, 8:14, 12:20] = 3.0
    cfg = PostProcessConfig(stuff_area=81, min_instance_area=40, nms_kernel=3)
    pan, segs = merge_image(sem, center, off, box, fg, CategoryTables(CATS), cfg)
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


def test_bilinear_label_upsampling_equals_interpolate_then_argmax():
    torch.manual_seed(0)
    for C, (h, w), (H, W) in ((5, (9, 13), (36, 52)), (30, (20, 25), (80, 100)), (133, (6, 8), (24, 32))):
        logits = torch.randn(C, h, w) * 3
        ref = F.interpolate(logits[None], size=(H, W), mode="bilinear", align_corners=False)[0].argmax(0)
        assert torch.equal(argmax_upsampled(logits, (H, W), chunk=1000), ref)
    # logits read at a few pixels, both modes
    logits = torch.randn(7, 5, 6)
    full = F.interpolate(logits[None], size=(20, 24), mode="bilinear", align_corners=False)[0]
    ys, xs = torch.tensor([0, 3, 19, 10]), torch.tensor([0, 23, 5, 11])
    torch.testing.assert_close(logits_at(logits, (20, 24), ys, xs, "bilinear"), full[:, ys, xs].t())
    assert torch.equal(logits_at(logits, (20, 24), ys, xs, "nearest"), logits[:, ys // 4, xs // 4].t())
    # nearest mode: each 1/4 label repeated 4×4
    logits = torch.randn(4, 3, 5)
    thing = torch.tensor([True, True, False, False])
    lab, tlab = semantic_labels(logits, (12, 20), thing, "nearest")
    np.testing.assert_array_equal(lab.numpy(), np.kron(logits.argmax(0).numpy(), np.ones((4, 4), int)))
    np.testing.assert_array_equal(tlab.numpy(), np.kron(logits[:2].argmax(0).numpy(), np.ones((4, 4), int)))


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


@pytest.mark.slow
def test_ideal_outputs_give_back_the_coco_ground_truth(coco_sample, tmp_path):
    """Head outputs a perfect PRN would give, from a real store of the COCO sample: its gt/ center heatmap,
    offsets and foreground as stored, and a one-hot semantic at full resolution (a 1/4 one-hot would blur
    every boundary by up to 2 px). Scored at store resolution against gt/."""
    from prn_data.build import BuildConfig, build
    from prn_data.store import open_store
    from prn_model.pq import pq_from_arrays

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


def test_bilinear_labels_with_crops_odd_ratios_and_near_ties():
    torch.manual_seed(3)
    cases = [(6, (7, 9), (30, 41), None), (133, (10, 12), (40, 48), (37, 45)), (4, (5, 5), (5, 5), None), (3, (8, 6), (20, 24), (20, 13))]
    for C, (h, w), (H, W), crop in cases:
        logits = torch.randn(C, h, w)
        # Near ties between two classes everywhere: the per-block bound rarely decides, so the full
        # interpolation runs too.
        logits[1] = logits[0] + 1e-3 * torch.randn(h, w)
        ref = F.interpolate(logits[None], size=(H, W), mode="bilinear", align_corners=False)[0].argmax(0)
        if crop is not None:
            ref = ref[: crop[0], : crop[1]]
        got = argmax_upsampled(logits, (H, W), chunk=257, crop=crop)
        assert got.dtype == torch.int64 and torch.equal(got, ref)


def test_bilinear_labels_where_keeps_the_top_left_source_label_elsewhere():
    torch.manual_seed(4)
    logits = torch.randn(5, 4, 5) * 2
    low = logits.argmax(0)
    full = F.interpolate(logits[None], size=(16, 20), mode="bilinear", align_corners=False)[0].argmax(0)
    # Output pixel Y reads source rows floor((Y + 0.5) / 4 - 0.5) (clamped at 0): 0,0,0,0,0,0,1,1,1,1,2,...
    rows = torch.tensor([0] * 6 + [1] * 4 + [2] * 4 + [3] * 2)
    cols = torch.tensor([0] * 6 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 2)
    top_left = low[rows][:, cols]
    where = torch.zeros(16, 20, dtype=torch.bool)
    where[:, 10:] = True
    got = argmax_upsampled(logits, (16, 20), where=where)
    assert torch.equal(got[:, 10:], full[:, 10:])
    assert torch.equal(got[:, :10], top_left[:, :10])


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
    pan, segs = merge_image(sem, center, off, box, fg, CategoryTables(cats), PostProcessConfig(stuff_area=0, nms_kernel=3))
    assert [(s.id, s.category_id, s.area) for s in segs if s.isthing] == [(1001, 1, 48), (3001, 3, 36)]
    assert (pan[2, 2:8] == 3001).all()


def test_no_centers_gives_stuff_only():
    sem, center, off, box, fg = scene()
    center.zero_()  # no peak above θ: every foreground pixel stays unassigned, stuff takes the image
    for grouping in ("ppgbf", "panoptic_deeplab"):
        pan, segs = merge_image(sem, center, off, box, fg, CategoryTables(CATS), PostProcessConfig(stuff_area=0, grouping=grouping))
        exp = np.full((16, 24), 9000)
        exp[12:] = 7000
        np.testing.assert_array_equal(pan, exp)
        assert [(s.id, s.area, s.bbox) for s in segs] == [(7000, 96, (0, 12, 24, 4)), (9000, 288, (0, 0, 24, 12))]


def test_first_argmax_keeps_the_first_of_tied_maxima():
    from prn_model.merge import _first_argmax

    # 20 classes (grouped in fours), 3 pixels: classes 9 and 14 tie at the max of pixel 0, so 9; pixel 1
    # has its max in the last, short group (class 19); pixel 2 ties across every class, so 0.
    x = torch.zeros(20, 1, 3)
    x[9, 0, 0] = x[14, 0, 0] = 2.0
    x[19, 0, 1] = 1.5
    assert _first_argmax(x).tolist() == [[9, 19, 0]]
    torch.manual_seed(0)
    for C in (3, 16, 17, 19, 133):
        y = torch.randint(0, 4, (C, 7, 9)).float()  # many ties
        assert torch.equal(_first_argmax(y), y.max(0).indices)
    y[5, 2, 3] = float("nan")  # NaN: the plain max reduction's answer
    assert torch.equal(_first_argmax(y), y.max(0).indices)


def test_unique_slots_lists_distinct_values_and_positions():
    from prn_model.merge import _unique_slots

    uniq, pos = _unique_slots(torch.tensor([[5, 2], [5, 7]]), 10)
    assert uniq.tolist() == [2, 5, 7]
    assert pos.tolist() == [[1, 0], [1, 2]]


def test_bilinear_labels_where_a_third_class_wins_between_two_taps():
    # Source 1×2: class 0 wins the left pixel, class 1 the right one, class 2 is second at both (0.9).
    # Output columns 2–5 sit at source x = 0.125, 0.375, 0.625, 0.875, where classes 0 and 1 interpolate
    # to (0.875, 0.125), (0.625, 0.375), …: never above class 2's 0.9, which neither tap names as its
    # argmax. Columns 0, 1 and 6, 7 clamp to a source pixel.
    logits = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.9, 0.9]]])
    lab = argmax_upsampled(logits, (4, 8))
    assert lab.tolist() == [[0, 0, 2, 2, 2, 2, 1, 1]] * 4


def test_thing_argmax_at_pixels_equals_interpolate_then_argmax():
    from prn_model.merge import _thing_argmax_at

    torch.manual_seed(1)
    logits = torch.randint(0, 3, (9, 6, 7)).float()  # ties between channels are common
    full = F.interpolate(logits[None], size=(24, 28), mode="bilinear", align_corners=False)[0].argmax(0)
    ys = torch.tensor([0, 0, 1, 5, 5, 6, 23, 12, 13])  # several pixels of one 4×4 patch share their taps
    xs = torch.tensor([0, 27, 1, 9, 10, 9, 27, 14, 14])
    assert torch.equal(_thing_argmax_at(logits, (24, 28), ys, xs, "bilinear"), full[ys, xs])


def test_areas_and_boxes_from_runs():
    from prn_model.merge import _areas_boxes

    # Label 1: an L of 4 px over rows 0–2, cols 0–1; label 2: two separate runs (row 0 col 3, row 2
    # cols 2–3); label 3 is absent; 0 is no segment.
    index = torch.tensor([[1, 0, 0, 2], [1, 0, 0, 0], [1, 1, 2, 2]], dtype=torch.int32)
    areas, boxes = _areas_boxes(index, 3)
    assert areas.tolist() == [4, 3, 0]
    assert boxes[:2].tolist() == [[0, 0, 2, 3], [2, 0, 2, 3]]  # COCO [x, y, w, h]


def test_block_pixels_lists_each_blocks_output_pixels():
    from prn_model.merge import _block_pixels

    # 2×3 source; output rows 0–1 read source row 0, rows 2–4 row 1; output columns 0, 1–2, 3 read
    # source columns 0, 1, 2. Block 1 (row 0, col 1) covers rows 0–1 × cols 1–2; block 5 (row 1,
    # col 2) rows 2–4 × col 3.
    y0, x0 = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 2])
    py, px, pb = _block_pixels(torch.tensor([1, 5]), y0, x0, 2, 3)
    assert list(zip(py.tolist(), px.tolist(), pb.tolist())) == [
        (0, 1, 0), (0, 2, 0), (1, 1, 0), (1, 2, 0), (2, 3, 1), (3, 3, 1), (4, 3, 1)]
