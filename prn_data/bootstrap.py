"""Paired bootstrap intervals of a PQ difference over images (workflows/README.md "Evidence").

Two prediction sets scored on the same images (e.g. a base network and PRN) give each image's PQ counts
(:class:`prn_data.pq.ImageStats`). A bootstrap replicate draws the images with replacement — the same draw
for both sets, which is what makes it *paired* — sums each set's per-class counts over the drawn images, and
recomputes PQ exactly as :func:`prn_data.pq.pq_average` does (the mean over classes with any TP, FP or FN).
The interval is the percentile interval of the replicates' differences.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .pq import ImageStats

# rows of a count matrix: summed IoU of the true positives, then the TP, FP and FN counts
IOU, TP, FP, FN = range(4)


def count_matrix(stats: Sequence[ImageStats], category_ids: Sequence[int]) -> np.ndarray:
    """Per-image PQ counts ``(n_images, 4, n_categories) float64``: summed TP IoU, TP, FP, FN per class (in
    ``category_ids`` order; categories not listed are ignored)."""
    col = {int(c): j for j, c in enumerate(category_ids)}
    out = np.zeros((len(stats), 4, len(col)), dtype=np.float64)
    for i, s in enumerate(stats):
        for row, cats, vals in ((IOU, s.tp_category, s.tp_iou), (TP, s.tp_category, None),
                                (FP, s.fp_category, None), (FN, s.fn_category, None)):
            for k, c in enumerate(np.asarray(cats).tolist()):
                j = col.get(int(c))
                if j is not None:
                    out[i, row, j] += 1.0 if vals is None else float(vals[k])
    return out


def pq_of_counts(totals: np.ndarray) -> np.ndarray:
    """PQ (fraction) of summed counts ``(..., 4, n_categories)``: per class ``iou / (tp + fp/2 + fn/2)``,
    averaged over the classes with ``tp + fp + fn > 0`` (0 when there is none). Shape ``(...)``."""
    iou, tp, fp, fn = (totals[..., r, :] for r in (IOU, TP, FP, FN))
    denom = tp + 0.5 * fp + 0.5 * fn
    present = (tp + fp + fn) > 0
    per_class = np.where(present, iou / np.where(present, denom, 1.0), 0.0)
    n = present.sum(axis=-1)
    return np.where(n > 0, per_class.sum(axis=-1) / np.maximum(n, 1), 0.0)


def paired_bootstrap(
    reference: Sequence[ImageStats],
    candidate: Sequence[ImageStats],
    category_ids: Sequence[int],
    *,
    replicates: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float | list[float]]:
    """The PQ gain of ``candidate`` over ``reference`` (same images, same order) in PQ points, with its paired
    bootstrap percentile interval: ``{"gain": float, "ci": [low, high], "level", "replicates", "seed",
    "images"}``. Seeded: the same inputs and seed give the same interval."""
    if len(reference) != len(candidate):
        raise ValueError(f"paired bootstrap needs the same images: {len(reference)} against {len(candidate)}")
    n = len(reference)
    if n == 0:
        raise ValueError("paired bootstrap needs at least one image")
    a, b = count_matrix(reference, category_ids), count_matrix(candidate, category_ids)
    gain = 100.0 * float(pq_of_counts(b.sum(0)) - pq_of_counts(a.sum(0)))
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.float64)  # (R, n)
    # (R, n) @ (n, 4·C): the counts summed over each replicate's draw, images drawn twice counted twice
    ta = (weights @ a.reshape(n, -1)).reshape(replicates, *a.shape[1:])
    tb = (weights @ b.reshape(n, -1)).reshape(replicates, *b.shape[1:])
    diffs = 100.0 * (pq_of_counts(tb) - pq_of_counts(ta))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    return {"gain": gain, "ci": [float(low), float(high)], "level": level, "replicates": int(replicates),
            "seed": int(seed), "images": n}


__all__ = ["count_matrix", "paired_bootstrap", "pq_of_counts"]
