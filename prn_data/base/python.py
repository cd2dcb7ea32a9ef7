"""The ``python:module:factory`` adapter: a user's PyTorch model as the base network (README "Base networks
(`--base`)").

``factory()`` (called with no arguments, once per process) returns ``(model, categories)``:

- ``model``: a ``torch.nn.Module`` (put in eval mode and moved to the device) or any callable, called as
  ``model(images)`` with ``images`` a list of ``(3, h, w) float32`` RGB tensors in 0..255 on the device (sizes
  may differ within a batch). It returns one dict per image:

  - ``"panoptic"``: ``(h, w)`` integer tensor or array of segment ids at the image's size; 0 or negative
    = VOID;
  - ``"segments"``: list of ``{"id": int, "category_id": int, "score": float (optional)}``, ``category_id``
    a dataset category id from ``categories``;
  - ``"probs"`` (optional): ``(len(categories), h', w')`` class probabilities (after softmax), any
    resolution, channel j ↔ ``categories[j]``.
- ``categories``: the dataset category ids the model predicts (ints, or dicts with an ``"id"``), in the
  order of its probability channels; dataset classes the model lacks get probability 0.

It runs batched (``batch`` images per call, spec option ``,batch=N``) under ``torch.inference_mode()``; on
CUDA with bf16 autocast, otherwise on the CPU in float32. Device: ``$PRN_DEVICE`` if set; else, with CUDA,
the GPU ``worker index mod GPU count`` inside a Dask worker (so a cluster of one worker per GPU pins one
worker per GPU) and GPU 0 outside one; else the CPU.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Any

import numpy as np
import torch
from distributed import get_worker

from ..errors import BaseNetworkError
from ..records import CategorySet, Sample
from .prediction import BasePrediction, check_probs, renumber
from .spec import parse_options

_MODELS: dict[tuple[str, str, str], tuple[Any, list[int]]] = {}


def pick_device() -> str:
    """The torch device string this process should run the model on (module docstring)."""
    if os.environ.get("PRN_DEVICE"):
        return os.environ["PRN_DEVICE"]
    if not torch.cuda.is_available():
        return "cpu"
    index = 0
    try:
        name = get_worker().name
        index = int(name) % torch.cuda.device_count() if str(name).isdigit() else 0
    except ValueError:
        pass  # not inside a Dask worker
    return f"cuda:{index}"


class PythonBase:
    """Imports and runs a user's model; the model loads lazily, once per process and device."""

    def __init__(self, module: str, factory: str, categories: CategorySet, batch: int = 4):
        self.module, self.factory, self.categories, self.batch = module, factory, categories, int(batch)
        self.spec = f"python:{module}:{factory}"
        self.name = self.spec
        if self.batch < 1:
            raise BaseNetworkError(f"{self.spec}: batch must be ≥ 1")

    @staticmethod
    def from_spec(spec: str, rest: str, categories: CategorySet) -> "PythonBase":
        target, _, options = rest.partition(",")
        module, sep, factory = target.rpartition(":")
        if not sep or not module or not factory:
            raise BaseNetworkError(f"base spec {spec!r}: expected python:module:factory")
        opts = parse_options(options, spec)
        if set(opts) - {"batch"}:
            raise BaseNetworkError(f"base spec {spec!r}: unknown option(s) {sorted(set(opts) - {'batch'})} "
                                   "(known: batch)")
        try:
            batch = int(opts.get("batch", 4))
        except ValueError:
            raise BaseNetworkError(f"base spec {spec!r}: batch must be an integer") from None
        return PythonBase(module, factory, categories, batch)

    def load(self) -> tuple[Any, list[int], str]:
        """Import the module, call the factory and validate its result; cached per process."""
        device = pick_device()
        key = (self.module, self.factory, device)
        if key not in _MODELS:
            try:
                mod = importlib.import_module(self.module)
            except Exception as exc:  # any import-time failure of user code is the user's module's fault
                raise BaseNetworkError(f"{self.spec}: cannot import module {self.module!r} "
                                       f"({type(exc).__name__}: {exc})") from None
            fn = getattr(mod, self.factory, None)
            if not callable(fn):
                raise BaseNetworkError(f"{self.spec}: module {self.module!r} has no callable {self.factory!r}")
            try:
                made = fn()
            except Exception as exc:
                raise BaseNetworkError(f"{self.spec}: factory raised {type(exc).__name__}: {exc}") from None
            if not (isinstance(made, tuple) and len(made) == 2 and callable(made[0])):
                raise BaseNetworkError(f"{self.spec}: factory must return (model, categories)")
            model, cats = made
            try:
                ids = [int(c["id"]) if isinstance(c, dict) else int(c) for c in cats]
            except (TypeError, KeyError, ValueError):
                raise BaseNetworkError(f"{self.spec}: categories must be category ids or dicts with an 'id'") from None
            unknown = [i for i in ids if i not in self.categories]
            if unknown or len(set(ids)) != len(ids) or not ids:
                raise BaseNetworkError(f"{self.spec}: categories {unknown or ids} are unknown to the dataset, "
                                       "repeated or empty")
            if hasattr(model, "eval") and hasattr(model, "to"):
                model = model.eval().to(device)
            _MODELS[key] = (model, ids)
        model, ids = _MODELS[key]
        return model, ids, device

    def predict(self, samples: list[Sample]) -> list[BasePrediction]:
        """Run the model on ``samples`` (original size), ``batch`` images per call."""
        out: list[BasePrediction] = []
        for start in range(0, len(samples), self.batch):
            out.extend(self._run(samples[start:start + self.batch]))
        return out

    def _run(self, samples: list[Sample]) -> list[BasePrediction]:
        model, ids, device = self.load()
        images = [torch.from_numpy(np.require(s.image, requirements=("C", "W"))).permute(2, 0, 1)
                  .to(device, torch.float32) for s in samples]
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda")
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            try:
                results = model(images)
            except Exception as exc:
                raise BaseNetworkError(f"{self.spec}: model failed on images "
                                       f"{[s.image_id for s in samples]} ({type(exc).__name__}: {exc})") from None
        if not isinstance(results, (list, tuple)) or len(results) != len(samples):
            raise BaseNetworkError(f"{self.spec}: model must return a list of {len(samples)} dicts, one per image")
        return [self._convert(r, s, ids) for r, s in zip(results, samples)]

    def _convert(self, result: Any, sample: Sample, ids: list[int]) -> BasePrediction:
        where = f"{self.spec} (image {sample.image_id})"
        if not isinstance(result, dict) or "panoptic" not in result or "segments" not in result:
            raise BaseNetworkError(f"{where}: each result must be a dict with 'panoptic' and 'segments'")
        pan = _numpy(result["panoptic"])
        size = tuple(int(v) for v in sample.image.shape[:2])
        if pan.shape != size or not np.issubdtype(pan.dtype, np.integer):
            raise BaseNetworkError(f"{where}: 'panoptic' must be an integer map of shape {size}, "
                                   f"got {pan.dtype} {tuple(pan.shape)}")
        allowed = set(ids)
        for d in result["segments"]:
            if int(d.get("category_id", -1)) not in allowed:
                raise BaseNetworkError(f"{where}: segment {d.get('id')} has category {d.get('category_id')}, "
                                       "not among the factory's categories")
        pan = np.where(pan < 0, 0, pan).astype(np.int64)
        panoptic, segments = renumber(pan, result["segments"], self.categories, where)
        probs = None
        if result.get("probs") is not None:
            raw = _numpy(result["probs"]).astype(np.float32)
            check_probs(raw, len(ids), where)
            probs = np.zeros((len(self.categories),) + raw.shape[1:], dtype=np.float32)
            for j, cid in enumerate(ids):
                probs[self.categories.by_id(cid).train_id] = raw[j]
        return BasePrediction(panoptic, segments, probs, str(sample.image_id))


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach()
        if x.dtype.is_floating_point:
            x = x.float()  # bf16 has no NumPy dtype
        return x.cpu().numpy()
    return np.asarray(x)


__all__ = ["PythonBase", "pick_device"]
