"""Predictions as COCO panoptic files, in the one layout every prediction of prn is written in
(:mod:`prn_data.base.export`; README "Predictions on disk"): ``OUT/panoptic.json`` with the ``segments_info``
of every image and the dataset's categories, ``OUT/panoptic/<stem>.png`` (``id = R + 256·G + 256²·B``,
0 = VOID) — the format panopticapi's ``pq_compute`` scores and ``files:OUT`` reads. Predictions scored or
written at the original image size are first resized back nearest-exact (§4.2's resize undone). Instance
scores are written clamped to [0, 1] (PRN's is the center heatmap's peak, which can overshoot 1, §3.5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from prn_data.base.export import (
    PANOPTIC_DIR,
    PANOPTIC_JSON,
    PanopticWriter,
    coco_categories,
    write_panoptic_json,
    write_panoptic_png,
)
from prn_data.panoptic_io import refresh_segments
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


def write_panoptic(
    out_dir: str | Path,
    items: Sequence[tuple[ImageId, str, np.ndarray, Sequence[Segment]]],
    categories: CategorySet,
) -> Path:
    """Write COCO panoptic predictions in prn's layout: ``out_dir/panoptic/<file>.png`` and
    ``out_dir/panoptic.json``.

    ``items``: ``(image_id, file_name, panoptic (h, w) int32 with VOID = −1, segments)`` per image; the
    PNG is named after ``file_name`` with a ``.png`` suffix. Returns the JSON's path."""
    with PanopticWriter(out_dir, categories) as writer:
        for image_id, file_name, pan, segs in items:
            writer.add(image_id=image_id, file_name=file_name, panoptic=pan, segments=segs)
    return writer.json_path


__all__ = [
    "ImageId",
    "PANOPTIC_DIR",
    "PANOPTIC_JSON",
    "PanopticWriter",
    "to_original_size",
    "coco_categories",
    "write_panoptic_png",
    "write_panoptic_json",
    "write_panoptic",
]
