"""Predictions as COCO panoptic files: a PNG per image (``id = R + 256·G + 256²·B``, 0 = VOID) and one JSON
with the ``segments_info`` of every image and the dataset's categories (README, "Conventions"), the format
panopticapi's ``pq_compute`` scores. Predictions scored at the original image size are first resized back
nearest-exact (§4.2's resize undone)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from prn_data.panoptic_io import refresh_segments, write_rgb_ids
from prn_data.records import CategorySet, Segment
from prn_data.resize import resize_labels

ImageId = int | str
"""A COCO image id (an int in COCO's files, a string for datasets that name their images)."""


def to_original_size(panoptic: np.ndarray, segments: Sequence[Segment], orig_size: tuple[int, int]) -> tuple[np.ndarray, list[Segment]]:
    """Nearest-exact resize (:func:`prn_data.resize.resize_labels`) of a panoptic map to ``orig_size``;
    segment areas and boxes recomputed, vanished segments dropped."""
    orig_size = (int(orig_size[0]), int(orig_size[1]))
    if tuple(panoptic.shape) == orig_size:
        return panoptic, list(segments)
    pan = resize_labels(panoptic, orig_size)
    return pan, refresh_segments(pan, segments)


def coco_categories(categories: CategorySet) -> list[dict]:
    """COCO panoptic ``categories`` entries (id, name, isthing, supercategory, color)."""
    return [
        {"id": c.id, "name": c.name, "isthing": int(c.isthing), "supercategory": "", "color": list(c.color)}
        for c in categories
    ]


def write_panoptic_png(
    png_dir: str | Path,
    *,
    image_id: ImageId,
    file_name: str,
    panoptic: np.ndarray,
    segments: Sequence[Segment],
) -> dict:
    """Write one prediction's PNG into ``png_dir`` (named after ``file_name`` with a ``.png`` suffix;
    ``panoptic (h, w)`` int with VOID = −1) and return its COCO panoptic annotation."""
    png = Path(file_name).with_suffix(".png").name
    write_rgb_ids(Path(png_dir) / png, panoptic)
    return {"image_id": image_id, "file_name": png, "segments_info": [s.to_json() for s in segments]}


def write_panoptic_json(path: str | Path, annotations: Sequence[dict], categories: CategorySet) -> Path:
    """Write the COCO panoptic JSON of ``annotations`` (from :func:`write_panoptic_png`) to ``path``."""
    with open(path, "w") as f:
        json.dump({"annotations": list(annotations), "categories": coco_categories(categories)}, f)
    return Path(path)


def write_panoptic(
    out_dir: str | Path,
    items: Sequence[tuple[ImageId, str, np.ndarray, Sequence[Segment]]],
    categories: CategorySet,
    *,
    json_name: str = "panoptic.json",
) -> Path:
    """Write COCO panoptic predictions: ``out_dir/<json_name stem>/<file>.png`` and ``out_dir/<json_name>``.

    ``items``: ``(image_id, file_name, panoptic (h, w) int32 with VOID = −1, segments)`` per image; the
    PNG is named after ``file_name`` with a ``.png`` suffix. Returns the JSON's path."""
    out_dir = Path(out_dir)
    png_dir = out_dir / Path(json_name).stem
    png_dir.mkdir(parents=True, exist_ok=True)
    anns = [
        write_panoptic_png(png_dir, image_id=image_id, file_name=file_name, panoptic=pan, segments=segs)
        for image_id, file_name, pan, segs in items
    ]
    return write_panoptic_json(out_dir / json_name, anns, categories)


__all__ = [
    "ImageId",
    "to_original_size",
    "coco_categories",
    "write_panoptic_png",
    "write_panoptic_json",
    "write_panoptic",
]
