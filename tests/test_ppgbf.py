"""PPGBF (prn_model.ppgbf): center NMS, exact nearest-center search, the box gate, and the touching-
instances case where the gate keeps apart what nearest-center grouping merges (paper §3.5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prn_data.records import Category, CategorySet
from prn_model.merge import CategoryTables, merge_image
from prn_model.ppgbf import (
    PostProcessConfig,
    _center_gate,
    _max_filter,
    _max_filter_rows,
    _nearest_dense,
    boxes_from_offsets,
    find_centers,
    group_foreground,
    group_pixels,
    nearest_center,
)


def test_find_centers_nms_threshold_and_order():
    heat = torch.zeros(20, 20)
    heat[5, 5] = 0.9
    heat[5, 7] = 0.8  # within the 7×7 window of the 0.9 peak: suppressed
    heat[5, 9] = 0.7  # its window holds the 0.8: suppressed too
    heat[15, 15] = 0.5
    heat[15, 2] = 0.19  # under θ = 0.2
    yx, score = find_centers(heat, threshold=0.2, kernel=7, top_k=200)
    assert yx.tolist() == [[5, 5], [15, 15]]
    assert score.tolist() == pytest.approx([0.9, 0.5])
    yx, _ = find_centers(heat, threshold=0.2, kernel=3, top_k=200)
    assert yx.tolist() == [[5, 5], [5, 7], [5, 9], [15, 15]]


def test_ties_at_the_kth_score_are_kept_up_to_k():
    heat = torch.zeros(10, 40)
    for x in (3, 12, 21, 30, 38):
        heat[4, x] = 1.0  # five equal peaks (ideal heatmaps look like this)
    heat[8, 8] = 0.6
    yx, score = find_centers(heat, top_k=3)
    # Panoptic-DeepLab's `score > kth` would return nothing; we keep the first three in raster order.
    assert yx.tolist() == [[4, 3], [4, 12], [4, 21]]
    assert score.tolist() == [1.0, 1.0, 1.0]
    assert find_centers(heat, top_k=200)[0].shape[0] == 6


def test_max_filter_equals_max_pool():
    torch.manual_seed(0)
    x = torch.rand(37, 53)
    for k in (1, 3, 5, 7, 9):
        r = k // 2
        ours = _max_filter_rows(_max_filter_rows(x, r).t(), r).t()
        ref = F.max_pool2d(x[None, None], k, stride=1, padding=r)[0, 0]
        assert torch.equal(ours, ref)


def test_nearest_center_is_exact_including_ties():
    torch.manual_seed(0)
    for n, k, spread in ((3000, 100, 500.0), (2000, 30, 10.0), (500, 200, 2000.0)):
        t = torch.rand(n, 2) * spread - 20
        c = (torch.rand(k, 2) * spread).round()
        assert torch.equal(nearest_center(t, c, chunk_pairs=4096), _nearest_dense(t, c))
    # integer points equidistant from several centers: the first index wins, as a full argmin
    t = torch.randint(0, 12, (4000, 2)).float()
    c = torch.randint(0, 12, (40, 2)).float()
    assert torch.equal(nearest_center(t, c), _nearest_dense(t, c))


def test_boxes_are_inclusive_pixel_boxes():
    yx = torch.tensor([[10, 20]])
    b = boxes_from_offsets(yx, torch.tensor([[2.0, 3.0, 4.0, -1.0]]))
    # rows 8..13, cols 16..20 → end-exclusive (8, 14, 16, 21); the negative right offset counts as 0
    assert b.tolist() == [[8.0, 14.0, 16.0, 21.0]]


def test_box_gate_iou_threshold():
    centers = torch.tensor([[0.0, 0.0], [0.0, 100.0]])
    cbox = torch.tensor([[0.0, 10.0, 0.0, 10.0], [0.0, 10.0, 0.0, 10.0]])  # both 10×10 at the origin
    # pixel boxes of 10×10 shifted by s columns: IoU = (10 - s) / (10 + s): s = 3 → 7/13 > 0.5,
    # s = 4 → 6/14 < 0.5. The second center is far away, so it is not the nearest.
    target = torch.zeros(2, 2)
    pbox = torch.tensor([[0.0, 10.0, 3.0, 13.0], [0.0, 10.0, 4.0, 14.0]])
    got = group_pixels(target, centers, pbox, cbox)
    assert got.tolist() == [0, -1]
    # without the gate both go to the nearest center
    assert group_pixels(target, centers).tolist() == [0, 0]


def test_gate_picks_the_nearest_eligible_center():
    centers = torch.tensor([[0.0, 0.0], [0.0, 5.0], [0.0, 50.0]])
    cbox = torch.tensor([[0.0, 4.0, 0.0, 4.0], [0.0, 20.0, 0.0, 20.0], [0.0, 20.0, 0.0, 20.0]])
    target = torch.tensor([[0.0, 1.0]])  # nearest is 0, whose box does not fit; 1 is next and fits
    pbox = torch.tensor([[0.0, 20.0, 0.0, 20.0]])
    assert group_pixels(target, centers, pbox, cbox, chunk_pairs=1).tolist() == [1]


def _touching_case():
    """Two touching 20×20 people side by side (A: columns 0–19, B: 20–39) on 40×60 of sky. Every pixel's
    center offset points at column 22, near B's center (column 30) — as a network that misplaces the
    centers of touching objects would — while the box offsets give each pixel its own object's box."""
    H, W = 40, 60
    cats = CategorySet([Category(1, "person", True, 0), Category(5, "sky", False, 1)])
    center = torch.zeros(1, H, W)
    center[0, 10, 10] = 0.9  # A
    center[0, 10, 30] = 0.8  # B
    off = torch.zeros(2, H, W)
    box = torch.zeros(4, H, W)
    fg = torch.full((1, H, W), -10.0)
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    for x0 in (0, 20):
        sl = (slice(0, 20), slice(x0, x0 + 20))
        off[0][sl] = 10 - ys[sl]
        off[1][sl] = 22 - xs[sl]
        box[0][sl] = ys[sl] - 0
        box[1][sl] = 19 - ys[sl]
        box[2][sl] = xs[sl] - x0
        box[3][sl] = x0 + 19 - xs[sl]
        fg[0][sl] = 10.0
    sem = torch.zeros(2, H, W)
    sem[0, :20, :40] = 5.0
    sem[1] = 2.0
    return cats, sem, center, off, box, fg


