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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from prn_data.errors import DatasetError, PrnError
from prn_data.records import CategorySet, Segment

from .merge import postprocess, to_original_size, write_panoptic
from .ppgbf import PostProcessConfig
from .pq import pq_compute, pq_from_arrays

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


def _model_inputs(store, indices: Sequence[int], device: torch.device) -> tuple[dict, list[dict]]:
    """Stacked network inputs of ``indices`` (the training Batch's fields) and each sample's metadata."""
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
    batch = {k: torch.from_numpy(np.stack([x[k] for x in xs])).to(device) for k in ("image", "instance", "base_semantic")}
    return batch, metas


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
) -> Iterator[tuple[dict, tuple[np.ndarray, list[Segment]] | None]]:
    """Yield ``(meta, prn)`` per sample: ``meta`` holds the sample's ids, sizes, ``gt/`` and ``base/``
    panoptic maps and segments (store resolution); ``prn`` is PRN's post-processed ``(panoptic, segments)``
    at store resolution, or None when ``model`` is None."""
    device = torch.device(device)
    cfg = cfg or default_postprocess_config(store.attrs)
    for s in range(0, len(indices), batch):
        chunk = indices[s : s + batch]
        if model is None:
            for m in _store_metas(store, chunk):
                yield m, None
            continue
        inputs, metas = _model_inputs(store, chunk, device)
        with torch.no_grad():
            out = model(inputs["image"], inputs["instance"], inputs["base_semantic"])
        results = postprocess(out, store.categories, cfg, sizes=[m["size"] for m in metas])
        for m, r in zip(metas, results):
            yield m, r


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


class _Scorer:
    """Collects one prediction set (base or PRN) and scores it against a :class:`GroundTruth`."""

    def __init__(self, gt: GroundTruth, categories: CategorySet, out_dir: Path | None):
        self.gt, self.categories, self.out_dir = gt, categories, out_dir
        self.items: list = []
        self.files: list = []

    def add(self, meta: dict, panoptic: np.ndarray, segments: list[Segment]) -> None:
        if self.gt.mode == "original":
            panoptic, segments = to_original_size(panoptic, segments, meta["orig_size"])
        if self.out_dir is not None or self.gt.json is not None:
            image_id = meta["image_id"]
            ann = self.gt.annotations.get(str(image_id))
            if self.gt.json is not None and ann is None:
                raise DatasetError(self.gt.json, f"no ground truth for image id {image_id}")
            self.files.append((ann["image_id"] if ann else image_id, meta["file_name"], panoptic, segments))
        if self.gt.json is None:
            if self.gt.mode == "original":
                if not hasattr(self, "_keys"):
                    self._keys = {str(k): i for i, k in enumerate(self.gt.dataset.keys())}
                key = str(meta["image_id"])
                if key not in self._keys:
                    raise DatasetError(self.gt.where, f"no ground truth for image id {key}")
                sample = self.gt.dataset.load(self._keys[key])
                self.items.append((sample.panoptic, sample.segments, panoptic, segments))
            else:
                self.items.append((meta["gt/panoptic"], meta["gt/segments"], panoptic, segments))

    def score(self, name: str, tmp: Path) -> dict:
        out = self.out_dir / name if self.out_dir is not None else tmp / name
        if self.files:
            pred_json = write_panoptic(out, self.files, self.categories)
        if self.gt.json is None:
            return pq_from_arrays(self.items, self.categories)
        # panopticapi pairs every ground-truth image with a prediction: keep the store's images only.
        with open(self.gt.json) as f:
            full = json.load(f)
        ids = {str(f[0]) for f in self.files}
        full["annotations"] = [a for a in full["annotations"] if str(a["image_id"]) in ids]
        gt_json = tmp / f"{name}_gt.json"
        gt_json.write_text(json.dumps(full))
        return pq_compute(gt_json, self.gt.png_dir, pred_json, out / "panoptic", categories=self.categories)


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
) -> dict:
    """``prn evaluate``: score the base network (and PRN from ``checkpoint``) over the store's done samples.

    Returns ``{"base": ..., "prn": ... (absent with base_only), "scored": "original" | "store",
    "ground_truth": str, "images": n}``, each result in pq_compute's form. With ``out``, predictions are
    written as COCO panoptic files under ``out/base`` and ``out/prn`` and the dict as ``out/results.json``.
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
    base = _Scorer(truth, cats, out_dir)
    prn = _Scorer(truth, cats, out_dir)
    for n, (meta, result) in enumerate(predict(model, store, indices, dev, batch, cfg), 1):
        base.add(meta, meta["base/panoptic"], _segments(meta["base/segments"], cats))
        if result is not None:
            prn.add(meta, *result)
        if on_progress is not None:
            on_progress(n, len(indices))
    with tempfile.TemporaryDirectory() as tmp:
        results: dict = {"base": base.score("base", Path(tmp))}
        if model is not None:
            results["prn"] = prn.score("prn", Path(tmp))
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
    try:
        items = [(m["gt/panoptic"], m["gt/segments"], pan, segs) for m, (pan, segs) in predict(model, store, indices, device, batch, cfg)]
    finally:
        model.train(was)
    return summary(pq_from_arrays(items, store.categories))


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
