"""Checkpoints of a PRN run: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint holds tensors and plain Python values only (README, "Training"): ``format``, ``version``,
``step``, ``config`` (the run's :class:`~prn_model.config.TrainConfig` as a dict), ``model_config`` (the
:class:`~prn_model.network.PRNConfig` as a dict), ``model`` (the state dict) and ``data`` (what the training
store says about its inputs, :func:`data_record`: resize policy, target parameters, label divisor, categories,
canvas; absent from checkpoints written before it was recorded); a training checkpoint adds
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


DATA_KEYS = ("resize_policy", "target_params", "label_divisor", "categories", "canvas", "dataset_name", "base")
"""The training store's attributes a checkpoint records (:func:`data_record`)."""


def data_record(store_attrs: dict) -> dict:
    """What a checkpoint records of its training store's attributes (:data:`DATA_KEYS`, those present):
    how inputs were made, so ``prn refine`` makes new images' inputs the same way without the store."""
    return {k: store_attrs[k] for k in DATA_KEYS if k in store_attrs}


def save_checkpoint(path: str | Path, model: torch.nn.Module, cfg: TrainConfig, *,
                    optimizer: torch.optim.Optimizer | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, step: int = 0,
                    sampler: dict | None = None, rng: dict | None = None, data: dict | None = None) -> Path:
    """Write a checkpoint atomically (temporary file, then rename); the keys are the module docstring's.
    ``model`` may be wrapped (DDP, ``torch.compile``); ``data``: :func:`data_record` of the training store."""
    raw = unwrap_model(model)
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": int(step),
        "config": cfg.to_dict(),
        "model_config": raw.cfg.to_dict(),
        "model": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
    }
    if data is not None:
        ckpt["data"] = dict(data)
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