def test_box_gate_keeps_touching_instances_apart():
    cats, sem, center, off, box, fg = _touching_case()
    tables = CategoryTables(cats)
    cfg = PostProcessConfig(stuff_area=0)
    pan, segs = merge_image(sem, center, off, box, fg, tables=tables, cfg=cfg)
    expected = np.full((40, 60), 5000)
    expected[:20, :20] = 1001  # A: the higher center score comes first
    expected[:20, 20:40] = 1002
    np.testing.assert_array_equal(pan, expected)
    assert [(s.id, s.category_id, s.area, s.bbox) for s in segs] == [
        (1001, 1, 400, (0, 0, 20, 20)),
        (1002, 1, 400, (20, 0, 20, 20)),
        (5000, 5, 1600, (0, 0, 60, 40)),
    ]
    assert segs[0].score == pytest.approx(0.9) and segs[1].score == pytest.approx(0.8)

    # Panoptic-DeepLab grouping sends every pixel to B's center: one merged instance.
    pdl = PostProcessConfig(stuff_area=0, grouping="panoptic_deeplab")
    pan, segs = merge_image(sem, center, off, box, fg, tables=tables, cfg=pdl)
    expected[:20, :40] = 1001
    np.testing.assert_array_equal(pan, expected)
    assert [(s.id, s.area) for s in segs] == [(1001, 800), (5000, 1600)]


def test_chunking_does_not_change_the_result():
    torch.manual_seed(1)
    n, k = 5000, 60
    target = torch.rand(n, 2) * 300
    centers = (torch.rand(k, 2) * 300).round()
    pyx = target.round()
    pbox = boxes_from_offsets(pyx.long(), torch.rand(n, 4) * 40)
    cbox = boxes_from_offsets(centers.long(), torch.rand(k, 4) * 40)
    a = group_pixels(target, centers, pbox, cbox, chunk_pairs=1 << 30)
    b = group_pixels(target, centers, pbox, cbox, chunk_pairs=777)
    assert torch.equal(a, b)
    assert (a >= 0).any() and (a == -1).any()
    # brute force: nearest among eligible
    d = ((target[:, None, :] - centers[None]) ** 2).sum(-1)
    elig = _center_gate(pbox.t(), cbox, 0.5).t()  # (n, K)
    d[~elig] = float("inf")
    ref = torch.where(elig.any(1), d.argmin(1), torch.full((n,), -1))
    assert torch.equal(a, ref)


