"""The one layout of every panoptic prediction prn writes (README "Predictions on disk"): ``prn base export``,
``prn evaluate --out`` (under ``OUT/base`` and ``OUT/prn``) and ``prn refine`` all write

- ``OUT/panoptic.json``: COCO panoptic JSON, ``annotations[]`` (``image_id``, ``file_name``,
  ``segments_info``) in the images' order and the dataset's ``categories``;
- ``OUT/panoptic/<stem>.png``: one PNG per image at its original size, ``id = R + 256·G + 256²·B``, 0 = VOID;
- ``OUT/panoptic/<stem>.npz``: ``probs (N_cl, h, w) float32`` beside its PNG, only for a base that gives
  class probabilities.

This is the ground truth's own COCO layout (``panoptic_val2017.json`` beside ``panoptic_val2017/``), so
``prn pq GT.json GT_DIR OUT/panoptic.json OUT/panoptic`` (and panopticapi's ``pq_compute``) score it and
``files:OUT`` reads it back. PNG ids are prn's own (``category_id * 1000 + k``; VOID → 0), which the
``files:`` reader keeps as they are, so an export round-trips exactly.

Instance scores are written clamped to [0, 1] (:func:`clamp_score`): PRN's score is the center heatmap's
value at the instance's center (§3.5), a regression output that can overshoot 1.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..datasets import Dataset
from ..errors import PrnError
from ..panoptic_io import write_rgb_ids
from ..records import CategorySet, Segment
from .prediction import BaseNetwork, BasePrediction

PANOPTIC_JSON = "panoptic.json"
"""The JSON of a prediction folder."""
PANOPTIC_DIR = "panoptic"
"""The folder of its PNGs (and npz probabilities), beside the JSON."""


def json_image_id(image_id: int | str) -> int | str:
    """COCO's own JSON uses integer image ids; a digit string becomes an int (``"000000142238"`` →
    142238) so official tools pair ground truth and prediction."""
    return int(image_id) if isinstance(image_id, str) and image_id.isdigit() else image_id


def clamp_score(score: float | None) -> float | None:
    """``score`` clamped to [0, 1] (None and NaN stay None)."""
    if score is None or math.isnan(float(score)):
        return None
    return min(1.0, max(0.0, float(score)))


def segment_json(segment: Segment) -> dict:
    """``segment.to_json()`` with its score clamped to [0, 1]."""
    d = segment.to_json()
    if "score" in d:
        score = clamp_score(d["score"])
        if score is None:
            del d["score"]
        else:
            d["score"] = score
    return d


def coco_categories(categories: CategorySet) -> list[dict]:
    """COCO panoptic ``categories`` entries (id, name, isthing, supercategory, color)."""
    return [
        {"id": c.id, "name": c.name, "isthing": int(c.isthing), "supercategory": "", "color": list(c.color)}
        for c in categories
    ]


def png_name(file_name: str) -> str:
    """The PNG name of an image: its file name's stem + ``.png`` (folders dropped). A name with no stem
    (empty, ``.``, ``..``, a bare folder) is a :class:`PrnError`: file names come from datasets and stores
    made by others."""
    base = Path(str(file_name)).name
    if base in ("", ".", ".."):
        raise PrnError(f"image file name {file_name!r} has no stem to name its prediction PNG after")
    return Path(base).with_suffix(".png").name


def write_panoptic_png(png_dir: str | Path, *, image_id: int | str, file_name: str, panoptic: np.ndarray,
                       segments: Sequence[Segment], probs: np.ndarray | None = None) -> dict:
    """Write one image's PNG (``panoptic (h, w)`` int, VOID = −1) into ``png_dir`` as
    :func:`png_name` (``file_name``), and ``probs`` beside it as ``.npz`` when given; return its
    ``annotations[]`` entry (``image_id`` as given, scores clamped)."""
    png_dir = Path(png_dir)
    name = png_name(file_name)
    write_rgb_ids(png_dir / name, panoptic)
    if probs is not None:
        np.savez_compressed(png_dir / Path(name).with_suffix(".npz"), probs=np.asarray(probs, dtype=np.float32))
    return {"image_id": image_id, "file_name": name, "segments_info": [segment_json(s) for s in segments]}


def write_panoptic_json(path: str | Path, annotations: Iterable[dict], categories: CategorySet,
                        **extra: object) -> Path:
    """Write the COCO panoptic JSON of ``annotations`` (from :func:`write_panoptic_png`) and ``categories``
    (plus ``extra`` top-level keys) to ``path``, atomically (a temporary file, then renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write('{"annotations": [')
        for i, ann in enumerate(annotations):
            f.write(("," if i else "") + json.dumps(ann))
        f.write('], "categories": ' + json.dumps(coco_categories(categories)))
        for k, v in extra.items():
            f.write(f", {json.dumps(k)}: {json.dumps(v)}")
        f.write("}")
    os.replace(tmp, path)
    return path


def _listed_pngs(json_path: Path) -> set[str]:
    """PNG names a previous ``panoptic.json`` at ``json_path`` lists (plain names only); empty if none or
    unreadable."""
    try:
        with open(json_path) as f:
            anns = json.load(f).get("annotations", [])
        names = {str(a["file_name"]) for a in anns}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return set()
    return {n for n in names if n and Path(n).name == n and n not in (".", "..")}


class PanopticWriter:
    """Writes predictions in the layout of this module as they come, in constant memory: each image's PNG
    at once, its annotation appended to a temporary JSON-lines file, and ``OUT/panoptic.json`` assembled
    from that file by :meth:`close` (so a folder never holds a JSON that lists PNGs not yet written).

    ``extra``: more top-level keys of the JSON (e.g. ``base``: the base spec of an export).
    Two images with the same PNG name are a :class:`PrnError` (never is one overwritten by the other). Over an
    earlier ``panoptic.json``, :meth:`close` removes the PNGs it listed that this run did not write. Use as a
    context manager; on an exception the JSON is not written.
    """

    def __init__(self, out_dir: str | Path, categories: CategorySet, **extra: object):
        self.out = Path(out_dir)
        self.png_dir = self.out / PANOPTIC_DIR
        self.png_dir.mkdir(parents=True, exist_ok=True)
        self.categories = categories
        self.extra = extra
        self.count = 0
        self._lines = tempfile.TemporaryFile("w+", dir=self.out, prefix=".panoptic-", suffix=".jsonl")
        self._names: set[str] = set()
        self._previous = _listed_pngs(self.json_path)

    @property
    def json_path(self) -> Path:
        return self.out / PANOPTIC_JSON

    def add(self, *, image_id: int | str, file_name: str, panoptic: np.ndarray, segments: Sequence[Segment],
            probs: np.ndarray | None = None) -> dict:
        """Write one image's prediction (original size, VOID = −1); returns its annotation."""
        name = png_name(file_name)
        if name in self._names:
            raise PrnError(f"two images (the second: id {image_id!r}, file {file_name!r}) would both be written "
                           f"as {self.png_dir / name}")
        self._names.add(name)
        ann = write_panoptic_png(self.png_dir, image_id=json_image_id(image_id), file_name=file_name,
                                 panoptic=panoptic, segments=segments, probs=probs)
        self._lines.write(json.dumps(ann) + "\n")
        self.count += 1
        return ann

    def close(self) -> Path:
        """Write ``panoptic.json`` (annotations in the order added); returns its path."""
        self._lines.seek(0)
        path = write_panoptic_json(self.json_path, (json.loads(line) for line in self._lines), self.categories,
                                   **self.extra)
        self._lines.close()
        # PNGs an earlier run listed and this one did not write would be stale beside the new JSON; only
        # names that JSON listed are removed, never other files in the folder
        for name in self._previous - self._names:
            for stale in (self.png_dir / name, (self.png_dir / name).with_suffix(".npz")):
                if stale.is_file() and not stale.is_symlink():
                    stale.unlink()
        return path

    def __enter__(self) -> "PanopticWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._lines.close()


def export_predictions(dataset: Dataset, base: BaseNetwork, out_dir: str | Path, *, limit: int | None = None,
                       batch: int = 4, on_progress: Callable[[int], None] | None = None) -> Path:
    """Run ``base`` over ``dataset`` (first ``limit`` samples) and write its predictions to ``out_dir`` in
    this module's layout. Returns the JSON path. ``on_progress(n)`` is called after each batch with the
    number of samples done."""
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    with PanopticWriter(out_dir, dataset.categories, base=getattr(base, "spec", "")) as writer:
        for start in range(0, n, batch):
            samples = [dataset.load(i) for i in range(start, min(n, start + batch))]
            preds: list[BasePrediction] = base.predict(samples)
            for sample, pred in zip(samples, preds):
                writer.add(image_id=pred.image_id or str(sample.image_id), file_name=sample.file_name,
                           panoptic=pred.panoptic, segments=pred.segments, probs=pred.probs)
            if on_progress is not None:
                on_progress(len(samples))
    return writer.json_path


__all__ = ["PANOPTIC_JSON", "PANOPTIC_DIR", "PanopticWriter", "clamp_score", "coco_categories",
           "export_predictions", "json_image_id", "png_name", "segment_json", "write_panoptic_json",
           "write_panoptic_png"]
