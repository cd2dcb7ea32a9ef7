"""Evaluation of PRN against its base network over a store (paper §4.2, Tables 1–2).

For every done sample: PRN runs on the store's inputs (:func:`predict`), its outputs are post-processed
(§3.5, :mod:`prn_model.merge`), and PRN's panoptic result and the base network's (``base/`` in the store)
are scored with panopticapi's PQ as they come (:mod:`prn_model.scoring`), at the original image size
against the dataset's own ground truth when it is at hand, else at store resolution against the store's
``gt/``.

The base is scored from its own predictions at their native (original) size when they are files at hand
(``files:`` or ``coco-results:`` specs, the store's own or given), as the paper's protocol scores a base
network (§4.2); otherwise from the store's ``base/`` maps after their round trip through store resolution,
which loses detail (README "Evaluation"). Results say which (``base_predictions``).

The trainer's validation (:func:`validation`) scores PRN alone at store resolution (:func:`evaluate_model`).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch

from prn_data.base import open_base, split_spec
from prn_data.errors import BaseNetworkError, PrnError
from prn_data.records import CategorySet, Sample, Segment
from prn_data.store import Store, open_store

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .data import sample_from_store
from .devices import resolve_device, with_threads
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


def postprocess_config(store_attrs: dict, *settings: dict | None) -> PostProcessConfig:
    """:func:`default_postprocess_config` of the store with each mapping of ``settings`` applied in turn
    (a run's ``postprocess:`` section, then command-line flags; None values and mappings skipped)."""
    cfg = default_postprocess_config(store_attrs)
    for d in settings:
        changes = {k: v for k, v in (d or {}).items() if v is not None}
        if changes:
            try:
                cfg = replace(cfg, **changes)
            except (TypeError, ValueError) as exc:
                raise PrnError(f"post-processing settings: {exc}") from None
    return cfg


NATIVE_KINDS = ("files", "coco-results")


def native_base(store: Store, truth: GroundTruth, spec: str | None = None):
    """The base network whose predictions at original size are scored instead of the store's ``base/`` maps,
    or None. ``spec``: None — the store's own base when it is a ``files:`` / ``coco-results:`` one whose files
    are at hand and the ground truth is at original size; ``"store"`` — never; a ``files:`` /
    ``coco-results:`` spec — that one (an error if it cannot be opened or the ground truth is only the
    store's)."""
    if spec == "store":
        return None
    given = spec is not None
    spec = spec if given else str(store.attrs.get("base") or "none")
    try:
        kind = split_spec(spec)[0]
    except BaseNetworkError:
        if given:
            raise
        return None
    if kind not in NATIVE_KINDS:
        if given:
            raise PrnError(f"base predictions {spec!r}: expected files:… or coco-results:… (or 'store')")
        return None
    if truth.mode != "original":
        if given:
            raise PrnError(f"base predictions {spec!r}: the dataset's ground truth at original size is not at "
                           "hand (give --gt), so the base can only be scored at store resolution")
        return None
    try:
        return open_base(spec, store.categories)
    except PrnError:
        if given:
            raise
        return None  # the store's recorded files are not here: fall back to the round-tripped maps


def _native_prediction(base, meta: dict) -> tuple[np.ndarray, list[Segment]]:
    """``base``'s own prediction of a store sample at its original size."""
    h, w = meta["orig_size"]
    stub = Sample(image=np.zeros((0, 0, 3), np.uint8), panoptic=np.zeros((0, 0), np.int32), segments=[],
                  image_id=str(meta["image_id"]), file_name=str(meta["file_name"]), orig_size=(int(h), int(w)))
    pred = base.predict([stub])[0]
    return pred.panoptic, pred.segments


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


@with_threads
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
    post: dict | None = None,
    base_predictions: str | None = None,
) -> dict:
    """``prn evaluate``: score the base network (and PRN from ``checkpoint``) over the store's done samples.

    Post-processing: ``cfg`` as given, else the store's defaults, then the checkpoint's ``postprocess:``
    settings, then ``post`` (PostProcessConfig fields). ``base_predictions``: see :func:`native_base`.

    Returns ``{"base": ..., "prn": ... (absent with base_only), "scored": "original" | "store",
    "ground_truth": str, "base_predictions": "native predictions (SPEC)" | "store resolution", "images": n}``,
    each result in pq_compute's form. With ``out``, predictions are
    written as COCO panoptic files under ``out/base`` and ``out/prn`` and the dict as ``out/results.json``.
    Predictions are scored as they come (``workers`` threads; memory bounded by a few images), never held
    for the whole split. ``threads``: torch's intra-op threads meanwhile (:func:`~prn_model.devices.with_threads`;
    README "Parallelism"), recorded as ``"threads"``.
    """
    store = open_store(store_url)
    if not store.has_base:
        raise PrnError(f"{store_url}: the store holds no base-network prediction (built with --base none)")
    model = None
    if not base_only:
        if checkpoint is None:
            raise PrnError("give --checkpoint, or --base-only to score the base network alone")
        dev = resolve_device(device)
        model, run_cfg = load_checkpoint(checkpoint, dev)
    else:
        dev = torch.device("cpu")
        run_cfg = None
    if cfg is None:
        cfg = postprocess_config(store.attrs, None if run_cfg is None else run_cfg.postprocess, post)
    indices = [int(i) for i in np.nonzero(store.done)[0]]
    if limit:
        indices = indices[:limit]
    if not indices:
        raise PrnError(f"{store_url}: no finished samples to evaluate")
    truth = locate_ground_truth(store, gt)
    native = native_base(store, truth, base_predictions)
    out_dir = Path(out) if out is not None else None
    cats = store.categories
    ev = StreamedScorer(truth, cats, ("base",) if model is None else ("base", "prn"), out_dir=out_dir, workers=workers,
                        native=("base",) if native is not None else ())
    try:
        for n, (meta, result) in enumerate(predict(model, store, indices, device=dev, batch=batch, cfg=cfg), 1):
            if native is not None:
                preds = {"base": _native_prediction(native, meta)}
            else:
                preds = {"base": (meta["base/panoptic"], _segments(meta["base/segments"], cats))}
            if result is not None:
                preds["prn"] = result
            ev.add(meta, preds)
            if on_progress is not None:
                on_progress(n, len(indices))
        results: dict = ev.finish()
    finally:
        ev.close()
    results |= {"scored": truth.mode, "ground_truth": truth.where, "images": len(indices),
                "threads": torch.get_num_threads(),
                "base_predictions": "store resolution" if native is None else f"native predictions ({native.spec})",
                "per_class_table": per_class_rows(results, cats)}
    return write_results(out_dir, results)


