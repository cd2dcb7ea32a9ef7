"""Semantic labels at full resolution (prn_model.upsample, paper §3.5): the argmax of bilinearly upsampled
logits equals F.interpolate then argmax, at every pixel, at listed pixels, cropped, and with ties."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from prn_model.upsample import (
    _block_pixels,
    _first_argmax,
    _unique_slots,
    argmax_at,
    argmax_upsampled,
    logits_at,
    semantic_labels,
)


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


def test_first_argmax_keeps_the_first_of_tied_maxima():
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


def test_argmax_at_pixels_equals_interpolate_then_argmax():
    torch.manual_seed(1)
    logits = torch.randint(0, 3, (9, 6, 7)).float()  # ties between channels are common
    full = F.interpolate(logits[None], size=(24, 28), mode="bilinear", align_corners=False)[0].argmax(0)
    ys = torch.tensor([0, 0, 1, 5, 5, 6, 23, 12, 13])  # several pixels of one 4×4 patch share their taps
    xs = torch.tensor([0, 27, 1, 9, 10, 9, 27, 14, 14])
    assert torch.equal(argmax_at(logits, (24, 28), ys, xs, "bilinear"), full[ys, xs])


def test_block_pixels_lists_each_blocks_output_pixels():
    # 2×3 source; output rows 0–1 read source row 0, rows 2–4 row 1; output columns 0, 1–2, 3 read
    # source columns 0, 1, 2. Block 1 (row 0, col 1) covers rows 0–1 × cols 1–2; block 5 (row 1,
    # col 2) rows 2–4 × col 3.
    y0, x0 = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 2])
    py, px, pb = _block_pixels(torch.tensor([1, 5]), y0, x0, 2, 3)
    assert list(zip(py.tolist(), px.tolist(), pb.tolist())) == [
        (0, 1, 0), (0, 2, 0), (1, 1, 0), (1, 2, 0), (2, 3, 1), (3, 3, 1), (4, 3, 1)]
