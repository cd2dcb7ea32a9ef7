"""``prn stats``: what a store holds and how good its base network is, before any training.

Per category: pixel count, instance count (non-crowd thing segments) and crowd-region count; a histogram of
instance areas (pixels, at the stored resolution); and the panoptic quality (PQ = SQ × RQ, Kirillov et al.,
the metric of the PRN paper §4) of the stored base-network predictions against the stored ground truth.

PQ follows panopticapi: a match is IoU > 0.5 within one category, the IoU's union leaves out the predicted
pixels on VOID; crowd ground truth is never a false negative; a predicted segment that lies more than half
on VOID or on a crowd region of its own category is no false positive. Accumulated over the whole store per
category, averaged over the categories that occur. It is measured at the stored (resized) resolution, so it
is close to, not equal to, the PQ at the original image size.

The PQ code itself is :mod:`prn_data.pq` (the same code scores evaluation); :class:`PQAccumulator`
adapts it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from .pq import PQStat, SegmentLike, SegmentTable, pq_average, pq_image
from .records import LABEL_DIVISOR, VOID, CategorySet
from .store import Store
from .verify import default_workers

AREA_BIN_EDGES: tuple[float, ...] = (0, 64, 256, 1024, 4096, 16384, 65536, 262144, float("inf"))
"""Instance-area histogram bins in pixels (``[lo, hi)``); 4096 is the small-instance threshold of the
semantic weight (README "Conventions"), 32² and 96² are COCO's small/medium/large limits."""


def _seg_dicts(segments: Iterable[SegmentLike]) -> list[dict]:
    """Segments as dicts ``{id, category_id, iscrowd, ...}`` whether given as dicts or ``Segment``s."""
    out = []
    for s in segments or ():
        if isinstance(s, Mapping):
            out.append(dict(s))
        else:
            out.append({"id": s.id, "category_id": s.category_id, "iscrowd": int(s.iscrowd), "isthing": int(s.isthing)})
    return out


def _areas(panoptic: np.ndarray) -> dict[int, int]:
    uniq, counts = np.unique(panoptic, return_counts=True)
    return {int(u): int(c) for u, c in zip(uniq, counts)}


# ---------------------------------------------------------------------------------------------- PQ
class PQAccumulator:
    """Base-vs-ground-truth PQ summed over images, per category: a thin adapter over the
    panopticapi-exact code of :mod:`prn_data.pq`, fed with in-memory maps (VOID = −1)."""

    def __init__(self) -> None:
        self.stat = PQStat()

    def add(
        self,
        gt_panoptic: np.ndarray,
        gt_segments: Sequence[SegmentLike],
        pred_panoptic: np.ndarray,
        pred_segments: Sequence[SegmentLike],
        *,
        name: str | None = None,
    ) -> None:
        """Add one image: ``(H, W) int`` id maps (VOID = −1) with their segment lists (dicts with ``id``,
        ``category_id``, ``iscrowd``, or ``Segment``s). ``name`` labels errors (e.g. ``"store.zarr[3]"``)."""
        if gt_panoptic.shape != pred_panoptic.shape:
            raise ValueError(f"{name or 'sample'}: gt {gt_panoptic.shape} and prediction {pred_panoptic.shape} differ")
        self.stat.add(
            pq_image(
                np.asarray(gt_panoptic),
                SegmentTable.from_segments(_seg_dicts(gt_segments)),
                np.asarray(pred_panoptic),
                SegmentTable.from_segments(_seg_dicts(pred_segments)),
                void=VOID,
            )
        )

    def per_category(self) -> dict[int, dict[str, float]]:
        """``{category_id: {pq, sq, rq, tp, fp, fn}}`` for categories with any tp, fp or fn."""
        st = self.stat
        out = {}
        for cat in sorted(set(st.tp) | set(st.fp) | set(st.fn)):
            tp, fp, fn = st.tp.get(cat, 0), st.fp.get(cat, 0), st.fn.get(cat, 0)
            iou = st.iou.get(cat, 0.0)
            denom = tp + 0.5 * fp + 0.5 * fn
            out[cat] = {
                "pq": iou / denom if denom else 0.0,
                "sq": iou / tp if tp else 0.0,
                "rq": tp / denom if denom else 0.0,
                "tp": tp,
                "fp": fp,
                "fn": fn,
            }
        return out

    def summary(self, categories: CategorySet) -> dict[str, dict[str, float]]:
        """``{"all"|"things"|"stuff": {pq, sq, rq, n}}``, means over the categories that occur (0..1)."""
        res = pq_average(self.stat, categories)
        return {"all": res["All"], "things": res["Things"], "stuff": res["Stuff"]}


