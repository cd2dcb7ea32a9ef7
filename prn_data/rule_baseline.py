"""A no-learning baseline for refining a base network's panoptic output (README "The demo"; workflows/README.md
"Evidence"): what a rule gets from the same inputs PRN gets, so PRN's gain can be told from what thresholds
and hole filling already give.

Two rules, applied to the base's panoptic map and its semantic labels (arg-max of its probabilities):

1. **score threshold**: thing segments scoring below ``threshold`` are removed (their pixels become VOID);
   segments without a score are kept;
2. **fill**: VOID pixels whose semantic label is a thing class, opened by a ``(2·open + 1)²`` square (so
   the slivers a merge leaves between an instance mask and the blocky semantic map go), form 4-connected
   regions per class; each region of at least ``min_area`` pixels becomes a new instance of that class
   (score None).

Stuff and kept thing segments are not touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from .panoptic_io import refresh_segments
from .records import LABEL_DIVISOR, VOID, CategorySet, Segment
from .resize import resize_labels


@dataclass(frozen=True)
class RuleParams:
    """``threshold``: the least score a thing segment keeps; ``min_area``: the least pixels of a filled
    region and ``open`` the opening's radius (px), both at the resolution of the maps given."""

    threshold: float = 0.5
    min_area: int = 128
    open: int = 2


def semantic_labels(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Arg-max train ids ``(h, w) int64`` of class probabilities ``(C, h', w')`` sampled at the pixel centres of
    an ``(h, w)`` map covering the same extent (nearest-exact, README "Conventions")."""
    return resize_labels(np.asarray(probs).argmax(axis=0).astype(np.uint8), size).astype(np.int64)


def rule_baseline(
    panoptic: np.ndarray,
    segments: Sequence[Segment],
    labels: np.ndarray,
    categories: CategorySet,
    params: RuleParams = RuleParams(),
    *,
    divisor: int = LABEL_DIVISOR,
) -> tuple[np.ndarray, list[Segment]]:
    """The rule baseline of one image. ``panoptic (h, w) int`` ids ``category_id * 1000 + k`` (VOID −1),
    ``segments`` its segments (``score`` optional), ``labels (h, w) int`` the base's semantic train ids.
    New instances are numbered after the class's highest kept ``k`` (ids ``category_id * divisor + k``).
    Returns a new ``(panoptic int32, segments)``; the inputs are not modified."""
    pan = np.array(panoptic, dtype=np.int32, copy=True)
    kept: list[Segment] = []
    used: dict[int, int] = {}
    for s in segments:
        if s.isthing and not s.iscrowd and s.score is not None and s.score < params.threshold:
            pan[pan == s.id] = VOID
            continue
        kept.append(s)
        if s.isthing:
            cid = s.category_id
            used[cid] = max(used.get(cid, 0), s.id - cid * divisor)
    for c in categories:
        if not c.isthing:
            continue
        holes = (pan == VOID) & (labels == c.train_id)
        if params.open > 0 and holes.any():
            holes = ndimage.binary_opening(holes, structure=np.ones((2 * params.open + 1,) * 2, bool))
        if not holes.any():
            continue
        comp, n = ndimage.label(holes)
        areas = np.bincount(comp.ravel(), minlength=n + 1)
        k = used.get(c.id, 0)
        for r in np.nonzero(areas[1:] >= params.min_area)[0] + 1:
            k += 1
            if k >= divisor:
                break  # no id left for this class
            sid = c.id * divisor + k
            pan[comp == r] = sid
            kept.append(Segment(sid, c.id, c.train_id, True))
    return pan, refresh_segments(pan, kept)


__all__ = ["RuleParams", "rule_baseline", "semantic_labels"]
