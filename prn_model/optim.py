"""PRN's optimizer and learning-rate schedule (paper §4.2): Adam (β1 0.9, weight decay 1e-4), initial lr
1e-3, cosine annealing; optionally AdamW, a linear warmup and a floor (:class:`~prn_model.config.OptimConfig`)."""

from __future__ import annotations

import math

import torch

from .config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam with L2 weight decay (the paper's §4.2) or AdamW."""
    o = cfg.optim
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``optim.lr`` at ``step`` (0-based): linear warmup, then cosine to ``min_lr`` at ``iters``."""
    o = cfg.optim
    if o.warmup_iters > 0 and step < o.warmup_iters:
        return (step + 1) / o.warmup_iters
    if o.schedule == "constant":
        return 1.0
    span = max(1, cfg.iters - o.warmup_iters)
    t = min(1.0, (step - o.warmup_iters) / span)
    floor = o.min_lr / o.lr if o.lr > 0 else 0.0
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of :func:`lr_factor`, stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))


__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]
