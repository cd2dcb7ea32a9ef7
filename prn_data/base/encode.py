"""Encoding a base network's prediction as PRN's inputs (paper §3.2 "Input Processing"; README "Conventions").

- ``instance (7, h, w) float32``: center heatmap (a Gaussian per predicted non-crowd thing segment, scaled
  by the segment's score when the base gives one), center offsets (dy, dx) and box offsets (top, bottom,
  left, right), computed by :func:`prn_data.targets.encode_instances` — the targets' own code.
- ``semantic (N_cl, ⌈h/4⌉, ⌈w/4⌉) float32``: class probabilities at 1/4 of the stored size, summing to 1 at
  every pixel. The base's own probabilities when it gives them (bilinear, antialiased when shrinking, then
  clipped at 0 and renormalised); otherwise one-hot of its panoptic labels sampled nearest-exact at 1/4.
  **VOID pixels get the uniform distribution 1/N_cl**: the base made no claim there, and a uniform vector
  keeps "probabilities sum to 1" true everywhere (a zero vector would look like a quantisation fault).
- ``panoptic (h, w) int32`` and ``segments`` (list of ``Segment.to_json()`` dicts) as predicted, resized.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BaseNetworkError, DatasetError
from ..panoptic_io import refresh_segments, semantic_from_panoptic
from ..records import IGNORE_LABEL
from ..resize import resize_labels
from ..targets import TargetParams, encode_instances
from .prediction import BasePrediction, check_probs


def quarter_size(size: tuple[int, int]) -> tuple[int, int]:
    """``(⌈h/4⌉, ⌈w/4⌉)``: the resolution of PRN's semantic input (§3.2)."""
    return math.ceil(size[0] / 4), math.ceil(size[1] / 4)


def resize_probs(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(C, h', w')`` probabilities to ``(C, *size)`` (half-pixel centres, antialiased
    when shrinking, as PIL does), then clipped at 0 and renormalised over C; a pixel whose mass is 0
    becomes uniform. Returns float32."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape[1:] != tuple(size):
        shrink = size[0] < probs.shape[1] or size[1] < probs.shape[2]
        if not shrink:
            # Enlarging needs no antialiasing: OpenCV's float bilinear (the same half-pixel formula as
            # torch's, within 2e-5) per class plane is ~1.6× faster than torch's 133-channel kernel.
            src = np.ascontiguousarray(probs)
            out = np.empty((src.shape[0],) + tuple(size), dtype=np.float32)
            for c in range(src.shape[0]):
                cv2.resize(src[c], (size[1], size[0]), dst=out[c], interpolation=cv2.INTER_LINEAR)
            return normalise_probs(out, inplace=True)
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(probs))[None]
            probs = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False,
                                  antialias=True)[0].numpy()
        return normalise_probs(probs, inplace=True)
    return normalise_probs(probs)


def normalise_probs(probs: np.ndarray, inplace: bool = False) -> np.ndarray:
    """Clip ``(C, h, w)`` at 0 and divide by the class sum; zero-mass pixels become uniform. float32.
    ``inplace`` reuses ``probs`` (float32, writable) instead of a copy."""
    probs = np.asarray(probs, dtype=np.float32)
    if not inplace or not probs.flags.writeable:
        probs = probs.copy()
    np.maximum(probs, 0.0, out=probs)
    total = probs.sum(axis=0, keepdims=True)
    empty = total <= 0
    if empty.any():
        total[empty] = 1.0
        np.divide(probs, total, out=probs)
        probs[:, empty[0]] = 1.0 / probs.shape[0]
    else:
        np.divide(probs, total, out=probs)
    return probs


def one_hot_probs(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(h, w)`` train ids (255 = VOID) → ``(num_classes, h, w) float32`` one-hot; VOID → uniform."""
    out = np.zeros((num_classes,) + labels.shape, dtype=np.float32)
    valid = labels != IGNORE_LABEL
    ys, xs = np.nonzero(valid)
    out[labels[valid].astype(np.int64), ys, xs] = 1.0
    out[:, ~valid] = 1.0 / num_classes
    return out


def encode_base(pred: BasePrediction, size: tuple[int, int], num_classes: int, params: TargetParams) -> dict:
    """Resize ``pred`` to the stored ``size = (h, w)`` and encode PRN's inputs (module docstring).

    ``params`` is a :class:`prn_data.targets.TargetParams` (its ``sigma`` sets the Gaussians). Returns
    ``{"instance": (7, h, w) float32, "semantic": (num_classes, ⌈h/4⌉, ⌈w/4⌉) float32,
    "panoptic": (h, w) int32, "segments": list[dict]}``.
    """
    size = (int(size[0]), int(size[1]))
    where = f"image {pred.image_id}" if pred.image_id else "base prediction"
    panoptic = resize_labels(np.asarray(pred.panoptic, dtype=np.int32), size)
    segments = refresh_segments(panoptic, pred.segments)
    scores = {s.id: float(s.score) for s in segments if s.score is not None}
    try:
        center, center_offset, box_offset, _ = encode_instances(panoptic, segments, params.sigma,
                                                                scores=scores or None, source=where)
    except DatasetError as exc:
        raise BaseNetworkError(str(exc)) from None
    instance = np.concatenate([center, center_offset, box_offset], axis=0).astype(np.float32, copy=False)

    qsize = quarter_size(size)
    if pred.probs is not None:
        check_probs(np.asarray(pred.probs), num_classes, where)
        semantic = resize_probs(pred.probs, qsize)
    else:
        labels = semantic_from_panoptic(resize_labels(panoptic, qsize), segments)
        if labels.size and (labels != IGNORE_LABEL).any() and int(labels[labels != IGNORE_LABEL].max()) >= num_classes:
            raise BaseNetworkError(f"{where}: a segment's train id exceeds the {num_classes} classes")
        semantic = one_hot_probs(labels, num_classes)
    return {
        "instance": instance,
        "semantic": semantic,
        "panoptic": panoptic.astype(np.int32, copy=False),
        "segments": [s.to_json() for s in segments],
    }


__all__ = ["encode_base", "quarter_size", "resize_probs", "normalise_probs", "one_hot_probs"]
