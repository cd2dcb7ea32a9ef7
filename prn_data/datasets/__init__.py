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

import re
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .cityscapes import CityscapesDataset
from .cityscapes_panoptic import CityscapesPanopticDataset, find_panoptic_json
from .coco import CocoPanopticDataset
from .common import Dataset
from .synthetic import SyntheticConfig, SyntheticDataset, default_root, is_complete, regenerated_root

__all__ = ["Dataset", "open_dataset", "open_described", "open_recorded"]

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
    """Reopen a dataset from its :meth:`Dataset.describe` output, as the build that made it does (a
    synthetic dataset is generated where described if it is not there). A description read from a store is
    someone else's: open it with :func:`open_recorded`."""
    return open_dataset(description["spec"], description["split"], **description.get("options", {}))


def open_recorded(description: Any, *, root: str | Path | None = None, max_samples: int | None = None) -> Dataset:
    """Reopen, to read only, the dataset a store recorded (its ``dataset`` attribute, whoever made it):
    nothing is ever written where the description points (README "Sharing stores").

    ``root``: the dataset's root as the user names it (``--gt``), instead of the recorded one. COCO and
    Cityscapes are read there or where recorded. A synthetic dataset is read there (or where recorded) only
    when a complete generation of the recorded parameters is found; otherwise, without ``root``, it is
    generated again under ``cache/regenerated/`` (:func:`~prn_data.datasets.synthetic.regenerated_root`),
    at most ``max_samples`` scenes (a scene depends only on its index, so the first ones are the same)."""
    try:
        spec, split = str(description["spec"]), str(description["split"])
        options = dict(description.get("options") or {})
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DatasetError(None, "the store's dataset description lacks its spec, split or options") from None
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind != "synthetic":
        return open_dataset(spec if root is None else f"{kind}:{root}", split, **options)
    _check_options(spec, options, {"root", "seed", "min_size", "max_size", "max_instances"})
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", split):  # it names generated folders
        raise DatasetError(None, f"the store's split {split!r} is not a plain name")
    num, config, recorded = _synthetic_params(arg, split, **options)
    where = Path(root) if root is not None else recorded
    if is_complete(where, split, num, config):
        return SyntheticDataset(where, split, num, config)  # complete: read, nothing generated
    if root is not None:
        raise DatasetError(root, f"not a complete generation of the store's synthetic:{num} split {split!r}")
    if max_samples is not None:
        num = max(1, min(num, int(max_samples)))
    return SyntheticDataset(regenerated_root(split, num, config), split, num, config)


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


def _open_synthetic(arg: str, split: str, **options: Any) -> Dataset:
    num, config, root = _synthetic_params(arg, split, **options)
    return SyntheticDataset(root, split, num, config)


def _synthetic_params(arg: str, split: str, root: str | Path | None = None, seed: int = 0,
                      **gen: Any) -> tuple[int, SyntheticConfig, Path]:
    """``(N, config, root)`` of ``synthetic:N`` with these options (the default root when none is given)."""
    try:
        num = int(arg) if arg else DEFAULT_SYNTHETIC_NUM
    except ValueError:
        raise DatasetError(None, f"synthetic:N needs an integer N, got {arg!r}") from None
    if num < 1:
        raise DatasetError(None, f"synthetic:N needs N ≥ 1, got {num}")
    try:
        for key in ("min_size", "max_size"):
            if key in gen:
                gen[key] = tuple(int(v) for v in gen[key])
        config = SyntheticConfig(seed=int(seed), **gen)
    except (TypeError, ValueError) as exc:
        raise DatasetError(None, f"synthetic options {gen | {'seed': seed}} are not valid ({exc})") from None
    root_p = Path(root) if root is not None else default_root(split, num, int(seed))
    return num, config, root_p