# ---------------------------------------------------------------------------------------------- counts
def segment_counts(
    panoptic: np.ndarray, segments: Sequence[SegmentLike], *, label_divisor: int = LABEL_DIVISOR
) -> tuple[dict[int, int], dict[int, int], dict[int, int], list[int]]:
    """Counts of one image: ``(pixels, instances, crowds, instance_areas)``.

    ``pixels`` maps category id → pixel count; ``instances`` category id → non-crowd thing segments;
    ``crowds`` category id → crowd regions; ``instance_areas`` the areas (px) of the non-crowd thing
    segments. A segment absent from ``segments`` takes category ``id // label_divisor``.
    """
    segs = {s["id"]: s for s in _seg_dicts(segments)}
    pixels: dict[int, int] = {}
    instances: dict[int, int] = {}
    crowds: dict[int, int] = {}
    areas: list[int] = []
    for sid, area in _areas(panoptic).items():
        if sid == VOID:
            continue
        s = segs.get(sid, {"category_id": sid // label_divisor, "iscrowd": 0, "isthing": int(sid % label_divisor > 0)})
        cat = int(s["category_id"])
        pixels[cat] = pixels.get(cat, 0) + area
        if s.get("iscrowd"):
            crowds[cat] = crowds.get(cat, 0) + 1
        elif s.get("isthing"):
            instances[cat] = instances.get(cat, 0) + 1
            areas.append(area)
    return pixels, instances, crowds, areas


def area_histogram(areas: Sequence[int], edges: Sequence[float] = AREA_BIN_EDGES) -> list[int]:
    """Counts of ``areas`` in the bins ``[edges[i], edges[i+1])``."""
    a = np.asarray(areas, dtype=np.float64)
    return [int(((a >= lo) & (a < hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:])]


def read_labels(store: Store, i: int) -> dict:
    """Only the id maps and segment lists of sample ``i`` (not the image and 133-channel probabilities,
    which would dominate the read)."""
    paths = ["gt/panoptic", "gt/segments"]
    if store.has_base:
        paths += ["base/panoptic", "base/segments"]
    return store.read_sample(i, arrays=paths)


def store_stats(
    store: Store, progress: Callable[[int, int], None] | None = None, workers: int | None = None
) -> dict:
    """Statistics of every done sample of an open store (:class:`prn_data.store.Store`), read by ``workers``
    threads (default :func:`prn_data.verify.default_workers`; counting is done in order, so the result does
    not depend on it). Only the id maps and segment lists are read (6–10× faster than decoding whole
    samples, ``benchmarks/verify.py``).

    Returns a JSON-ready dict: ``samples``, ``categories`` (rows of id, name, isthing, pixels, instances,
    crowds, images), ``instance_area_histogram`` ({edges, counts}), ``base_pq`` (``None`` without a base
    network) with ``all``/``things``/``stuff`` and ``per_category``.
    """
    cats: CategorySet = store.categories
    divisor = int(store.attrs["label_divisor"])
    done = np.flatnonzero(np.asarray(store.done))
    pixels: dict[int, int] = {}
    instances: dict[int, int] = {}
    crowds: dict[int, int] = {}
    images: dict[int, int] = {}
    areas: list[int] = []
    acc = None
    with ThreadPoolExecutor(max(1, workers or default_workers())) as pool:
        labelled = pool.map(lambda j: read_labels(store, int(j)), done)
        for k, (i, s) in enumerate(zip(done, labelled)):
            p, n, c, a = segment_counts(s["gt/panoptic"], s.get("gt/segments", ()), label_divisor=divisor)
            for d, src in ((pixels, p), (instances, n), (crowds, c)):
                for cat, v in src.items():
                    d[cat] = d.get(cat, 0) + v
            for cat in p:
                images[cat] = images.get(cat, 0) + 1
            areas += a
            if "base/panoptic" in s:
                if acc is None:
                    acc = PQAccumulator()
                acc.add(s["gt/panoptic"], s.get("gt/segments", ()), s["base/panoptic"], s.get("base/segments", ()),
                        name=f"sample {int(i)}")
            if progress:
                progress(k + 1, len(done))
    rows = [
        {
            "id": c.id,
            "name": c.name,
            "isthing": bool(c.isthing),
            "pixels": pixels.get(c.id, 0),
            "instances": instances.get(c.id, 0),
            "crowds": crowds.get(c.id, 0),
            "images": images.get(c.id, 0),
        }
        for c in cats
    ]
    base_pq = None
    if acc is not None:
        base_pq = dict(acc.summary(cats))
        names = {c.id: c.name for c in cats}
        base_pq["per_category"] = {names.get(cat, str(cat)): v for cat, v in acc.per_category().items()}
    return {
        "samples": int(len(done)),
        "total": int(len(store)),
        "categories": rows,
        "instance_area_histogram": {
            "edges": [e if np.isfinite(e) else None for e in AREA_BIN_EDGES],
            "counts": area_histogram(areas),
        },
        "base_pq": base_pq,
    }


__all__ = ["AREA_BIN_EDGES", "PQAccumulator", "segment_counts", "area_histogram", "store_stats"]
