"""Eq. (1) term by term against hand computations on tiny tensors (paper §4.2, §3.4).

Two samples of 4×4 pixels; column 3 of sample 1 is padding (valid False) and holds garbage, NaN included,
that must not count. Semantic logits are (B, 3, 1, 1), i.e. constant over each image, so the ×4 bilinear
upsampling keeps them and the cross entropies are logs of simple fractions.
"""

from __future__ import annotations

import math

import pytest
import torch

from prn_model.loss import LossWeights, center_loss, prn_loss, semantic_loss

B, H, W = 2, 4, 4
LN = math.log


def make_case() -> tuple[dict, dict]:
    valid = torch.ones(B, H, W, dtype=torch.bool)
    valid[1, :, 3] = False

    # Sample 0 logits log(1, 2, 5): p = 1/8, 2/8, 5/8. Sample 1 logits 0: p = 1/3 each.
    sem_logits = torch.zeros(B, 3, 1, 1)
    sem_logits[0, :, 0, 0] = torch.log(torch.tensor([1.0, 2.0, 5.0]))
    sem = torch.zeros(B, H, W, dtype=torch.long)  # class 0 everywhere …
    sem[0, 0, :] = 2  # … except row 0 of sample 0: class 2
    sem[0, 1, 1] = 255  # ignore
    sem[1, :, 3] = 7  # padding: an out-of-range label that must not even be looked at
    sem_w = torch.ones(B, H, W)
    sem_w[0, 3, :] = 3.0  # a "small thing" row of class 0
    sem_w[1, :, 3] = 100.0

    center = torch.zeros(B, 1, H, W)
    center[0, 0, 1, 2] = 1.0
    center[1, 0, 2, 1] = 0.5
    center[1, 0, :, 3] = float("nan")
    center_pred = torch.full((B, 1, H, W), 0.25)
    center_w = torch.ones(B, H, W)
    center_w[0, 0, 0] = 0.0  # a crowd pixel

    off_w = torch.zeros(B, H, W)
    off_w[0, 1:3, 1:3] = 1.0  # 4 instance pixels in sample 0
    off_w[1, 0, 2:] = 1.0  # one valid instance pixel (0, 2) and one padded (0, 3)
    center_off = torch.zeros(B, 2, H, W)
    center_off[0, 0, 1:3, 1:3] = 2.0  # dy = 2
    center_off[0, 1, 1:3, 1:3] = -1.0  # dx = -1
    center_off[1, :, 0, 3] = 1e6
    center_off_pred = torch.zeros(B, 2, H, W)
    center_off_pred[0, 1, 1, 1] = 3.0  # this pixel: |0−2| + |3−(−1)| = 6, the other 3 pixels: 3
    center_off_pred[1, 0, 0, 2] = -4.0  # sample 1 pixel: |−4 − 0| = 4
    box = torch.zeros(B, 4, H, W)
    box[0, :, 1:3, 1:3] = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1)
    box[1, :, 0, 2] = torch.tensor([0.0, 5.0, 2.0, 1.0])
    box_pred = torch.ones(B, 4, H, W)  # |1−1|+|1−2|+|1−3|+|1−4| = 6 (sample 0); 1+4+1+0 = 6 (sample 1)

    fg = torch.zeros(B, H, W, dtype=torch.long)
    fg[0, 1:3, 1:3] = 1
    fg[1, 0, 2:] = 1
    fg_logit = torch.zeros(B, 1, H, W)
    fg_logit[0, 0, 1:3, 1:3] = LN(3.0)  # target 1: BCE = ln(1 + 1/3) = ln(4/3)
    fg_logit[0, 0, 0, 0] = LN(3.0)  # target 0: BCE = ln(1 + 3) = ln 4
    fg_w = torch.ones(B, H, W)
    fg_w[0, 3, 3] = 0.0  # VOID

    outputs = {
        "semantic": sem_logits,
        "center": center_pred,
        "center_offset": center_off_pred,
        "box_offset": box_pred,
        "foreground": fg_logit,
    }
    batch = {
        "semantic": sem,
        "semantic_weight": sem_w,
        "center": center,
        "center_weight": center_w,
        "center_offset": center_off,
        "box_offset": box,
        "offset_weight": off_w,
        "foreground": fg,
        "foreground_weight": fg_w,
        "valid": valid,
    }
    return outputs, batch


