"""Write any base network's predictions in COCO panoptic format (what ``files:`` reads back, and what
panopticapi's ``pq_compute`` scores): ``OUT/<stem>.png`` + ``OUT/predictions.json`` + ``OUT/<stem>.npz``
(``probs (N_cl, h, w) float32``, only where the base gives probabilities).

PNG ids are prn's own (``category_id * 1000 + k``; VOID → 0), which the ``files:`` reader keeps as they are,
so an export round-trips exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..datasets import Dataset
from ..panoptic_io import write_rgb_ids
from .prediction import BaseNetwork, BasePrediction


def _json_image_id(image_id: str) -> int | str:
    # COCO's own JSON uses integer image ids; keep them integers so official tools match gt and pred.
    return int(image_id) if str(image_id).isdigit() else str(image_id)


def write_prediction(out_dir: Path, stem: str, pred: BasePrediction) -> dict:
    """Write one prediction's PNG (and npz); return its ``annotations[]`` entry."""
    png_name = f"{stem}.png"
    write_rgb_ids(out_dir / png_name, pred.panoptic)
    if pred.probs is not None:
        np.savez_compressed(out_dir / f"{stem}.npz", probs=np.asarray(pred.probs, dtype=np.float32))
    return {
        "image_id": _json_image_id(pred.image_id),
        "file_name": png_name,
        "segments_info": [s.to_json() for s in pred.segments],
    }


def export_predictions(dataset: Dataset, base: BaseNetwork, out_dir: str | Path, *, limit: int | None = None,
                       batch: int = 4, on_progress: Callable[[int], None] | None = None) -> Path:
    """Run ``base`` over ``dataset`` (first ``limit`` samples) and write COCO panoptic files to ``out_dir``.

    Returns the JSON path. ``on_progress(n)`` is called after each batch with the number of samples done.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    annotations = []
    for start in range(0, n, batch):
        samples = [dataset.load(i) for i in range(start, min(n, start + batch))]
        preds = base.predict(samples)
        for sample, pred in zip(samples, preds):
            pred.image_id = pred.image_id or str(sample.image_id)
            annotations.append(write_prediction(out, Path(sample.file_name).stem, pred))
        if on_progress is not None:
            on_progress(len(samples))
    cats = [c.to_json() for c in dataset.categories]
    data = {"annotations": annotations, "categories": cats, "base": getattr(base, "spec", "")}
    path = out / "predictions.json"
    path.write_text(json.dumps(data))
    return path


__all__ = ["export_predictions", "write_prediction"]
