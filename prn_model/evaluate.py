"""Evaluation of PRN against its base network over a store (paper §4.2, Tables 1–2).

For every done sample: PRN runs on the store's inputs (:func:`predict`), its outputs are post-processed
(§3.5, :mod:`prn_model.merge`), and PRN's panoptic result and the base network's (``base/`` in the store)
are scored with panopticapi's PQ as they come (:mod:`prn_model.scoring`), at the original image size
against the dataset's own ground truth when it is at hand, else at store resolution against the store's
``gt/``.

The trainer's validation (:func:`validation`) scores PRN alone at store resolution (:func:`evaluate_model`).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch

from prn_data.errors import PrnError
from prn_data.records import CategorySet, Segment
from prn_data.store import Store, open_store

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .data import sample_from_store
from .devices import resolve_device
from .merge import postprocess
from .ppgbf import PostProcessConfig
from .scoring import GroundTruth, StreamedScorer, locate_ground_truth

T = TypeVar("T")
R = TypeVar("R")

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


def _read_inputs(store: Store, indices: Sequence[int]) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Stacked host-side network inputs of ``indices`` (the training Batch's fields) and each sample's
    metadata; no device work, so it can run in a reader thread."""
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


def _store_metas(store: Store, indices: Sequence[int]) -> list[dict]:
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
    store: Store,
    indices: Sequence[int],
    *,
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
    label_divisor = int(store.attrs["label_divisor"])
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
        results = postprocess(out, store.categories, cfg, sizes=[m["size"] for m in metas], label_divisor=label_divisor)
        for m, r in zip(metas, results):
            yield m, r


def _read_ahead(read: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
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


def evaluate_store(
    store_url: str,
    *,
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
    store = open_store(store_url)
    if not store.has_base:
        raise PrnError(f"{store_url}: the store holds no base-network prediction (built with --base none)")
    model = None
    if not base_only:
        if checkpoint is None:
            raise PrnError("give --checkpoint, or --base-only to score the base network alone")
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
    ev = StreamedScorer(truth, cats, ("base",) if model is None else ("base", "prn"), out_dir=out_dir, workers=workers)
    try:
        for n, (meta, result) in enumerate(predict(model, store, indices, device=dev, batch=batch, cfg=cfg), 1):
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
    store: str | Path | Store,
    *,
    device: torch.device | str = "cpu",
    limit: int | None = None,
    cfg: PostProcessConfig | None = None,
    batch: int = 1,
) -> dict[str, float]:
    """PRN's PQ / SQ / RQ / PQ_th / PQ_st (percent) at store resolution against the store's ``gt/`` — the
    trainer's validation (:func:`validation`). ``store``: a URL or an open store."""
    store = open_store(store) if isinstance(store, (str, Path)) else store
    indices = [int(i) for i in np.nonzero(store.done)[0]][: limit or None]
    was = model.training
    model.eval()
    ev = StreamedScorer(GroundTruth("store", "store resolution"), store.categories, ("prn",))
    try:
        for meta, result in predict(model, store, indices, device=device, batch=batch, cfg=cfg):
            ev.add(meta, {"prn": result})
        return summary(ev.finish()["prn"])
    finally:
        ev.close()
        model.train(was)


def validation(cfg: TrainConfig) -> Callable[[torch.nn.Module, torch.device], dict[str, float]] | None:
    """The trainer's validation of a run (``prn_model.train.train(..., validate=...)``): PRN's PQ / SQ / RQ /
    PQ_th / PQ_st on ``cfg.data.val_store`` (its first ``cfg.val_limit`` done samples; 0 = all) by
    :func:`evaluate_model`; None when the run has no validation store."""
    if not cfg.data.val_store:
        return None
    store, limit = cfg.data.val_store, cfg.val_limit or None

    def validate(model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        return evaluate_model(model, store, device=device, limit=limit)

    return validate


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
    "validation",
]