def test_semantic_term_by_hand():
    outputs, batch = make_case()
    _, terms = prn_loss(outputs, batch)
    # Sample 0: 16 pixels − 1 ignore = 15 counted. Row 0: 4 × class 2 → 4·ln(8/5). Row 1: 3 × class 0
    # (one ignored) → 3·ln 8. Row 2: 4·ln 8. Row 3 (weight 3): 3·4·ln 8.
    s0 = 4 * LN(8 / 5) + (3 + 4 + 12) * LN(8)
    # Sample 1: 12 valid pixels, class 0 at p = 1/3 → 12·ln 3.
    s1 = 12 * LN(3)
    expected = (s0 + s1) / (15 + 12)  # divided by the number of counted pixels, not the weight sum
    assert terms["semantic"].item() == pytest.approx(expected, rel=1e-6)


def test_semantic_logits_are_upsampled_bilinearly_by_four():
    # Logits (1, 2, 1, 2): class-1 logit a = 0 in column 0 and b = 8 in column 1, class 0 logit 0. Bilinear
    # ×4 (half-pixel centers) samples source x = (i + ½)/4 − ½ = −.375, −.125, .125, …, 1.375, clamped to
    # [0, 1]: class-1 logits 0, 0, 1, 3, 5, 7, 8, 8 along the 8 target columns.
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 1, 0, 1] = 8.0
    target = torch.zeros(1, 4, 8, dtype=torch.long)
    ones = torch.ones(1, 4, 8)
    got = semantic_loss(logits, target, ones, ones.bool())
    # CE of class 0 with logits (0, z) is ln(1 + e^z).
    expected = sum(math.log1p(math.exp(z)) for z in (0, 0, 1, 3, 5, 7, 8, 8)) / 8
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_center_term_by_hand():
    outputs, batch = make_case()
    _, terms = prn_loss(outputs, batch)
    # Sample 0: weight on 15 pixels (one crowd pixel at weight 0); pred 0.25 everywhere: the peak pixel
    # (1, 2) errs by 0.75, 14 others by 0.25. Sample 1: 12 valid pixels, one target 0.5 (err 0.25), 11 at
    # 0 (err 0.25): 12 × 0.0625. NaN targets on padding do not count.
    num = 0.75**2 + 14 * 0.25**2 + 12 * 0.25**2
    assert terms["center"].item() == pytest.approx(num / (15 + 12), rel=1e-6)


def test_offset_terms_by_hand():
    outputs, batch = make_case()
    _, terms = prn_loss(outputs, batch)
    # 5 weighted valid pixels (4 in sample 0, 1 in sample 1); the padded (0, 3) of sample 1 is ignored.
    assert terms["center_offset"].item() == pytest.approx((6 + 3 * 3 + 4) / 5, rel=1e-6)
    assert terms["box_offset"].item() == pytest.approx((4 * 6 + 6) / 5, rel=1e-6)


def test_foreground_term_by_hand():
    outputs, batch = make_case()
    _, terms = prn_loss(outputs, batch)
    # Sample 0 (15 weighted pixels): 4 fg pixels at logit ln 3 → ln(4/3); (0, 0) background at ln 3 → ln 4;
    # 10 background pixels at logit 0 → ln 2. Sample 1 (12 valid): 1 fg pixel (0, 2) and 11 background,
    # all at logit 0 → ln 2 each.
    num = 4 * LN(4 / 3) + LN(4) + 10 * LN(2) + 12 * LN(2)
    assert terms["foreground"].item() == pytest.approx(num / 27, rel=1e-6)


def test_total_is_the_lambda_weighted_sum_and_gradients_stay_finite():
    outputs, batch = make_case()
    outputs = {k: v.clone().requires_grad_(True) for k, v in outputs.items()}
    lam = LossWeights(semantic=2.0, center=10.0, center_offset=0.5, box_offset=0.25, foreground=3.0)
    total, terms = prn_loss(outputs, batch, lam)
    assert set(terms) == {"semantic", "center", "center_offset", "box_offset", "foreground"}
    expected = sum(getattr(lam, k) * v.item() for k, v in terms.items())
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    for k, v in outputs.items():
        assert torch.isfinite(v.grad).all(), k
    # Padded pixels get no gradient from any full-resolution term.
    for k in ("center", "center_offset", "box_offset", "foreground"):
        assert not outputs[k].grad[1, :, :, 3].any(), k


def test_default_lambdas_are_the_papers():
    assert LossWeights().to_dict() == {
        "semantic": 1.0, "center": 200.0, "center_offset": 0.02, "box_offset": 0.02, "foreground": 5.0,
    }


def test_box_offsets_off_and_empty_weights_give_zero_not_nan():
    outputs, batch = make_case()
    del outputs["box_offset"]
    batch["offset_weight"] = torch.zeros(B, H, W)
    total, terms = prn_loss(outputs, batch)
    assert "box_offset" not in terms and terms["center_offset"].item() == 0.0
    assert torch.isfinite(total)
    zero = center_loss(outputs["center"], batch["center"], torch.zeros(B, H, W), batch["valid"])
    assert zero.item() == 0.0
