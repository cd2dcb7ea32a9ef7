"""The ``files:PATH`` adapter: predictions exported in COCO panoptic format (README "Base networks (`--base`)"
and "Predictions on disk").

``PATH`` is a folder or its JSON file. The folder holds one COCO panoptic JSON with ``annotations[]``
(``image_id``, ``file_name``, ``segments_info``) and one PNG per image (id = R + 256·G + 256²·B, 0 = VOID) at
the image's original size. Where they are:

- prn's layout (:mod:`.export`: ``prn base export``, ``prn evaluate --out``, ``prn refine``):
  ``DIR/panoptic.json`` + ``DIR/panoptic/<file_name>``; ``panoptic.json`` wins when the folder holds other
  JSON files too;
- otherwise the folder's only JSON, its PNGs at ``DIR/<json stem>/<file_name>`` or ``DIR/<file_name>`` (the
  flat ``predictions.json`` + PNGs of exports before that layout, and what detectron2, DETR and panopticapi's
  converters write);
- ``PATH`` a JSON file: that JSON, its PNGs at ``<json stem>/`` beside it or in its folder.

An optional ``<png stem>.npz`` beside a PNG holds ``probs (N_cl, h, w)`` in the dataset's train-id order.
Category ids are the dataset's. Predictions are matched to images by ``image_id`` or, failing that, by
file-name stem.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import BaseNetworkError, DatasetError
from ..panoptic_io import read_rgb_ids
from ..records import CategorySet, Sample
from .export import PANOPTIC_JSON
from .prediction import BasePrediction, check_probs, renumber


class FilesBase:
    """Reads exported predictions; the JSON index is loaded lazily (once per process)."""

    def __init__(self, directory: str | Path, categories: CategorySet, *, allow_missing: bool = False):
        self.dir = Path(directory)
        self.categories = categories
        self.allow_missing = allow_missing
        self.spec = f"files:{directory}"
        self._index: tuple[dict, dict, Path] | None = None
        self._file_categories: list[dict] | None = None
        self._json_path()  # a wrong directory fails when the base is opened, before any work

    def _json_path(self) -> Path:
        if self.dir.is_file() and self.dir.suffix.lower() == ".json":
            return self.dir
        if not self.dir.is_dir():
            raise BaseNetworkError(f"{self.dir}: prediction directory does not exist")
        if (self.dir / PANOPTIC_JSON).is_file():
            return self.dir / PANOPTIC_JSON
        jsons = sorted(self.dir.glob("*.json"))
        if len(jsons) != 1:
            raise BaseNetworkError(f"{self.dir}: expected {PANOPTIC_JSON} or exactly one COCO panoptic JSON, "
                                   f"found {len(jsons)}")
        return jsons[0]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_index"] = None  # workers rebuild it rather than receive a large pickle
        return state

    def _load_index(self) -> tuple[dict, dict, Path]:
        if self._index is not None:
            return self._index
        json_path = self._json_path()
        try:
            data = json.loads(json_path.read_text())
            anns = data["annotations"] if isinstance(data, dict) else data
            by_id = {str(a["image_id"]): a for a in anns}
            by_stem = {Path(a["file_name"]).stem: a for a in anns}
        except (ValueError, KeyError, TypeError) as exc:
            raise BaseNetworkError(f"{json_path}: not a COCO panoptic prediction JSON ({exc!r})") from None
        cats = data.get("categories") if isinstance(data, dict) else None
        self._file_categories = list(cats) if isinstance(cats, list) and cats else None
        self._index = (by_id, by_stem, json_path)
        return self._index

    @property
    def json_path(self) -> Path:
        """The prediction JSON this adapter reads."""
        return self._json_path()

    def file_categories(self) -> list[dict] | None:
        """The ``categories`` the JSON lists (COCO dicts with ``id``, ``isthing``, ``name``), or None when it
        lists none (detectron2's and DETR's files do not)."""
        self._load_index()
        return self._file_categories

    def _find(self, sample: Sample) -> dict | None:
        by_id, by_stem, _ = self._load_index()
        ann = by_id.get(str(sample.image_id))
        if ann is None:
            ann = by_stem.get(Path(sample.file_name).stem)
        return ann

    def _png(self, ann: dict, json_path: Path) -> Path:
        name = str(ann["file_name"])
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BaseNetworkError(f"{json_path}: file_name {name!r} of image {ann.get('image_id')} leaves the "
                                   "prediction folder")
        paths = [json_path.parent / json_path.stem / name, json_path.parent / name]
        for cand in paths:
            if cand.is_file():
                return cand
        # Missing everywhere: name the place of prn's layout (or the flat one for a foreign JSON).
        return paths[0] if (json_path.parent / json_path.stem).is_dir() else paths[1]

    def predict(self, samples: list[Sample]) -> list[BasePrediction]:
        """One prediction per sample at the sample's original size."""
        return [self.predict_one(s) for s in samples]

    def predict_one(self, sample: Sample) -> BasePrediction:
        ann = self._find(sample)
        orig = tuple(int(v) for v in sample.orig_size)
        if ann is None:
            if self.allow_missing:
                return BasePrediction.empty(orig, str(sample.image_id))
            raise BaseNetworkError(f"{self.dir}: no prediction for image {sample.image_id} ({sample.file_name})")
        _, _, json_path = self._load_index()
        png = self._png(ann, json_path)
        where = f"{png} (image {sample.image_id})"
        try:
            ids = read_rgb_ids(png)
        except DatasetError as exc:
            if self.allow_missing and not png.exists():
                return BasePrediction.empty(orig, str(sample.image_id))
            raise BaseNetworkError(str(exc)) from None
        if ids.shape != orig:
            raise BaseNetworkError(f"{where}: prediction is {ids.shape[0]}×{ids.shape[1]}, "
                                   f"image is {orig[0]}×{orig[1]}")
        pan, segments = renumber(ids, ann.get("segments_info", []), self.categories, where)
        probs = None
        npz = png.with_suffix(".npz")
        if npz.is_file():
            try:
                with np.load(npz) as f:
                    probs = np.asarray(f["probs"], dtype=np.float32)
            except (KeyError, ValueError, OSError) as exc:
                raise BaseNetworkError(f"{npz}: unreadable probability file, expected an array 'probs' "
                                       f"({exc})") from None
            check_probs(probs, len(self.categories), f"{npz} (image {sample.image_id})")
        return BasePrediction(pan, segments, probs, str(sample.image_id))


__all__ = ["FilesBase"]
