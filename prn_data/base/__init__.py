"""Base panoptic networks (DESIGN §4; paper §3.2, §4.1): adapters that yield a panoptic prediction per image.

Contract (other modules rely on it):

- :class:`BasePrediction`: ``panoptic (h, w) int32`` at the *original* image size with ids
  ``category_id * 1000 + k`` (VOID = -1); ``segments: list[Segment]`` (``score`` optional);
  ``probs: (N_cl, h', w') float32 | None`` per-class probabilities at any resolution.
- ``open_base(spec, categories) -> BaseNetwork | None`` (``None`` for ``"none"``); a ``BaseNetwork`` has
  ``spec: str`` and ``predict(samples: list[Sample]) -> list[BasePrediction]`` (samples at original size).
- ``prn_data.base.encode.encode_base(pred, size, num_classes, params) -> dict`` resizes a prediction to the
  store resolution ``size = (h, w)`` and encodes PRN's inputs: ``instance (7, h, w) float32``,
  ``semantic (N_cl, ⌈h/4⌉, ⌈w/4⌉) float32``, ``panoptic (h, w) int32``, ``segments`` (list of dicts).

Specs (``--base``):

- ``none`` — ground truth only (``open_base`` returns ``None``).
- ``files:DIR`` — COCO panoptic PNGs + one JSON (+ optional ``<name>.npz`` with ``probs``), see :mod:`.files`.
- ``coco-results:INSTANCES_JSON,SEMANTIC_DIR[,overlap=0.5,stuff_area=4096,confidence=0.5]`` — see
  :mod:`.coco_results`.
- ``python:module:factory[,batch=4]`` — a user's PyTorch model, see :mod:`.python`.
- ``simulated[:miss=0.1,spurious=0.05,confuse=0.05,seed=0,...]`` — a *simulator* built from the ground
  truth, see :mod:`.simulated`.

``open_base(..., allow_missing=True)`` makes the ``files`` and ``coco-results`` adapters record an empty
prediction (all VOID, no segments, no probabilities) for an image they have no prediction for, instead of
raising :class:`~prn_data.errors.BaseNetworkError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import BaseNetworkError
from ..records import VOID, CategorySet, Sample, Segment

BASE_KINDS = ("none", "files", "coco-results", "python", "simulated")


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


def parse_options(text: str, spec: str) -> dict[str, str]:
    """``"a=1,b=x"`` → ``{"a": "1", "b": "x"}``; a malformed item raises :class:`BaseNetworkError`."""
    out: dict[str, str] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BaseNetworkError(f"base spec {spec!r}: expected key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def split_spec(spec: str) -> tuple[str, str]:
    """``"kind:rest"`` → ``(kind, rest)``; checks that ``kind`` is known."""
    kind, _, rest = spec.strip().partition(":")
    if kind not in BASE_KINDS:
        raise BaseNetworkError(f"unknown base network spec {spec!r}; expected one of {', '.join(BASE_KINDS)}")
    return kind, rest


def _categories_of(categories_or_dataset) -> CategorySet:
    # open_base accepts a CategorySet or a Dataset (ARCHITECTURE names the dataset, the contract the set).
    if isinstance(categories_or_dataset, CategorySet):
        return categories_or_dataset
    cats = getattr(categories_or_dataset, "categories", None)
    if isinstance(cats, CategorySet):
        return cats
    raise TypeError("open_base needs a CategorySet or a dataset with a .categories CategorySet")


def open_base(spec: str, categories, *, allow_missing: bool = False) -> BaseNetwork | None:
    """Open the base network named by ``spec`` for a dataset whose categories are ``categories``
    (a :class:`CategorySet` or a dataset object). Returns ``None`` for ``"none"``.

    Adapters are cheap to construct and to pickle (models and files load lazily), so a Dask build can ship
    them to workers. Bad specs raise :class:`BaseNetworkError`.
    """
    cats = _categories_of(categories)
    kind, rest = split_spec(spec)
    if kind == "none":
        if rest:
            raise BaseNetworkError(f"base spec {spec!r}: 'none' takes no arguments")
        return None
    if kind == "files":
        from .files import FilesBase

        if not rest:
            raise BaseNetworkError(f"base spec {spec!r}: expected files:DIR")
        return FilesBase(rest, cats, allow_missing=allow_missing)
    if kind == "coco-results":
        from .coco_results import CocoResultsBase

        return CocoResultsBase.from_spec(spec, rest, cats, allow_missing=allow_missing)
    if kind == "python":
        from .python import PythonBase

        return PythonBase.from_spec(spec, rest, cats)
    from .simulated import SimulatedBase

    return SimulatedBase.from_spec(spec, rest, cats)


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


def renumber(ids: np.ndarray, segments: Sequence[dict], categories: CategorySet, where: str,
             void_ids: Sequence[int] = (0,)) -> tuple[np.ndarray, list[Segment]]:
    """Map a file's raw segment ids to prn's convention (``category_id * 1000 + k``, VOID = -1).

    ``segments`` are COCO ``segments_info`` dicts (``id``, ``category_id``, optional ``score``/``iscrowd``).
    Ids already in the convention are kept (so an export by this package round-trips unchanged); otherwise
    things are numbered k = 1, 2, … per class in list order and stuff segments of one class are merged.
    A listed id absent from ``ids``, an id in ``ids`` that is not listed, or an unknown category raises
    :class:`BaseNetworkError` naming ``where``.
    """
    from ..records import LABEL_DIVISOR

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

    def conventional(sid: int, cid: int) -> bool:
        k = sid - cid * LABEL_DIVISOR
        return (k >= 1 if categories.by_id(cid).isthing else k == 0) and k < LABEL_DIVISOR

    keep = all(conventional(sid, int(d["category_id"])) for sid, d in listed.items())
    new_id: dict[int, int] = {}
    counters: dict[int, int] = {}
    out: dict[int, Segment] = {}
    for sid, d in listed.items():
        cat = categories.by_id(int(d["category_id"]))
        if keep:
            nid = sid
        elif cat.isthing:
            counters[cat.id] = counters.get(cat.id, 0) + 1
            nid = cat.id * LABEL_DIVISOR + counters[cat.id]
        else:
            nid = cat.id * LABEL_DIVISOR
        new_id[sid] = nid
        score = d.get("score")
        if nid not in out:
            out[nid] = Segment(nid, cat.id, cat.train_id, cat.isthing, bool(d.get("iscrowd", 0)) and cat.isthing,
                               score=None if score is None else float(score))
    lut = np.array([new_id.get(int(u), VOID) for u in uniq], dtype=np.int32)
    pan = lut[inv].reshape(ids.shape)
    from ..panoptic_io import refresh_segments

    return pan, refresh_segments(pan, list(out.values()))


__all__ = ["BasePrediction", "BaseNetwork", "open_base", "parse_options", "split_spec", "check_probs", "renumber",
           "BASE_KINDS"]
