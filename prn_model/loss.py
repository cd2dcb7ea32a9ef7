"""The PRN training loss, paper eq. (1) (§4.2, terms from §3.4):

    L = λ0·L_sem + λ1·L_center + λ2·L_center_offset + λ3·L_box_offset + λ4·L_foreground,
    λ = (1, 200, 0.02, 0.02, 5) by default (:class:`LossWeights`).

Only pixels with ``valid`` true (the unpadded part of each sample) count, in numerators and denominators.
Sums run over the whole batch (one ratio per batch, so larger images weigh more, as in Panoptic-DeepLab).
With the per-pixel weights of the batch (README, "Conventions"), each term is normalised so:

* ``semantic``: the logits (B, N_cl, H/4, W/4) are upsampled ×4 (bilinear, align_corners=False) to the
  target's (H, W); per-pixel cross entropy × ``semantic_weight``, summed over valid pixels whose label is not
  255 and divided by the *number* of those pixels. This is Panoptic-DeepLab's plain mean (its weights raise
  small things' share of the mean rather than being normalised away), except that padding and ignore pixels
  are left out of the count. No hard-pixel bootstrapping (Panoptic-DeepLab's top-k): the paper says plain CE.
* ``center``: squared error × ``center_weight``, summed over valid pixels, divided by the sum of
  ``center_weight`` over valid pixels (Panoptic-DeepLab's normalisation).
* ``center_offset``: |Δdy| + |Δdx| (pixels) × ``offset_weight``, summed over valid pixels, divided by the sum of
  ``offset_weight`` over valid pixels — per-pixel L1 summed over the 2 channels (Panoptic-DeepLab's).
* ``box_offset``: the same with the 4 box channels (top, bottom, left, right), same weight and denominator.
* ``foreground``: binary cross entropy of the 1-channel logit (equal to a 2-class softmax CE) ×
  ``foreground_weight``, summed over valid pixels, divided by the sum of ``foreground_weight`` over valid pixels.

A term whose denominator is 0 (e.g. an image without things) is 0, with a zero gradient, never NaN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

IGNORE_LABEL = 255
TERMS = ("semantic", "center", "center_offset", "box_offset", "foreground")


@dataclass(frozen=True)
class LossWeights:
    """The λ of eq. (1); the paper uses (1, 200, 0.02, 0.02, 5) for every experiment (§4.2)."""

    semantic: float = 1.0
    center: float = 200.0
    center_offset: float = 0.02
    box_offset: float = 0.02
    foreground: float = 5.0

    def to_dict(self) -> dict:
        return asdict(self)


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    # clamp keeps 0/0 at 0 (num is 0 whenever den is) without a data-dependent branch.
    return num / den.clamp_min(1e-12)


def semantic_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """``logits (B,N_cl,h,w)``, ``target (B,H,W) int64`` (255 ignore), ``weight (B,H,W)``, ``valid (B,H,W)
    bool`` → scalar: Σ w·CE / #(valid ∧ target ≠ 255) after upsampling the logits to (H, W)."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    keep = valid & (target != IGNORE_LABEL)
    ce = F.cross_entropy(
        logits.float(), target.masked_fill(~keep, IGNORE_LABEL), ignore_index=IGNORE_LABEL, reduction="none"
    )
    return _safe_ratio(torch.where(keep, ce * weight, 0.0).sum(), keep.sum().to(ce.dtype))


def center_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``pred, target (B,1,H,W)``; ``weight (B,H,W)``; → Σ v·w·(pred − target)² / Σ v·w."""
    w = (weight * valid)[:, None]
    # Mask the difference before squaring: padded targets may hold anything (NaN included), and a masked
    # NaN would still poison the gradient if the square were taken first.
    err = torch.where(w > 0, pred.float() - target, 0.0) ** 2
    return _safe_ratio((err * w).sum(), w.sum())


def offset_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``pred, target (B,C,H,W)`` in pixels; ``weight (B,H,W)`` → Σ v·w·Σ_c |pred − target| / Σ v·w."""
    w = (weight * valid)[:, None]
    err = torch.where(w > 0, pred.float() - target, 0.0).abs()
    return _safe_ratio((err * w).sum(), w.sum())


def foreground_loss(logit: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``logit (B,1,H,W)``, ``target (B,H,W) int64`` in {0, 1}, ``weight (B,H,W)`` → Σ v·w·BCE / Σ v·w."""
    w = weight * valid
    on = w > 0
    bce = F.binary_cross_entropy_with_logits(
        torch.where(on, logit[:, 0].float(), 0.0),
        torch.where(on, target.to(torch.float32), 0.0),
        reduction="none",
    )
    bce = torch.where(on, bce, 0.0)
    return _safe_ratio((bce * w).sum(), w.sum())


def prn_loss(
    outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], lambdas: LossWeights = LossWeights()
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. (1) over a batch (keys of ``prn_model.data``'s Batch) and :class:`~prn_model.network.PRN`'s
    outputs. Returns ``(total, terms)``: ``total`` a differentiable float32 scalar Σ λ_i·L_i; ``terms`` maps
    each term name (:data:`TERMS`) to its *unweighted* value L_i as a detached 0-d tensor (no host sync).
    ``box_offset`` is left out when the outputs have no ``box_offset`` (box offsets switched off)."""
    valid = batch["valid"].bool()
    terms = {
        "semantic": semantic_loss(outputs["semantic"], batch["semantic"], batch["semantic_weight"], valid),
        "center": center_loss(outputs["center"], batch["center"], batch["center_weight"], valid),
        "center_offset": offset_loss(
            outputs["center_offset"], batch["center_offset"], batch["offset_weight"], valid
        ),
    }
    if "box_offset" in outputs:
        terms["box_offset"] = offset_loss(outputs["box_offset"], batch["box_offset"], batch["offset_weight"], valid)
    terms["foreground"] = foreground_loss(
        outputs["foreground"], batch["foreground"], batch["foreground_weight"], valid
    )
    total = sum(getattr(lambdas, k) * v for k, v in terms.items())
    return total, {k: v.detach() for k, v in terms.items()}
