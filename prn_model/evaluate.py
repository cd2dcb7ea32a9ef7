"""Evaluation of PRN against its base network over a store (paper §4.2, Tables 1–2).

For every done sample: PRN runs on the store's inputs, its outputs are post-processed (§3.5,
:mod:`prn_model.merge`), and PRN's panoptic result and the base network's (``base/`` in the store) are
scored with panopticapi's PQ (:mod:`prn_model.pq`). Where the ground truth is scored:

- ``"original"`` — at each image's original size against the dataset's own ground-truth files: COCO
  panoptic JSON + PNGs (scored file to file, exactly as panopticapi), or any other dataset the store's
  description can reopen (its samples at original size). Predictions are resized back nearest-exact.
- ``"store"`` — when those files are not at hand: at store resolution against the store's ``gt/``.
"""

from __future__ import annotations

import json
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from prn_data.errors import DatasetError, PrnError
from prn_data.records import CategorySet, Segment

from .merge import postprocess, to_original_size, write_panoptic_json, write_panoptic_png
from .ppgbf import PostProcessConfig
from .pq import FILE_VOID, MEMORY_VOID, ImageStats, PQStat, SegmentTable, pq_average, pq_image, read_png_ids

SUMMARY_KEYS = ("pq", "sq", "rq", "pq_th", "pq_st")


def summary(results: dict) -> dict[str, float]:
    """``{"pq", "sq", "rq", "pq_th", "pq_st"}`` in percent from a pq_compute-form result."""
    return {
        "pq": 100 * results["All"]["pq"],
        "sq": 100 * results["All"]["sq"],
        "rq": 100 * results["All"]["rq"],
        "pq_th": 100 * results["Things"]["pq"],
        "pq_st": 100 * results["Stuff"]["pq"],
    }


def default_postprocess_config(store_attrs: dict) -> PostProcessConfig:
    """§3.5 defaults with the dataset's minimum stuff area: Cityscapes 2048 px (at 1024×2048), otherwise
    COCO's 4096 px (at 640×800), scaled down by the canvas area for stores of smaller images (a 4096-px
    floor would wipe out all stuff of a 64×96 demo store)."""
    name = str(store_attrs.get("dataset_name") or store_attrs.get("dataset", {}).get("name", ""))
    area, ref = (2048, 1024 * 2048) if name.startswith("cityscapes") else (4096, 640 * 800)
    canvas = store_attrs.get("canvas")
    if canvas:
        area = int(round(area * min(1.0, int(canvas[0]) * int(canvas[1]) / ref)))
    return PostProcessConfig(stuff_area=area)


def _segments(items: Sequence[dict], categories: CategorySet) -> list[Segment]:
    return [Segment.from_json(d, categories) for d in items]


