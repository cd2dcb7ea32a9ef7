"""Scoring panoptic predictions against the ground truth as they come (PQ, panopticapi's definition; paper
§4.2, Tables 1–2), for ``prn evaluate`` and the trainer's validation.

Where the ground truth is (:func:`locate_ground_truth`):

- ``"original"`` — at each image's original size against the dataset's own ground-truth files: COCO
  panoptic JSON + PNGs (scored file to file, exactly as panopticapi), or any other dataset the store's
  description can reopen (its samples at original size). Predictions are resized back nearest-exact.
- ``"store"`` — when those files are not at hand: at store resolution against the store's ``gt/``.

:class:`StreamedScorer` reduces each image to its PQ counts as it comes, optionally writing the predictions
as COCO panoptic files (:mod:`prn_model.predictions`) on the way.
"""

from __future__ import annotations

import json
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from prn_data.datasets import Dataset, open_recorded
from prn_data.errors import DatasetError, PrnError
from prn_data.pq import (
    FILE_VOID,
    MEMORY_VOID,
    ImageStats,
    PngIdReader,
    PQStat,
    SegmentTable,
    pq_average,
    pq_image,
    worker_count,
)
from prn_data.records import CategorySet, Segment
from prn_data.store import Store

from .predictions import to_original_size, write_panoptic_json, write_panoptic_png


@dataclass
class GroundTruth:
    """Where predictions are scored: ``mode`` "original" (``json`` + ``png_dir`` COCO files, or a reopened
    ``dataset``) or "store"; ``where`` says it in words for the table."""

    mode: str
    where: str
    json: Path | None = None
    png_dir: Path | None = None
    dataset: Dataset | None = None
    annotations: dict = field(default_factory=dict)


def locate_ground_truth(store: Store, gt: str | Path | None = None) -> GroundTruth:
    """The dataset's own ground truth of ``store`` (``gt``: the dataset's root somewhere else), or the
    store's ``gt/`` when neither can be found. An explicit ``gt`` that cannot be read is an error.

    The store's ``dataset`` description comes from whoever made the store: the paths it names are only
    read, and only where they exist (:func:`prn_data.datasets.open_recorded`; a synthetic dataset missing
    there is generated again under ``cache/regenerated/``)."""
    desc = dict(store.attrs.get("dataset") or {})
    try:
        ds = None
        if gt is not None:
            gt = Path(gt)
            if not gt.exists():
                raise DatasetError(gt, "ground-truth folder does not exist")
            ds = open_recorded(desc, root=gt, max_samples=len(store))
            desc = ds.describe()
        files = _coco_files(desc)
        if files is None and desc:
            ds = ds or open_recorded(desc, max_samples=len(store))
            files = _coco_files(ds.describe())
        if files is not None:
            j, p = files
            with open(j) as f:
                anns = {str(a["image_id"]): a for a in json.load(f)["annotations"]}
            return GroundTruth("original", f"original size, {j}", json=j, png_dir=p, annotations=anns)
        if ds is not None:
            return GroundTruth("original", f"original size, dataset {desc.get('spec', desc.get('name'))}", dataset=ds)
    except PrnError:
        if gt is not None:
            raise
    except (OSError, KeyError, TypeError, ValueError):
        if gt is not None:
            raise DatasetError(gt, "not a readable ground truth for this store's dataset") from None
    return GroundTruth("store", "store resolution, the store's gt/")


def _coco_files(desc: dict) -> tuple[Path, Path] | None:
    """The COCO panoptic JSON and PNG folder a dataset description names, when both exist."""
    g = desc.get("gt") or {}
    if isinstance(g, dict) and g.get("format") == "coco-panoptic" and g.get("json") and g.get("png_dir"):
        j, p = Path(g["json"]), Path(g["png_dir"])
        if j.is_file() and p.is_dir():
            return j, p
    return None


