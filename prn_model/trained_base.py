"""A small *trained* base network for the synthetic benchmark, run through the ``python:`` adapter like any
user's model (README "`python:`"; workflows/README.md "A trained base network").

It is this project's network with its base inputs switched off — every training sample's base inputs are
constant (zero instance maps, uniform class probabilities), so the network learns from the image alone, as a
Panoptic-DeepLab-style single-stage model (semantic, center, offset heads; grouping as §3.5). Its errors are
a network's, not a simulator's. Two factories for ``--base python:prn_model.trained_base:<factory>``:

- ``blank``: predicts nothing (all VOID, no segments, no probabilities), so a store built with it holds
  the constant base inputs (README "Conventions": VOID → uniform probabilities; no instance → zero maps);
  training a plain PRN (``model.residual: false``) on that store trains the base network;
- ``factory``: loads the checkpoint named by ``$PRN_BASE_CHECKPOINT`` and predicts with it: the image padded
  to a multiple of 32, the constant inputs, PPGBF post-processing, class probabilities at 1/4.

The synthetic categories are ``blank``'s (it has no checkpoint to take them from); ``factory`` takes the
training store's from the checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prn_data.datasets.synthetic import synthetic_categories
from prn_data.errors import PrnError
from prn_data.records import CategorySet

from .checkpoint import model_from_checkpoint, read_checkpoint
from .evaluate import default_postprocess_config
from .merge import postprocess
from .network import PRN

ENV = "PRN_BASE_CHECKPOINT"


class BlankModel:
    """Predicts nothing: every pixel VOID, no segments, no probabilities."""

    def __call__(self, images: list[torch.Tensor]) -> list[dict]:
        return [{"panoptic": np.zeros(tuple(im.shape[-2:]), np.int64), "segments": []} for im in images]


def blank() -> tuple[BlankModel, list[int]]:
    """``python:`` factory of :class:`BlankModel` over the synthetic categories."""
    return BlankModel(), [c.id for c in synthetic_categories()]


class ImageOnlyBase(torch.nn.Module):
    """A PRN trained on constant base inputs, called as a ``python:`` base model: ``images`` a list of
    ``(3, h, w) float32`` RGB in 0..255 → one ``{"panoptic" (h, w) int64 ids (−1 VOID), "segments" [{"id",
    "category_id", "score"}], "probs" (C, ⌈h/4⌉, ⌈w/4⌉) float32}`` per image, channels in category order."""

    def __init__(self, prn: PRN, categories: CategorySet, attrs: dict):
        super().__init__()
        self.prn, self.categories, self.attrs = prn, categories, attrs

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        out = []
        for im in images:
            h, w = im.shape[-2:]
            H, W = -(-h // 32) * 32, -(-w // 32) * 32
            x = F.pad(im.float(), (0, W - w, 0, H - h))[None]  # zero padding, as the store's canvas
            n = len(self.categories)
            inst = x.new_zeros((1, 7, H, W))
            sem = x.new_full((1, n, H // 4, W // 4), 1.0 / n)
            maps = self.prn(x, inst, sem)
            cfg = default_postprocess_config({**self.attrs, "canvas": [H, W]})
            pan, segs = postprocess(maps, self.categories, cfg, sizes=[(h, w)])[0]
            probs = torch.softmax(maps["semantic"][0].float(), dim=0)[:, : -(-h // 4), : -(-w // 4)]
            out.append({"panoptic": np.asarray(pan, np.int64),
                        "segments": [{"id": s.id, "category_id": s.category_id,
                                      **({"score": float(min(max(s.score, 0.0), 1.0))} if s.score is not None else {})}
                                     for s in segs],
                        "probs": probs.cpu().numpy()})
        return out


def load_trained_base(path: str | Path, device: str | torch.device = "cpu") -> tuple[ImageOnlyBase, list[int]]:
    """The ``(model, category ids)`` of a base network checkpoint (a PRN trained on a ``blank`` store)."""
    ckpt = read_checkpoint(path)
    record = ckpt.get("data") or {}
    if not record.get("categories"):
        raise PrnError(f"{path}: the checkpoint records no categories (trained by an older prn?)")
    cats = CategorySet.from_json(record["categories"])
    model = ImageOnlyBase(model_from_checkpoint(ckpt, path, device), cats, record)
    return model.eval(), [c.id for c in cats]


def factory() -> tuple[ImageOnlyBase, list[int]]:
    """``python:`` factory: the base network checkpoint named by ``$PRN_BASE_CHECKPOINT``."""
    path = os.environ.get(ENV)
    if not path:
        raise PrnError(f"set {ENV} to the trained base network's model.pt")
    return load_trained_base(path)


__all__ = ["ENV", "BlankModel", "ImageOnlyBase", "blank", "factory", "load_trained_base"]