def _read_inputs(store, indices: Sequence[int]) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Stacked host-side network inputs of ``indices`` (the training Batch's fields) and each sample's
    metadata; no device work, so it can run in a reader thread."""
    from .data import sample_from_store

    xs, metas = [], []
    for i in indices:
        raw = store.read_sample(int(i), crop=False)
        xs.append(sample_from_store(raw, int(i)))
        h, w = raw["size"]
        metas.append(
            {
                "index": int(i),
                "size": (int(h), int(w)),
                "orig_size": tuple(int(v) for v in raw["orig_size"]),
                "image_id": raw["image_id"],
                "file_name": raw["file_name"],
                "gt/panoptic": np.asarray(raw["gt/panoptic"])[:h, :w],
                "gt/segments": raw["gt/segments"],
                "base/panoptic": np.asarray(raw["base/panoptic"])[:h, :w] if "base/panoptic" in raw else None,
                "base/segments": raw.get("base/segments"),
            }
        )
    return {k: np.stack([x[k] for x in xs]) for k in ("image", "instance", "base_semantic")}, metas


def _store_metas(store, indices: Sequence[int]) -> list[dict]:
    metas = []
    for i in indices:
        raw = store.read_sample(int(i), arrays=["orig_size", "image_id", "file_name", "gt/panoptic", "gt/segments", "base/panoptic", "base/segments"])
        metas.append(
            {
                "index": int(i),
                "size": tuple(int(v) for v in raw["size"]),
                "orig_size": tuple(int(v) for v in raw["orig_size"]),
                "image_id": raw["image_id"],
                "file_name": raw["file_name"],
                "gt/panoptic": np.asarray(raw["gt/panoptic"]),
                "gt/segments": raw["gt/segments"],
                "base/panoptic": np.asarray(raw["base/panoptic"]),
                "base/segments": raw["base/segments"],
            }
        )
    return metas


def predict(
    model: torch.nn.Module | None,
    store,
    indices: Sequence[int],
    device: torch.device | str = "cpu",
    batch: int = 1,
    cfg: PostProcessConfig | None = None,
    prefetch: bool | None = None,
) -> Iterator[tuple[dict, tuple[np.ndarray, list[Segment]] | None]]:
    """Yield ``(meta, prn)`` per sample: ``meta`` holds the sample's ids, sizes, ``gt/`` and ``base/``
    panoptic maps and segments (store resolution); ``prn`` is PRN's post-processed ``(panoptic, segments)``
    at store resolution, or None when ``model`` is None. ``prefetch``: read the next batch in a thread while this one runs;
    by default only off the CPU (on 2 CPU cores the reader only competes with the network: 31.5 → 33–35 ms
    per demo image at batch 1, no gain at batch 4)."""
    device = torch.device(device)
    if prefetch is None:
        prefetch = device.type != "cpu"
    cfg = cfg or default_postprocess_config(store.attrs)
    chunks = [indices[s : s + batch] for s in range(0, len(indices), batch)]
    read = (lambda c: _store_metas(store, c)) if model is None else (lambda c: _read_inputs(store, c))
    for got in _read_ahead(read, chunks) if prefetch else map(read, chunks):
        if model is None:
            for m in got:
                yield m, None
            continue
        host, metas = got
        inputs = {name: torch.from_numpy(v).to(device) for name, v in host.items()}
        with torch.no_grad():
            out = model(inputs["image"], inputs["instance"], inputs["base_semantic"])
        results = postprocess(out, store.categories, cfg, sizes=[m["size"] for m in metas])
        for m, r in zip(metas, results):
            yield m, r


def _read_ahead(read: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
    """``read(item)`` for each item in order, the next one read by a thread while the caller works on this
    one (with an accelerator the store read, ~11 ms per demo image here, would otherwise dominate)."""
    if not items:
        return
    with ThreadPoolExecutor(1) as reader:
        ahead = reader.submit(read, items[0])
        for nxt in items[1:]:
            got = ahead.result()
            ahead = reader.submit(read, nxt)
            yield got
        yield ahead.result()


@dataclass
class GroundTruth:
    """Where predictions are scored: ``mode`` "original" (``json`` + ``png_dir`` COCO files, or a reopened
    ``dataset``) or "store"; ``where`` says it in words for the table."""

    mode: str
    where: str
    json: Path | None = None
    png_dir: Path | None = None
    dataset: Any = None
    annotations: dict = field(default_factory=dict)


def locate_ground_truth(store, gt: str | Path | None = None) -> GroundTruth:
    """The dataset's own ground truth of ``store`` (``gt``: the dataset's root somewhere else), or the
    store's ``gt/`` when neither can be found. An explicit ``gt`` that cannot be read is an error."""
    from prn_data.datasets import open_dataset, open_described

    desc = dict(store.attrs.get("dataset") or {})
    try:
        if gt is not None:
            gt = Path(gt)
            if not gt.exists():
                raise DatasetError(gt, "ground-truth folder does not exist")
            ds = open_dataset(f"{desc.get('name', 'coco').split('-')[0]}:{gt}", desc.get("split", store.attrs.get("split")), **desc.get("options", {}))
            desc = ds.describe()
        else:
            ds = None
        g = desc.get("gt") or {}
        if g.get("format") == "coco-panoptic" and g.get("json") and g.get("png_dir"):
            j, p = Path(g["json"]), Path(g["png_dir"])
            if j.is_file() and p.is_dir():
                with open(j) as f:
                    anns = {str(a["image_id"]): a for a in json.load(f)["annotations"]}
                return GroundTruth("original", f"original size, {j}", json=j, png_dir=p, annotations=anns)
        if desc:
            ds = ds or open_described(desc)
            return GroundTruth("original", f"original size, dataset {desc.get('spec', desc.get('name'))}", dataset=ds)
    except PrnError:
        if gt is not None:
            raise
    except (OSError, KeyError, ValueError):
        if gt is not None:
            raise DatasetError(gt, "not a readable ground truth for this store's dataset") from None
    return GroundTruth("store", "store resolution, the store's gt/")