def write_results(out_dir: Path | None, results: dict) -> dict:
    """``results`` as ``out_dir/results.json`` (folder made; numpy floats as floats) when ``out_dir`` is
    given; returns ``results``."""
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=float))
    return results


def format_comparison(results: dict) -> str:
    """One table: base, PRN and their difference in PQ / SQ / RQ / PQ_th / PQ_st (percent)."""
    head = f"{'':8s}" + "".join(f"{k.upper():>8s}" for k in SUMMARY_KEYS)
    lines = [f"scored at {results['ground_truth']} ({results['images']} images); "
             f"base: {results.get('base_predictions', 'store resolution')}", head]
    b = summary(results["base"])
    lines.append(f"{'base':8s}" + "".join(f"{b[k]:8.2f}" for k in SUMMARY_KEYS))
    if "prn" in results:
        p = summary(results["prn"])
        lines.append(f"{'PRN':8s}" + "".join(f"{p[k]:8.2f}" for k in SUMMARY_KEYS))
        lines.append(f"{'diff':8s}" + "".join(f"{p[k] - b[k]:+8.2f}" for k in SUMMARY_KEYS))
    return "\n".join(lines)


def per_class_rows(results: dict, categories: CategorySet) -> list[dict]:
    """Per-class PQ of the base and PRN side by side (paper Tables 1–2 by class): one row per class that
    occurs in the ground truth or either prediction (pq_compute-form ``results["base"]`` / ``["prn"]``
    with their ``counts``), ``{"id", "name", "isthing", "base": {"pq", "sq", "rq"}, "prn": {…}, "diff"}``
    in percent, ``diff`` = PRN − base PQ; sorted by ``diff``, largest gain first (ties by name). Without
    PRN: the base's rows, best PQ first."""
    names = [n for n in ("base", "prn") if n in results]
    present: set[int] = set()
    for n in names:
        present |= {int(c) for c in results[n].get("counts", {})}
    rows = []
    for c in categories:
        if c.id not in present:
            continue
        row: dict = {"id": c.id, "name": c.name, "isthing": bool(c.isthing)}
        for n in names:
            per = results[n]["per_class"]
            pc = per.get(c.id) or per.get(str(c.id)) or {}
            row[n] = {k: 100 * float(pc.get(k, 0.0)) for k in ("pq", "sq", "rq")}
        if len(names) == 2:
            row["diff"] = row["prn"]["pq"] - row["base"]["pq"]
        rows.append(row)
    rows.sort(key=lambda r: (-(r["diff"] if len(names) == 2 else r[names[0]]["pq"]), r["name"]))
    return rows


def format_per_class(rows: Sequence[dict]) -> str:
    """The per-class table of :func:`per_class_rows`: class, kind, base PQ / SQ / RQ, PRN PQ / SQ / RQ and
    the PQ difference (percent), in the rows' order."""
    with_prn = bool(rows) and "prn" in rows[0]
    head = f"{'class':24s} {'kind':5s} {'base PQ':>8s} {'SQ':>6s} {'RQ':>6s}"
    if with_prn:
        head += f" {'PRN PQ':>8s} {'SQ':>6s} {'RQ':>6s} {'diff':>7s}"
    lines = [f"per class ({len(rows)} present), " + ("PRN's largest gain first" if with_prn else "best first"), head]
    for r in rows:
        b = r["base"]
        line = f"{r['name'][:24]:24s} {'thing' if r['isthing'] else 'stuff':5s} {b['pq']:8.2f} {b['sq']:6.2f} {b['rq']:6.2f}"
        if with_prn:
            p = r["prn"]
            line += f" {p['pq']:8.2f} {p['sq']:6.2f} {p['rq']:6.2f} {r['diff']:+7.2f}"
        lines.append(line)
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
        post = postprocess_config(open_store(store).attrs, cfg.postprocess) if cfg.postprocess else None
        return evaluate_model(model, store, device=device, limit=limit, cfg=post)

    return validate


__all__ = [
    "SUMMARY_KEYS",
    "summary",
    "default_postprocess_config",
    "postprocess_config",
    "native_base",
    "predict",
    "GroundTruth",
    "locate_ground_truth",
    "evaluate_store",
    "write_results",
    "format_comparison",
    "per_class_rows",
    "format_per_class",
    "evaluate_model",
    "validation",
]