def test_separable_max_filter_equals_max_pool_on_both_axes():
    torch.manual_seed(2)
    x = torch.rand(23, 41)
    x[5, :] = 2.0  # a ridge, so ties between window positions occur
    for k in (1, 3, 5, 7, 9, 11):
        r = k // 2
        ref = F.max_pool2d(x[None, None], k, stride=1, padding=r)[0, 0]
        assert torch.equal(_max_filter(_max_filter(x, r, 1), r, 0), ref)
        # one axis alone: a k×1 / 1×k window
        assert torch.equal(_max_filter(x, r, 0), F.max_pool2d(x[None, None], (k, 1), stride=1, padding=(r, 0))[0, 0])


def test_nearest_center_two_candidate_cells_and_ties():
    # Twelve centers (more than 8, so the cell grid is used): two close ones at (100, 100) and (100, 110),
    # the rest far away. Targets between the pair sit in cells where both are candidates.
    far = [[0.0, 0.0], [0.0, 300.0], [300.0, 0.0], [300.0, 300.0], [0.0, 150.0], [150.0, 0.0],
           [300.0, 150.0], [150.0, 300.0], [40.0, 260.0], [260.0, 40.0]]
    centers = torch.tensor([[100.0, 100.0], [100.0, 110.0]] + far)
    target = torch.tensor([[100.0, 105.0], [100.0, 104.9], [100.0, 105.1], [103.0, 108.0], [98.0, 101.0], [300.0, 299.0]])
    # (100, 105) is equidistant (25 = 25): the first index wins; 104.9 is nearer 0, 105.1 nearer 1;
    # (103, 108): 9 + 64 = 73 against 9 + 4 = 13 → 1; (98, 101): 4 + 1 against 4 + 81 → 0; last → (300, 300).
    assert nearest_center(target, centers).tolist() == [0, 0, 1, 1, 0, 5]
    assert torch.equal(nearest_center(target, centers), _nearest_dense(target, centers))


def test_group_foreground_lists_the_mask_pixels_and_their_centers():
    # Two 3×3 objects on a 10×12 map with exact offsets; one masked pixel whose box disagrees with both
    # centers' boxes is left unassigned (−1).
    H, W = 10, 12
    center = torch.zeros(H, W)
    center[2, 2], center[6, 8] = 0.9, 0.7
    off = torch.zeros(2, H, W)
    box = torch.zeros(4, H, W)
    mask = torch.zeros(H, W, dtype=torch.bool)
    for cy, cx in ((2, 2), (6, 8)):
        for y in range(cy - 1, cy + 2):
            for x in range(cx - 1, cx + 2):
                off[:, y, x] = torch.tensor([cy - y, cx - x], dtype=torch.float32)
                box[:, y, x] = torch.tensor([y - cy + 1, cy + 1 - y, x - cx + 1, cx + 1 - x], dtype=torch.float32)
                mask[y, x] = True
    mask[9, 0] = True  # its box is 1×1 at (9, 0), IoU with a 3×3 box is at most 1/9
    flat, k, yx, score = group_foreground(center, off, box, mask, PostProcessConfig(nms_kernel=3))
    assert yx.tolist() == [[2, 2], [6, 8]]
    assert flat.tolist() == torch.nonzero(mask.reshape(-1)).squeeze(1).tolist()
    expected = [0] * 9 + [1] * 9 + [-1]
    assert k.tolist() == expected


def test_center_threshold_is_strict_at_the_float32_threshold():
    # Peaks at exactly float32(0.2), the next float above it, and 0.9: the first is not above θ.
    heat = torch.zeros(9, 20)
    t = torch.tensor(0.2)
    heat[4, 2] = t
    heat[4, 9] = torch.nextafter(t, torch.tensor(1.0))
    heat[4, 16] = 0.9
    yx, _ = find_centers(heat, threshold=0.2, kernel=3)
    assert yx.tolist() == [[4, 16], [4, 9]]