class _Evaluation:
    """Scores prediction sets (``names``, e.g. base and PRN) image by image as they come, so memory stays
    bounded by a few images whatever the split's size: each image's ground truth is read once for all sets,
    each prediction is resized, written (with ``out_dir``) and reduced to its PQ counts in worker threads,
    and only the counts are kept. Counts are summed in the order the file-to-file scorer uses (the
    ground-truth JSON's, else the samples'), so the figures are bit-identical to scoring the written files
    with :func:`prn_model.pq.pq_compute`."""

    def __init__(self, gt: GroundTruth, categories: CategorySet, out_dir: Path | None, names: Sequence[str], workers: int | None = None):
        from .pq import _workers

        self.gt, self.categories, self.out_dir, self.names = gt, categories, out_dir, tuple(names)
        self.cat_ids = [c.id for c in categories]
        self.anns: dict[str, dict[int, dict]] = {n: {} for n in self.names}
        self.stats: dict[str, dict[int, ImageStats]] = {n: {} for n in self.names}
        # file-to-file scoring sums in the ground-truth JSON's order; in-memory scoring in the samples'
        self.rank = {k: i for i, k in enumerate(gt.annotations)} if gt.json is not None else {}
        self.lookup = {str(k): i for i, k in enumerate(gt.dataset.keys())} if gt.dataset is not None and gt.json is None else {}
        self.n_workers = _workers(workers)
        self.pool = ThreadPoolExecutor(self.n_workers)
        self.pending: deque = deque()
        self.added = 0
        if out_dir is not None:
            for n in self.names:
                (out_dir / n / "panoptic").mkdir(parents=True, exist_ok=True)

    def add(self, meta: dict, preds: dict[str, tuple[np.ndarray, Sequence[Segment]]]) -> None:
        """Queue one sample's predictions ``{name: (panoptic (h, w) int VOID = −1, segments)}`` at store
        resolution; blocks while too many samples are in flight."""
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
            ids = read_png_ids(self.gt.png_dir / ann["file_name"])
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
            if self.gt.mode == "original":
                pan, segs = to_original_size(pan, segs, meta["orig_size"])
            if self.out_dir is not None:
                png_dir = self.out_dir / name / "panoptic"
                self.anns[name][seq] = write_panoptic_png(png_dir, image_id, str(meta["file_name"]), pan, segs)
            # as file-to-file scoring, a listed segment missing from the map is an error only for files
            where = None
            if self.gt.json is not None:
                where = str(png_dir / self.anns[name][seq]["file_name"]) if self.out_dir is not None else f"{name} prediction of image {meta['image_id']}"
            pred_ids = np.where(pan < 0, FILE_VOID, pan) if void == FILE_VOID else pan
            self.stats[name][order] = pq_image(gt_ids, gt_table, pred_ids, SegmentTable.from_segments(segs), void=void, categories=self.cat_ids, name=where)

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


