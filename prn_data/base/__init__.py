"""Base panoptic networks (paper §3.2, §4.1; README "Base networks (`--base`)"): adapters that yield a
panoptic prediction per image.

Contract (other modules rely on it):

- :class:`BasePrediction` (:mod:`.prediction`): ``panoptic (h, w) int32`` at the *original* image size with ids
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

from ..datasets import Dataset
from ..errors import BaseNetworkError
from ..records import CategorySet
from .coco_results import CocoResultsBase
from .files import FilesBase
from .prediction import BaseNetwork, BasePrediction, check_probs, renumber
from .python import PythonBase
from .simulated import SimulatedBase
from .spec import BASE_KINDS, parse_options, split_spec


def _categories_of(categories_or_dataset: CategorySet | Dataset) -> CategorySet:
    # open_base accepts a CategorySet or a Dataset (ARCHITECTURE names the dataset, the contract the set).
    if isinstance(categories_or_dataset, CategorySet):
        return categories_or_dataset
    cats = getattr(categories_or_dataset, "categories", None)
    if isinstance(cats, CategorySet):
        return cats
    raise TypeError("open_base needs a CategorySet or a dataset with a .categories CategorySet")


def open_base(spec: str, categories: CategorySet | Dataset, *, allow_missing: bool = False) -> BaseNetwork | None:
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
        if not rest:
            raise BaseNetworkError(f"base spec {spec!r}: expected files:DIR")
        return FilesBase(rest, cats, allow_missing=allow_missing)
    if kind == "coco-results":
        return CocoResultsBase.from_spec(spec, rest, cats, allow_missing=allow_missing)
    if kind == "python":
        return PythonBase.from_spec(spec, rest, cats)
    return SimulatedBase.from_spec(spec, rest, cats)


__all__ = ["BasePrediction", "BaseNetwork", "open_base", "parse_options", "split_spec", "check_probs", "renumber",
           "BASE_KINDS"]
