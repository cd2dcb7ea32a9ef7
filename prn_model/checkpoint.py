"""Checkpoints of a PRN run: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint holds tensors and plain Python values only (README, "Training"): ``format``, ``version``,
``step``, ``config`` (the run's :class:`~prn_model.config.TrainConfig` as a dict), ``model_config`` (the
:class:`~prn_model.network.PRNConfig` as a dict) and ``model`` (the state dict); a training checkpoint adds
``optimizer``, ``scheduler``, ``sampler`` (its position) and ``rng`` (every global RNG, :func:`rng_state`),
which is what lets an interrupted run resume exactly. A run folder keeps them as
``checkpoints/step_NNNNNNN.pt``, and the final weights as ``model.pt``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from prn_data.errors import PrnError

from .config import TrainConfig, config_from_dict
from .network import PRN, PRNConfig

CHECKPOINT_FORMAT = "prn-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(PrnError):
    """A checkpoint is missing, unreadable, or not a prn checkpoint."""


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside ``torch.compile`` and DDP wrappers (the one whose state dict is saved)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


def rng_state() -> dict:
    """Every global RNG as tensors and plain values (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": py[0], "state": list(py[1]), "gauss": py[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the global RNGs from :func:`rng_state`'s dict."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, model: torch.nn.Module, cfg: TrainConfig, *,
                    optimizer: torch.optim.Optimizer | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, step: int = 0,
                    sampler: dict | None = None, rng: dict | None = None) -> Path:
    """Write a checkpoint atomically (temporary file, then rename); the keys are the module docstring's.
    ``model`` may be wrapped (DDP, ``torch.compile``)."""
    raw = unwrap_model(model)
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": int(step),
        "config": cfg.to_dict(),
        "model_config": raw.cfg.to_dict(),
        "model": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
    }
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        ckpt["scheduler"] = scheduler.state_dict()
    if sampler is not None:
        ckpt["sampler"] = dict(sampler)
    if rng is not None:
        ckpt["rng"] = rng
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict, loaded with ``weights_only=True`` on the CPU; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CheckpointError(f"{p}: not a loadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p}: not a prn checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{p}: checkpoint version {ckpt.get('version')}, expected {CHECKPOINT_VERSION}")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[PRN, TrainConfig]:
    """``(model, cfg)``: the PRN of a checkpoint on ``device`` in eval mode, and its :class:`TrainConfig`."""
    ckpt = read_checkpoint(path)
    model = PRN(PRNConfig.from_dict(ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored model configuration ({exc})") from None
    model.to(device).eval()
    return model, config_from_dict(ckpt["config"], f"{path} (config)")


def checkpoint_path(out: str | Path, step: int) -> Path:
    """The training checkpoint of ``step`` in the run folder ``out``."""
    return Path(out) / "checkpoints" / f"step_{step:07d}.pt"


def latest_checkpoint(out: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``out/checkpoints`` (None if there is none)."""
    files = sorted((Path(out) / "checkpoints").glob("step_*.pt"))
    return files[-1] if files else None


__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "checkpoint_path",
    "latest_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "unwrap_model",
]
