"""The ``coco-results:INSTANCES_JSON,SEMANTIC_DIR`` adapter: a two-stage network's separate outputs merged
into a panoptic segmentation by the heuristic of Kirillov et al. (Panoptic FPN; the rule panopticapi's
``combine_semantic_and_instance_predictions`` applies; paper §1, §4.1).

- ``INSTANCES_JSON``: COCO instance-segmentation results, a list (or ``{"annotations": [...]}``) of
  ``{"image_id", "category_id", "segmentation": RLE {"size": [h, w], "counts"}, "score"}``; masks are
  decoded with pycocotools.
- ``SEMANTIC_DIR/<image file stem>.png``: a single-channel map of dataset category ids at the image's size;
  0 and 255 are "no label". Thing classes in it are ignored (stuff only comes from it).

Merge: instances with ``score ≥ confidence`` by decreasing score; one whose mask is more than ``overlap``
covered by earlier instances is dropped, else it takes its uncovered pixels. Then each stuff class takes its
still-free pixels if there are at least ``stuff_area`` of them. Everything else is VOID. Defaults 0.5 /
4096 px / 0.5, set in the spec: ``coco-results:I.json,SEM_DIR,overlap=0.5,stuff_area=4096,confidence=0.5``.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..errors import BaseNetworkError
from ..panoptic_io import refresh_segments
from ..records import VOID, CategorySet, IdAllocator, Sample, Segment
from .prediction import BasePrediction
from .spec import parse_options

NO_LABEL = (0, 255)


class CocoResultsBase:
    """Reads instance results and semantic PNGs; the JSON is loaded lazily (once per process)."""

    def __init__(self, instances_json: str | Path, semantic_dir: str | Path, categories: CategorySet, *,
                 overlap: float = 0.5, stuff_area: int = 4096, confidence: float = 0.5, allow_missing: bool = False):
        self.instances_json = Path(instances_json)
        self.semantic_dir = Path(semantic_dir)
        self.categories = categories
        self.overlap, self.stuff_area, self.confidence = float(overlap), int(stuff_area), float(confidence)
        self.allow_missing = allow_missing
        self.spec = (f"coco-results:{instances_json},{semantic_dir},overlap={self.overlap},"
                     f"stuff_area={self.stuff_area},confidence={self.confidence}")
        if not self.instances_json.is_file():
            raise BaseNetworkError(f"{self.instances_json}: instance results JSON does not exist")
        if not self.semantic_dir.is_dir():
            raise BaseNetworkError(f"{self.semantic_dir}: semantic prediction directory does not exist")
        self._by_image: dict[str, list[dict]] | None = None

    @staticmethod
    def from_spec(spec: str, rest: str, categories: CategorySet, *, allow_missing: bool = False) -> "CocoResultsBase":
        parts = rest.split(",")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise BaseNetworkError(f"base spec {spec!r}: expected coco-results:INSTANCES_JSON,SEMANTIC_DIR")
        opts = parse_options(",".join(parts[2:]), spec)
        kwargs = {}
        for key, value in opts.items():
            if key not in ("overlap", "stuff_area", "confidence"):
                raise BaseNetworkError(f"base spec {spec!r}: unknown option {key!r} "
                                       "(known: overlap, stuff_area, confidence)")
            try:
                kwargs[key] = int(value) if key == "stuff_area" else float(value)
            except ValueError:
                raise BaseNetworkError(f"base spec {spec!r}: {key}={value!r} is not a number") from None
        return CocoResultsBase(parts[0], parts[1], categories, allow_missing=allow_missing, **kwargs)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_by_image"] = None
        return state

    def _index(self) -> dict[str, list[dict]]:
        if self._by_image is None:
            try:
                data = json.loads(self.instances_json.read_text())
                anns = data["annotations"] if isinstance(data, dict) else data
                by_image: dict[str, list[dict]] = defaultdict(list)
                for a in anns:
                    by_image[str(a["image_id"])].append(a)
            except (ValueError, KeyError, TypeError) as exc:
                raise BaseNetworkError(f"{self.instances_json}: not a COCO instance results JSON ({exc!r})") from None
            self._by_image = dict(by_image)
        return self._by_image

    def predict(self, samples: list[Sample]) -> list[BasePrediction]:
        """One merged prediction per sample, at the sample's original size."""
        return [self.predict_one(s) for s in samples]

    def _semantic(self, sample: Sample) -> np.ndarray | None:
        path = self.semantic_dir / f"{Path(sample.file_name).stem}.png"
        if not path.is_file():
            return None
        try:
            with Image.open(path) as im:
                sem = np.asarray(im)
        except Exception as exc:
            raise BaseNetworkError(f"{path}: unreadable semantic PNG ({exc})") from None
        if sem.ndim != 2:
            raise BaseNetworkError(f"{path}: semantic PNG must have one channel of category ids, got shape {sem.shape}")
        if sem.shape != tuple(sample.orig_size):
            raise BaseNetworkError(f"{path}: semantic map is {sem.shape[0]}×{sem.shape[1]}, "
                                   f"image {sample.image_id} is {sample.orig_size[0]}×{sample.orig_size[1]}")
        bad = sorted(set(np.unique(sem).tolist()) - set(NO_LABEL) - {c.id for c in self.categories})
        if bad:
            raise BaseNetworkError(f"{path}: values {bad[:5]} are not category ids of the dataset")
        return sem

    def predict_one(self, sample: Sample) -> BasePrediction:
        where = f"{self.instances_json} (image {sample.image_id})"
        size = tuple(int(v) for v in sample.orig_size)
        sem = self._semantic(sample)
        if sem is None:
            if self.allow_missing:
                return BasePrediction.empty(size, str(sample.image_id))
            raise BaseNetworkError(f"{self.semantic_dir}: no semantic prediction for image {sample.image_id} "
                                   f"(expected {Path(sample.file_name).stem}.png)")
        anns = sorted(self._index().get(str(sample.image_id), []), key=lambda a: -float(a.get("score", 0.0)))
        pan = np.full(size, VOID, dtype=np.int32)
        taken = np.zeros(size, dtype=bool)
        segments: list[Segment] = []
        ids = IdAllocator()
        for a in anns:
            score = float(a.get("score", 0.0))
            if score < self.confidence:
                continue
            cid = int(a.get("category_id", -1))
            if cid not in self.categories or not self.categories.by_id(cid).isthing:
                raise BaseNetworkError(f"{where}: instance of category {cid}, not a thing class of the dataset")
            rle = a.get("segmentation")
            if not isinstance(rle, dict) or "counts" not in rle:
                raise BaseNetworkError(f"{where}: instance segmentation must be an RLE dict (no polygons)")
            if [int(v) for v in rle["size"]] != list(size):
                raise BaseNetworkError(f"{where}: RLE size {rle['size']} differs from the image's {list(size)}")
            counts = rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]
            with warnings.catch_warnings():
                # pycocotools' NumPy-2 copy-keyword DeprecationWarning, raised on every decode
                warnings.simplefilter("ignore", DeprecationWarning)
                mask = mask_utils.decode({"size": rle["size"], "counts": counts}).astype(bool)
            area = int(mask.sum())
            if area == 0:
                continue
            if int((mask & taken).sum()) / area > self.overlap:
                continue
            free = mask & ~taken
            if not free.any():
                continue
            cat = self.categories.by_id(cid)
            try:
                sid = ids.thing(cid)
            except ValueError as exc:  # too many instances of one class for the label divisor
                raise BaseNetworkError(f"{where}: {exc}") from None
            pan[free] = sid
            taken |= free
            segments.append(Segment(sid, cid, cat.train_id, True, score=score))
        for c in self.categories:
            if c.isthing:
                continue
            m = (sem == c.id) & ~taken
            if int(m.sum()) < self.stuff_area or not m.any():
                continue
            sid = ids.stuff(c.id)
            pan[m] = sid
            taken |= m
            segments.append(Segment(sid, c.id, c.train_id, False))
        return BasePrediction(pan, refresh_segments(pan, segments), None, str(sample.image_id))


__all__ = ["CocoResultsBase"]