def evaluate_store(
    store_url: str,
    checkpoint: str | Path | None = None,
    out: str | Path | None = None,
    device: str = "cpu",
    batch: int = 1,
    gt: str | Path | None = None,
    base_only: bool = False,
    cfg: PostProcessConfig | None = None,
    limit: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> dict:
    """``prn evaluate``: score the base network (and PRN from ``checkpoint``) over the store's done samples.

    Returns ``{"base": ..., "prn": ... (absent with base_only), "scored": "original" | "store",
    "ground_truth": str, "images": n}``, each result in pq_compute's form. With ``out``, predictions are
    written as COCO panoptic files under ``out/base`` and ``out/prn`` and the dict as ``out/results.json``.
    Predictions are scored as they come (``workers`` threads; memory bounded by a few images), never held
    for the whole split.
    """
    from prn_data.store import open_store

    store = open_store(store_url)
    if not store.has_base:
        raise PrnError(f"{store_url}: the store holds no base-network prediction (built with --base none)")
    model = None
    if not base_only:
        if checkpoint is None:
            raise PrnError("give --checkpoint, or --base-only to score the base network alone")
        from .train import load_checkpoint, resolve_device

        dev = resolve_device(device)
        model, _ = load_checkpoint(checkpoint, dev)
    else:
        dev = torch.device("cpu")
    indices = [int(i) for i in np.nonzero(store.done)[0]]
    if limit:
        indices = indices[:limit]
    if not indices:
        raise PrnError(f"{store_url}: no finished samples to evaluate")
    truth = locate_ground_truth(store, gt)
    out_dir = Path(out) if out is not None else None
    cats = store.categories
    ev = _Evaluation(truth, cats, out_dir, ("base",) if model is None else ("base", "prn"), workers)
    try:
        for n, (meta, result) in enumerate(predict(model, store, indices, dev, batch, cfg), 1):
            preds = {"base": (meta["base/panoptic"], _segments(meta["base/segments"], cats))}
            if result is not None:
                preds["prn"] = result
            ev.add(meta, preds)
            if on_progress is not None:
                on_progress(n, len(indices))
        results: dict = ev.finish()
    finally:
        ev.close()
    results |= {"scored": truth.mode, "ground_truth": truth.where, "images": len(indices)}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=float))
    return results


def format_comparison(results: dict) -> str:
    """One table: base, PRN and their difference in PQ / SQ / RQ / PQ_th / PQ_st (percent)."""
    head = f"{'':8s}" + "".join(f"{k.upper():>8s}" for k in SUMMARY_KEYS)
    lines = [f"scored at {results['ground_truth']} ({results['images']} images)", head]
    b = summary(results["base"])
    lines.append(f"{'base':8s}" + "".join(f"{b[k]:8.2f}" for k in SUMMARY_KEYS))
    if "prn" in results:
        p = summary(results["prn"])
        lines.append(f"{'PRN':8s}" + "".join(f"{p[k]:8.2f}" for k in SUMMARY_KEYS))
        lines.append(f"{'diff':8s}" + "".join(f"{p[k] - b[k]:+8.2f}" for k in SUMMARY_KEYS))
    return "\n".join(lines)


def evaluate_model(
    model: torch.nn.Module,
    store: str | Any,
    device: torch.device | str = "cpu",
    limit: int | None = None,
    cfg: PostProcessConfig | None = None,
    batch: int = 1,
) -> dict[str, float]:
    """PRN's PQ / SQ / RQ / PQ_th / PQ_st (percent) at store resolution against the store's ``gt/`` — the
    trainer's validation hook. ``store``: a URL or an open store."""
    from prn_data.store import open_store

    store = open_store(store) if isinstance(store, (str, Path)) else store
    indices = [int(i) for i in np.nonzero(store.done)[0]][: limit or None]
    was = model.training
    model.eval()
    ev = _Evaluation(GroundTruth("store", "store resolution"), store.categories, None, ("prn",))
    try:
        for meta, result in predict(model, store, indices, device, batch, cfg):
            ev.add(meta, {"prn": result})
        return summary(ev.finish()["prn"])
    finally:
        ev.close()
        model.train(was)


__all__ = [
    "SUMMARY_KEYS",
    "summary",
    "default_postprocess_config",
    "predict",
    "GroundTruth",
    "locate_ground_truth",
    "evaluate_store",
    "format_comparison",
    "evaluate_model",
]