def model_from_checkpoint(ckpt: dict, path: str | Path, device: str | torch.device = "cpu") -> PRN:
    """The PRN of a :func:`read_checkpoint` dict (read from ``path``) on ``device``, in eval mode."""
    model = PRN(PRNConfig.from_dict(ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored model configuration ({exc})") from None
    return model.to(device).eval()


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[PRN, TrainConfig]:
    """``(model, cfg)``: the PRN of a checkpoint on ``device`` in eval mode, and its :class:`TrainConfig`."""
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt, path, device), config_from_dict(ckpt["config"], f"{path} (config)")


def checkpoint_path(out: str | Path, step: int) -> Path:
    """The training checkpoint of ``step`` in the run folder ``out``."""
    return Path(out) / "checkpoints" / f"step_{step:07d}.pt"


def latest_checkpoint(out: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``out/checkpoints`` (None if there is none)."""
    files = sorted((Path(out) / "checkpoints").glob("step_*.pt"))
    return files[-1] if files else None


RUN_FILES = frozenset({"config.yaml", "metrics.jsonl", "val.jsonl", "skipped.jsonl", "checkpoints", "model.pt",
                       "log.txt", "tensorboard"})
"""What the trainer writes in a run folder; it creates ``config.yaml`` and ``checkpoints/`` first."""

RUNTIME_SETTINGS = frozenset({
    "out", "device", "compile", "channels_last", "deterministic", "log_every", "tensorboard", "checkpoint_every",
    "keep_checkpoints", "val_every", "val_limit", "data.val_store", "data.num_workers", "data.mp_context",
    "data.prefetch_factor", "data.decode", "data.skip_bad",
})
"""Settings a resumed run may change: where and how fast it runs, what it logs and keeps, and whether a
damaged sample is skipped (a run stopped by one resumes with ``--skip-bad``); every other one
decides which steps run (the store, seed, batch, schedule, model, loss, augmentation), so changing it on
``--resume`` would make ``config.yaml`` record a run that never happened."""

_FLAGS = {"data.store": "--store", "optim.lr": "--lr", "seed": "--seed", "data.batch_size": "--batch-size",
          "iters": "--iters"}


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_settings(recorded: dict, cfg: TrainConfig) -> list[str]:
    """The settings of ``cfg`` that differ from a checkpoint's ``recorded`` config (outside
    :data:`RUNTIME_SETTINGS`), each as ``"key (--flag): recorded R, now N"``."""
    # a key the recorded config lacks (written before the key existed) had its default value then
    old, new = _flat(TrainConfig().to_dict()) | _flat(dict(recorded)), _flat(cfg.to_dict())
    out = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if key == "data.store" and a and b:
            a, b = _where(str(a)), _where(str(b))
        if key in RUNTIME_SETTINGS or _same(a, b):
            continue
        flag = f" ({_FLAGS[key]})" if key in _FLAGS else ""
        out.append(f"{key}{flag}: recorded {old.get(key)!r}, now {new.get(key)!r}")
    return out


def _where(url: str) -> str:
    """A local store's absolute path (the same store named from another folder is the same store)."""
    return url if "://" in url or "::" in url else os.path.abspath(url)


def _same(a: object, b: object) -> bool:
    # YAML and checkpoints give lists where a config holds tuples
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return norm(a) == norm(b)


def check_run_folder(out: str | Path, resume: bool) -> None:
    """Refuse a run folder the trainer would overwrite someone's files in. A new run needs a new or empty
    folder, or one a run left before its first checkpoint and log (only ``config.yaml`` beside an empty
    ``checkpoints/``); a folder holding a run takes ``--resume``; anything else is not a run folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: is a file, not a run folder; give a folder with --out")
    if not out.exists():
        if resume:
            raise CheckpointError(f"{out}: --resume given but the run folder does not exist")
        return
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        if resume:
            raise CheckpointError(f"{out}: --resume given but the run folder is empty")
        return
    foreign = [e for e in entries if e not in RUN_FILES]
    ckpts = out / "checkpoints"
    if foreign or not ckpts.is_dir():
        shown = ", ".join((foreign or entries)[:4]) + (" …" if len(foreign or entries) > 4 else "")
        raise CheckpointError(f"{out}: holds files that are not a prn run's ({shown}); a run needs a new or "
                              "empty folder: give another --out")
    if resume:
        return
    metrics = out / "metrics.jsonl"
    if any(ckpts.iterdir()) or (out / "model.pt").exists() or (metrics.exists() and metrics.stat().st_size):
        raise CheckpointError(f"{out}: the run folder already holds a run; use --resume or another --out")


def previous_intact(damaged: str | Path) -> Path | None:
    """The newest readable training checkpoint older than ``damaged`` in its folder, or None."""
    damaged = Path(damaged)
    for p in sorted(damaged.parent.glob("step_*.pt"), reverse=True):
        if p.name >= damaged.name:
            continue
        try:
            read_checkpoint(p)
        except CheckpointError:
            continue
        return p
    return None


def read_resume_checkpoint(out: str | Path) -> tuple[Path, dict]:
    """``(path, checkpoint)`` of the newest training checkpoint in the run folder ``out``. A damaged one (a
    copy cut short, a full disk) is an error that names the previous intact checkpoint and how to resume
    from it."""
    path = latest_checkpoint(out)
    if path is None:
        raise CheckpointError(f"{out}: --resume given but the run folder has no checkpoint")
    try:
        return path, read_checkpoint(path)
    except CheckpointError as exc:
        prev = previous_intact(path)
        if prev is None:
            raise CheckpointError(f"{exc}; there is no intact checkpoint before it: start a new run "
                                  "with another --out") from None
        raise CheckpointError(f"{exc}; the previous checkpoint {prev} is intact: move the damaged one away "
                              f"(mv {path} {path}.damaged) and run again with --resume to continue from "
                              f"it") from None


__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "RUNTIME_SETTINGS",
    "changed_settings",
    "check_run_folder",
    "previous_intact",
    "read_resume_checkpoint",
    "DATA_KEYS",
    "checkpoint_path",
    "data_record",
    "latest_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "read_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "unwrap_model",
]
