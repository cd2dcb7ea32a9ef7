"""The ``files:DIR`` adapter: predictions exported in COCO panoptic format (README "Base networks (`--base`)").

``DIR`` holds one JSON file with ``annotations[]`` (``image_id``, ``file_name``, ``segments_info``), as
detectron2's COCO panoptic evaluator, DETR's panoptic post-processor, panopticapi's converters and
``prn base export`` write, and one PNG per image (id = R + 256·G + 256²·B, 0 = VOID) at the image's original
size, found at ``DIR/<file_name>`` or ``DIR/<json stem>/<file_name>``. An optional ``DIR/<png stem>.npz``
holds ``probs (N_cl, h, w)`` in the dataset's train-id order. Category ids are the dataset's. Predictions are
matched to images by ``image_id`` or, failing that, by file-name stem.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import BaseNetworkError, DatasetError
from ..panoptic_io import read_rgb_ids
from ..records import CategorySet, Sample
from .prediction import BasePrediction, check_probs, renumber


class FilesBase:
    """Reads exported predictions; the JSON index is loaded lazily (once per process)."""

    def __init__(self, directory: str | Path, categories: CategorySet, *, allow_missing: bool = False):
        self.dir = Path(directory)
        self.categories = categories
        self.allow_missing = allow_missing
        self.spec = f"files:{directory}"
        self._index: tuple[dict, dict, Path] | None = None
        self._json_path()  # a wrong directory fails when the base is opened, before any work

    def _json_path(self) -> Path:
        if not self.dir.is_dir():
            raise BaseNetworkError(f"{self.dir}: prediction directory does not exist")
        jsons = sorted(self.dir.glob("*.json"))
        if len(jsons) != 1:
            raise BaseNetworkError(f"{self.dir}: expected exactly one COCO panoptic JSON, found {len(jsons)}")
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
        self._index = (by_id, by_stem, json_path)
        return self._index

    def _find(self, sample: Sample) -> dict | None:
        by_id, by_stem, _ = self._load_index()
        ann = by_id.get(str(sample.image_id))
        if ann is None:
            ann = by_stem.get(Path(sample.file_name).stem)
        return ann

    def _png(self, ann: dict, json_path: Path) -> Path:
        for cand in (self.dir / ann["file_name"], self.dir / json_path.stem / ann["file_name"]):
            if cand.is_file():
                return cand
        return self.dir / ann["file_name"]

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
