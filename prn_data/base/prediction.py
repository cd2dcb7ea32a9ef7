"""A base network's prediction for one image (paper §3.2, §4.1), and the checks every adapter applies to it.

- :class:`BasePrediction`: ``panoptic (h, w) int32`` at the *original* image size with ids
  ``category_id * 1000 + k`` (VOID = -1); ``segments: list[Segment]`` (``score`` optional);
  ``probs: (N_cl, h', w') float32 | None`` per-class probabilities at any resolution.
- :class:`BaseNetwork`: anything with ``spec: str`` and ``predict(samples) -> list[BasePrediction]``.
- :func:`renumber` maps a file's or a model's raw segment ids to prn's ids; :func:`check_probs` validates
  probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import BaseNetworkError
from ..panoptic_io import refresh_segments
from ..records import VOID, CategorySet, IdAllocator, Sample, Segment


@dataclass
class BasePrediction:
    """One image's base-network output at the image's original size.

    - ``panoptic``: ``(h, w) int32``, ids ``category_id * 1000 + k`` (k ≥ 1 things, 0 stuff), VOID = -1.
    - ``segments``: one :class:`Segment` per id in ``panoptic``; ``score`` in [0, 1] or ``None``.
    - ``probs``: ``(N_cl, h', w') float32`` class probabilities in the dataset's train-id order, any
      resolution, or ``None`` when the base gives none.
    """

    panoptic: np.ndarray
    segments: list[Segment]
    probs: np.ndarray | None = None
    image_id: str = ""
    meta: dict = field(default_factory=dict)

    @staticmethod
    def empty(size: tuple[int, int], image_id: str = "") -> "BasePrediction":
        """An all-VOID prediction with no segments (what ``allow_missing`` records)."""
        return BasePrediction(np.full(size, VOID, dtype=np.int32), [], None, image_id, {"missing": True})


@runtime_checkable
class BaseNetwork(Protocol):
    """Anything with a ``spec`` string and ``predict(samples) -> list[BasePrediction]`` (original size)."""

    spec: str

    def predict(self, samples: list[Sample]) -> list[BasePrediction]: ...


def check_probs(probs: np.ndarray, num_classes: int, where: str) -> None:
    """Raise :class:`BaseNetworkError` unless ``probs`` is ``(num_classes, h, w)``, finite, non-negative."""
    if probs.ndim != 3 or probs.shape[0] != num_classes:
        raise BaseNetworkError(
            f"{where}: probabilities have shape {tuple(probs.shape)}, expected ({num_classes}, h, w)"
        )
    if not np.all(np.isfinite(probs)):
        raise BaseNetworkError(f"{where}: probabilities contain NaN or infinite values")
    if probs.size and float(probs.min()) < 0:
        raise BaseNetworkError(f"{where}: probabilities contain negative values")


def renumber(ids: np.ndarray, segments: Sequence[dict], categories: CategorySet, where: str, *,
             void_ids: Sequence[int] = (0,)) -> tuple[np.ndarray, list[Segment]]:
    """Map a file's raw segment ids to prn's convention (``category_id * 1000 + k``, VOID = -1).

    ``segments`` are COCO ``segments_info`` dicts (``id``, ``category_id``, optional ``score``/``iscrowd``).
    Ids already in the convention are kept (so an export by this package round-trips unchanged); otherwise
    :class:`~prn_data.records.IdAllocator` numbers things k = 1, 2, … per class in list order and stuff
    segments of one class are merged. A listed id absent from ``ids``, an id in ``ids`` that is not listed,
    an unknown category, or more things of one class than the label divisor allows raises
    :class:`BaseNetworkError` naming ``where``.
    """
    uniq, inv = np.unique(ids, return_inverse=True)
    present = set(uniq.tolist())
    listed: dict[int, dict] = {}
    for d in segments:
        sid = int(d["id"])
        cid = int(d["category_id"])
        if cid not in categories:
            raise BaseNetworkError(f"{where}: segment {sid} has unknown category id {cid}")
        if sid not in present:
            raise BaseNetworkError(f"{where}: segment {sid} (category {cid}) is listed but absent from the id map")
        if sid in listed:
            raise BaseNetworkError(f"{where}: segment id {sid} is listed twice")
        listed[sid] = d
    unlisted = sorted(present - set(listed) - set(void_ids))
    if unlisted:
        raise BaseNetworkError(f"{where}: ids {unlisted[:5]} of the id map are not listed in segments_info")

    alloc = IdAllocator()

    def conventional(sid: int, cid: int) -> bool:
        k = sid - cid * alloc.divisor
        return (k >= 1 if categories.by_id(cid).isthing else k == 0) and k < alloc.divisor

    keep = all(conventional(sid, int(d["category_id"])) for sid, d in listed.items())
    new_id: dict[int, int] = {}
    out: dict[int, Segment] = {}
    for sid, d in listed.items():
        cat = categories.by_id(int(d["category_id"]))
        if keep:
            nid = sid
        else:
            try:
                nid = alloc.next(cat.id, cat.isthing)
            except ValueError as exc:  # too many things of one class for the label divisor
                raise BaseNetworkError(f"{where}: {exc}") from None
        new_id[sid] = nid
        score = d.get("score")
        if nid not in out:
            out[nid] = Segment(nid, cat.id, cat.train_id, cat.isthing, bool(d.get("iscrowd", 0)) and cat.isthing,
                               score=None if score is None else float(score))
    lut = np.array([new_id.get(int(u), VOID) for u in uniq], dtype=np.int32)
    pan = lut[inv].reshape(ids.shape)
    return pan, refresh_segments(pan, list(out.values()))


__all__ = ["BasePrediction", "BaseNetwork", "check_probs", "renumber"]
