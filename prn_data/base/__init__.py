"""Base panoptic networks (DESIGN §4; paper §3.2, §4.1): adapters that yield a panoptic prediction per image.

Contract (other modules rely on it):

- :class:`BasePrediction`: ``panoptic (h, w) int32`` at the *original* image size with ids
  ``category_id * 1000 + k`` (VOID = -1); ``segments: list[Segment]`` (``score`` optional);
  ``probs: (N_cl, h', w') float32 | None`` per-class probabilities at any resolution.
- ``open_base(spec, categories) -> BaseNetwork | None`` (``None`` for ``"none"``); a ``BaseNetwork`` has
  ``spec: str`` and ``predict(samples: list[Sample]) -> list[BasePrediction]`` (samples at original size).
- ``prn_data.base.encode.encode_base(pred, size, num_classes, params) -> dict`` resizes a prediction to the
  store resolution ``size = (h, w)`` and encodes PRN's inputs: ``instance (7, h, w) float32``,
  ``semantic (N_cl, ⌈h/4⌉, ⌈w/4⌉) float32``, ``panoptic (h, w) int32``, ``segments`` (list of dicts).
"""

from __future__ import annotations
