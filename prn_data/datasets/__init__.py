"""Dataset readers. Every reader yields :class:`prn_data.records.Sample` at the original resolution.

A dataset object has: ``name`` (``"coco"``, ``"cityscapes"``, ``"synthetic"``), ``split``, ``root``,
``categories`` (:class:`~prn_data.records.CategorySet`), ``__len__``, ``keys()`` (image ids in order),
``load(index) -> Sample``, ``orig_size(index) -> (h, w)`` (cheap, no pixel decode) and ``describe() -> dict``
(JSON-able spec recorded in a store, enough to reopen it with :func:`open_described`).

Panoptic ids are normalised to ``category_id*1000 + k`` (k ≥ 1 per class for things in segment order,
crowd included; 0 for stuff), VOID = -1; ``Sample.gt_source["segment_ids"]`` maps ``str(normalised id)``
to the id in the dataset's own file. Bad files raise :class:`~prn_data.errors.DatasetError` from
``load(i)``, per sample, so a build can report a failed sample and go on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .cityscapes import CityscapesDataset
from .cityscapes_panoptic import CityscapesPanopticDataset, find_panoptic_json
from .coco import CocoPanopticDataset
from .common import Dataset
from .synthetic import SyntheticConfig, SyntheticDataset, default_root

__all__ = ["Dataset", "open_dataset", "open_described"]

DEFAULT_SYNTHETIC_NUM = 8


def open_dataset(spec: str, split: str, **options: Any) -> Dataset:
    """Open a dataset from ``spec``:

    - ``coco:PATH`` — COCO panoptic; options ``images_dir``, ``panoptic_dir``, ``json_path``.
    - ``cityscapes:PATH`` — gtFine layout, or the createPanopticImgs JSON + PNG folder when
      ``gtFine/cityscapes_panoptic_{split}[_trainId].json`` exists (it is what Cityscapes' panoptic evaluation
      scores against); option ``format`` = ``"gtfine"`` | ``"panoptic"`` forces one; for the panoptic format
      also ``json_path``, ``panoptic_dir``, ``images_dir``, ``use_train_id``.
    - ``synthetic`` / ``synthetic:N`` — N generated scenes (default 8) in ``root`` (default
      ``cache/synthetic/<split>-<N>``), generated only if not already there; options ``root``, ``seed``,
      ``min_size``, ``max_size``, ``max_instances``.
    """
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "coco":
        _check_options(spec, options, {"images_dir", "panoptic_dir", "json_path"})
        return CocoPanopticDataset(_need_path(spec, arg), split, **options)
    if kind == "cityscapes":
        _check_options(spec, options, {"format", "images_dir", "panoptic_dir", "json_path", "use_train_id"})
        return _open_cityscapes(_need_path(spec, arg), split, **options)
    if kind == "synthetic":
        _check_options(spec, options, {"root", "seed", "min_size", "max_size", "max_instances"})
        return _open_synthetic(arg, split, **options)
    raise DatasetError(None, f"unknown dataset spec {spec!r} (expected coco:PATH, cityscapes:PATH or synthetic[:N])")


def open_described(description: dict) -> Dataset:
    """Reopen a dataset from its :meth:`Dataset.describe` output (e.g. as recorded in a store)."""
    return open_dataset(description["spec"], description["split"], **description.get("options", {}))


def _check_options(spec: str, options: dict, allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DatasetError(None, f"dataset {spec!r} takes no option(s) {unknown}; it knows {sorted(allowed)}")


def _need_path(spec: str, arg: str) -> Path:
    if not arg:
        raise DatasetError(None, f"dataset spec {spec!r} needs a path after ':'")
    path = Path(arg).expanduser()
    if not path.exists():
        raise DatasetError(path, "dataset root does not exist")
    return path


def _open_cityscapes(root: Path, split: str, format: str | None = None, **options: Any) -> Dataset:
    fmt = (format or "").lower() or None
    if fmt is None:
        fmt = "panoptic" if options.get("json_path") or find_panoptic_json(root, split) else "gtfine"
    if fmt == "panoptic":
        return CityscapesPanopticDataset(root, split, **options)
    if fmt == "gtfine":
        if options:
            raise DatasetError(root, f"options {sorted(options)} do not apply to the gtFine layout")
        return CityscapesDataset(root, split)
    raise DatasetError(root, f"unknown Cityscapes format {format!r} (gtfine or panoptic)")


def _open_synthetic(arg: str, split: str, root: str | Path | None = None, seed: int = 0, **gen: Any) -> Dataset:
    try:
        num = int(arg) if arg else DEFAULT_SYNTHETIC_NUM
    except ValueError:
        raise DatasetError(None, f"synthetic:N needs an integer N, got {arg!r}") from None
    if num < 1:
        raise DatasetError(None, f"synthetic:N needs N ≥ 1, got {num}")
    for key in ("min_size", "max_size"):
        if key in gen:
            gen[key] = tuple(int(v) for v in gen[key])
    config = SyntheticConfig(seed=int(seed), **gen)
    root_p = Path(root) if root is not None else default_root(split, num, int(seed))
    return SyntheticDataset(root_p, split, num, config)