class StreamedScorer:
    """Scores prediction sets (``names``, e.g. base and PRN) image by image as they come, so memory stays
    bounded by a few images whatever the split's size: each image's ground truth is read once for all sets,
    each prediction is resized, written (with ``out_dir``) and reduced to its PQ counts in worker threads,
    and only the counts are kept. Counts are summed in the order the file-to-file scorer uses (the
    ground-truth JSON's, else the samples'), so the figures are bit-identical to scoring the written files
    with :func:`prn_data.pq.pq_compute`. The sets named in ``native`` come at original size already (a base
    network's own predictions) and are scored as they are, never resized."""

    def __init__(self, gt: GroundTruth, categories: CategorySet, names: Sequence[str], *,
                 out_dir: Path | None = None, workers: int | None = None, native: Sequence[str] = ()):
        self.gt, self.categories, self.out_dir, self.names = gt, categories, out_dir, tuple(names)
        self.native = frozenset(native)
        self.cat_ids = frozenset(c.id for c in categories)
        self.reader = PngIdReader()  # ground-truth PNGs decoded into per-thread reusable buffers
        self.anns: dict[str, dict[int, dict]] = {n: {} for n in self.names}
        self.stats: dict[str, dict[int, ImageStats]] = {n: {} for n in self.names}
        # file-to-file scoring sums in the ground-truth JSON's order; in-memory scoring in the samples'
        self.rank = {k: i for i, k in enumerate(gt.annotations)} if gt.json is not None else {}
        self.lookup = {str(k): i for i, k in enumerate(gt.dataset.keys())} if gt.dataset is not None and gt.json is None else {}
        self.n_workers = worker_count(workers)
        self.pool = ThreadPoolExecutor(self.n_workers)
        self.pending: deque[Future[None]] = deque()
        self.added = 0
        if out_dir is not None:
            for n in self.names:
                (out_dir / n / "panoptic").mkdir(parents=True, exist_ok=True)

    def add(self, meta: dict, preds: dict[str, tuple[np.ndarray, Sequence[Segment]]]) -> None:
        """Queue one sample's predictions ``{name: (panoptic (h, w) int VOID = −1, segments)}`` at store
        resolution (the ``native`` sets at original size); blocks while too many samples are in flight."""
        key = str(meta["image_id"])
        known = self.rank or self.lookup
        if self.gt.mode == "original" and key not in known:
            raise DatasetError(self.gt.json or self.gt.where, f"no ground truth for image id {key}")
        order = self.rank[key] if self.rank else self.added
        self.pending.append(self.pool.submit(self._score, meta, preds, order, self.added))
        self.added += 1
        while len(self.pending) > 2 * self.n_workers:
            self.pending.popleft().result()

    def _truth(self, meta: dict) -> tuple[np.ndarray, SegmentTable, int]:
        if self.gt.json is not None:
            ann = self.gt.annotations[str(meta["image_id"])]
            ids = self.reader.read(self.gt.png_dir / ann["file_name"], "gt")
            return ids, SegmentTable.from_segments(ann["segments_info"], with_area=True), FILE_VOID
        if self.gt.mode == "original":
            sample = self.gt.dataset.load(self.lookup[str(meta["image_id"])])
            return np.asarray(sample.panoptic), SegmentTable.from_segments(sample.segments), MEMORY_VOID
        return np.asarray(meta["gt/panoptic"]), SegmentTable.from_segments(meta["gt/segments"]), MEMORY_VOID

    def _score(self, meta: dict, preds: dict, order: int, seq: int) -> None:
        gt_ids, gt_table, void = self._truth(meta)
        # the written JSON carries the ground truth's own image id (its type too), so panopticapi pairs them
        image_id = self.gt.annotations[str(meta["image_id"])]["image_id"] if self.rank else meta["image_id"]
        for name, (pan, segs) in preds.items():
            if self.gt.mode == "original" and name not in self.native:
                pan, segs = to_original_size(pan, segs, meta["orig_size"])
            if self.out_dir is not None:
                png_dir = self.out_dir / name / "panoptic"
                self.anns[name][seq] = write_panoptic_png(png_dir, image_id=image_id, file_name=str(meta["file_name"]),
                                                          panoptic=pan, segments=segs)
            # as file-to-file scoring, a listed segment missing from the map is an error only for files
            where = None
            if self.gt.json is not None:
                where = str(png_dir / self.anns[name][seq]["file_name"]) if self.out_dir is not None else f"{name} prediction of image {meta['image_id']}"
            # against file ids (VOID = 0) the prediction's VOID = −1 counts as VOID: pq_image maps it per run
            self.stats[name][order] = pq_image(gt_ids, gt_table, pan, SegmentTable.from_segments(segs), void=void,
                                               negative_void=void == FILE_VOID, categories=self.cat_ids, name=where)

    def close(self) -> None:
        """Stop without results (after an error): queued samples are dropped, running ones finish."""
        self.pool.shutdown(wait=True, cancel_futures=True)

    def finish(self) -> dict[str, dict]:
        """Wait for the queued samples; write each set's ``panoptic.json`` (with ``out_dir``); pq_compute-form
        results per name."""
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        results = {}
        for name in self.names:
            if self.out_dir is not None:
                # the samples' order, whatever order the threads finished in
                anns = [self.anns[name][k] for k in sorted(self.anns[name])]
                write_panoptic_json(self.out_dir / name / "panoptic.json", anns, self.categories)
            stat = PQStat()
            for k in sorted(self.stats[name]):
                stat.add(self.stats[name][k])
            results[name] = pq_average(stat, self.categories)
        return results


__all__ = ["GroundTruth", "StreamedScorer", "locate_ground_truth"]
