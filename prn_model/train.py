"""The PRN trainer: one process (CPU or one GPU) or several under ``torchrun`` (DDP), reading only a store.

Paper §4.2 "PRN Training": Adam (β1 0.9, weight decay 1e-4), initial lr 1e-3, cosine annealing, random
horizontal flip and GridMask; the loss is eq. (1) with the λ of §4.2 (``prn_model.loss``).

A run folder holds:

- ``config.yaml``: the resolved :class:`~prn_model.config.TrainConfig` (file + every override);
- ``checkpoints/step_NNNNNNN.pt`` every ``checkpoint_every`` steps and at the end (the newest
  ``keep_checkpoints`` are kept): model, optimizer,
  scheduler, step, the torch / CUDA / NumPy / Python RNG states and the sampler position, all as tensors
  and plain Python values, so :func:`torch.load` with ``weights_only=True`` reads them;
- ``model.pt`` at the end: the model weights and configuration only (what evaluation needs);
- ``metrics.jsonl``: one JSON object per logged step with ``step``, ``loss``, every loss term, ``lr``,
  ``samples_per_s`` and ``data_wait`` (fraction of the interval spent waiting for the loader), averaged
  over the steps since the previous line; ``val.jsonl``: one object per validation.

Resuming (``resume=True``) restores everything from the newest checkpoint and drops metrics lines logged
after it; since the sampler position and the per-sample augmentation seeds are functions of the step, an
interrupted-and-resumed run computes the same losses as an uninterrupted one (exactly, on the CPU).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from prn_data.errors import PrnError

from .config import TrainConfig, config_from_dict, save_config
from .data import StoreDataset, TrainSampler, decode_batch, make_loader

CHECKPOINT_FORMAT = "prn-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(PrnError):
    """A checkpoint is missing, unreadable, or not a prn checkpoint."""


class TrainingError(PrnError):
    """Training cannot go on (no store given, the loss diverged, a resume without a checkpoint ...)."""


# --------------------------------------------------------------------------------------------- setup


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → the CUDA device of this rank when CUDA is present, else the CPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {spec!r} requested but CUDA is not available")
    return device


def model_config(cfg: TrainConfig, num_classes: int, thing_ids: list[int]):
    """The ``PRNConfig`` of a run: ``cfg.model`` with the store's class count and thing ids filled in."""
    from .network import PRNConfig

    d = dict(cfg.model)
    d["num_classes"] = int(num_classes)
    d.setdefault("thing_ids", list(thing_ids))
    return PRNConfig.from_dict(d)


def loss_weights(cfg: TrainConfig):
    """``prn_model.loss.LossWeights`` from ``cfg.loss`` (eq. 1's λ; defaults are the paper's)."""
    from .loss import LossWeights

    return LossWeights(**cfg.loss)


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
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | Path, model: torch.nn.Module, cfg: TrainConfig, *,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None, step: int = 0,
                    sampler: dict | None = None, rng: dict | None = None) -> Path:
    """Write a checkpoint atomically (temporary file, then rename). Holds tensors and plain types only:
    ``format``, ``version``, ``step``, ``config`` (TrainConfig as a dict), ``model_config`` (PRNConfig as a
    dict), ``model`` (state dict) and, for training checkpoints, ``optimizer``, ``scheduler``, ``sampler``,
    ``rng``."""
    raw = _unwrap(model)
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


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """``(model, cfg)``: the PRN of a checkpoint on ``device`` in eval mode, and its :class:`TrainConfig`."""
    from .network import PRN, PRNConfig

    ckpt = read_checkpoint(path)
    model = PRN(PRNConfig.from_dict(ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored model configuration ({exc})") from None
    model.to(device).eval()
    return model, config_from_dict(ckpt["config"], f"{path} (config)")


def checkpoint_path(out: str | Path, step: int) -> Path:
    return Path(out) / "checkpoints" / f"step_{step:07d}.pt"


def latest_checkpoint(out: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``out/checkpoints`` (None if there is none)."""
    files = sorted((Path(out) / "checkpoints").glob("step_*.pt"))
    return files[-1] if files else None


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


# ------------------------------------------------------------------------------------- distributed


def dist_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


# ---------------------------------------------------------------------------------------- training


class _Meter:
    """Sums of the loss terms over a logging interval, kept on the device (no sync per step)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.data_s = 0.0
        self.t0 = time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.steps += 1


def _move(batch: dict, device: torch.device, channels_last: bool, spec: dict | None = None) -> dict:
    """The batch on ``device``, decoded there when it holds stored codes (``data.decode: device``)."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    out = decode_batch(out, spec or {})
    if channels_last:
        for k in ("image", "instance", "base_semantic"):
            out[k] = out[k].contiguous(memory_format=torch.channels_last)
    return out


def _append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only the lines logged at or before ``step`` (a resumed run logs the rest again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def train(cfg: TrainConfig, resume: bool = False, show_progress: bool = True) -> dict:
    """Train PRN as ``cfg`` says; returns ``{"out", "step", "last_metrics", "checkpoint", "model"}`` (the
    trained ``PRN``, unwrapped from DDP / compile).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) each process trains on its shard with DDP (NCCL on CUDA, gloo
    on the CPU); ``data.batch_size`` is the global batch, split evenly over the processes; only rank 0
    writes the run folder.
    """
    if not cfg.data.store:
        raise TrainingError("no training store: give one in the config (data.store) or with --store")
    if not cfg.out:
        raise TrainingError("no run folder: give one in the config (out) or with --out")
    rank, world, local_rank = dist_env()
    device = resolve_device(cfg.device, local_rank)
    own_group = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        own_group = True
    try:
        return _train(cfg, resume, show_progress and rank == 0, rank, world, device)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, resume: bool, show_progress: bool, rank: int, world: int,
           device: torch.device) -> dict:
    out = Path(cfg.out)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.seed)

    decode = cfg.data.decode if cfg.data.decode != "auto" else ("device" if cuda else "loader")
    dataset = StoreDataset(cfg.data.store, cfg.augment, seed=cfg.seed, decode=decode)
    if any(c % 32 for c in (cfg.augment.crop or dataset.canvas)):
        raise TrainingError(
            f"{cfg.data.store}: training size {tuple(cfg.augment.crop or dataset.canvas)} is not a multiple of "
            "32; set augment.crop"
        )
    thing_ids = [c.train_id for c in dataset.categories if c.isthing]
    from .loss import prn_loss
    from .network import PRN

    mcfg = model_config(cfg, dataset.num_classes, thing_ids)
    weights = loss_weights(cfg)
    model = PRN(mcfg)
    if cuda and world > 1 and mcfg.norm == "batch":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    # NHWC helps oneDNN on the CPU too: the demo model's training step ran 1.2x faster than NCHW.
    channels_last = cfg.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)

    start = 0
    metrics_path, val_path = out / "metrics.jsonl", out / "val.jsonl"
    if resume:
        ck_path = latest_checkpoint(out)
        if ck_path is None:
            raise TrainingError(f"{out}: --resume given but the run folder has no checkpoint")
        ckpt = read_checkpoint(ck_path)
        if ckpt["model_config"] != mcfg.to_dict():
            raise TrainingError(f"{ck_path}: the checkpoint's model configuration differs from this run's")
        _unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        start = int(ckpt["step"])
        if rank == 0:
            _truncate_metrics(metrics_path, start)
            _truncate_metrics(val_path, start)
    elif metrics_path.exists() and metrics_path.stat().st_size:  # every rank checks, so none waits forever
        raise TrainingError(f"{out}: the run folder already holds a run; use --resume or another --out")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")

    train_model: torch.nn.Module = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if cuda else None
        )
    if cfg.compile:
        train_model = torch.compile(train_model)

    if cfg.data.batch_size % world:
        raise TrainingError(f"data.batch_size {cfg.data.batch_size} (global) is not divisible by {world} processes")
    bs = cfg.data.batch_size // world  # per process
    sampler = TrainSampler(len(dataset), seed=cfg.seed, rank=rank, world_size=world, start=start * bs)
    loader = make_loader(dataset, bs, sampler, num_workers=cfg.data.num_workers, mp_context=cfg.data.mp_context,
                         pin_memory=cuda, prefetch_factor=cfg.data.prefetch_factor)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda and cfg.amp == "bf16" else nullcontext())

    def sampler_state(step: int) -> dict:
        return {"start": step * bs, "seed": cfg.seed, "world_size": world}

    def checkpoint(step: int) -> Path | None:
        if rank != 0:
            return None
        path = save_checkpoint(checkpoint_path(out, step), model, cfg, optimizer=optimizer, scheduler=scheduler,
                               step=step, sampler=sampler_state(step), rng=rng_state())
        if cfg.keep_checkpoints:
            for old in sorted((out / "checkpoints").glob("step_*.pt"))[: -cfg.keep_checkpoints]:
                old.unlink()
        return path

    last: dict = {}
    last_ckpt: Path | None = None
    meter = _Meter()
    bar = None
    if show_progress:
        from prn_data.cli.app import progress

        bar = progress()
        bar.start()
        task = bar.add_task("train", total=cfg.iters, completed=start, rate="")
    train_model.train()
    it = iter(loader)
    try:
        for step in range(start, cfg.iters):
            t_wait = time.perf_counter()
            batch = next(it)
            batch = _move(batch, device, channels_last, dataset.decode_spec)
            meter.data_s += time.perf_counter() - t_wait
            with autocast:
                outputs = train_model(batch["image"], batch["instance"], batch["base_semantic"])
            outputs = {k: v.float() for k, v in outputs.items()}
            total, terms = prn_loss(outputs, batch, weights)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if cfg.optim.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            meter.add({"loss": total, **terms})
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.iters:
                last = _log(meter, done, lr, cfg.data.batch_size, world, rank, metrics_path)
                if not math.isfinite(last["loss"]):
                    raise TrainingError(f"the loss is {last['loss']} at step {done}; lower optim.lr or clip gradients")
                if bar is not None:
                    bar.update(task, completed=done,
                               rate=f"loss {last['loss']:.4g}  {last['samples_per_s']:.1f} samples/s  "
                                    f"wait {100 * last['data_wait']:.0f}%")
                meter = _Meter()
            elif bar is not None:
                bar.update(task, completed=done)
            if done % cfg.checkpoint_every == 0 or done == cfg.iters:
                last_ckpt = checkpoint(done) or last_ckpt
            if cfg.data.val_store and ((cfg.val_every and done % cfg.val_every == 0) or done == cfg.iters):
                if rank == 0:  # the others wait at the barrier: one evaluation, not one per process
                    result = validate(_unwrap(model), cfg, device)
                    _append_jsonl(val_path, {"step": done, **result})
                    if bar is not None:
                        bar.console.print(f"step {done} validation: " + ", ".join(
                            f"{k} {v:.2f}" for k, v in result.items() if isinstance(v, (int, float))))
                if world > 1:
                    dist.barrier()
                train_model.train()
    finally:
        if bar is not None:
            bar.stop()
        del it
    if rank == 0 and cfg.iters > start:
        save_checkpoint(out / "model.pt", model, cfg, step=cfg.iters)
    return {"out": str(out), "step": max(start, cfg.iters), "last_metrics": last,
            "checkpoint": str(last_ckpt) if last_ckpt else None, "model": _unwrap(model)}


def _log(meter: _Meter, step: int, lr: float, global_batch: int, world: int, rank: int, path: Path) -> dict:
    keys = sorted(meter.sums)
    vec = torch.stack([meter.sums[k] for k in keys]) / max(1, meter.steps)
    elapsed = time.perf_counter() - meter.t0
    timing = torch.tensor([meter.data_s / max(elapsed, 1e-9)], dtype=torch.float64)
    if world > 1:
        vec = vec.to(torch.float64)
        dist.all_reduce(vec)
        vec /= world
        timing = timing.to(vec.device)
        dist.all_reduce(timing)
        timing /= world
    values = vec.cpu().tolist()
    record = {"step": step, "loss": values[keys.index("loss")]}
    record.update({k: v for k, v in zip(keys, values) if k != "loss"})
    record.update({
        "lr": lr,
        "samples_per_s": global_batch * meter.steps / max(elapsed, 1e-9),
        "data_wait": float(timing.item()),
    })
    if rank == 0:
        _append_jsonl(path, record)
    return record


# -------------------------------------------------------------------------------------- validation


def validate(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> dict:
    """Validation on ``cfg.data.val_store`` (rank 0 only), logged to ``val.jsonl``.

    Returns ``{"pq", "sq", "rq", "pq_th", "pq_st"}`` (percent, store resolution, against the store's
    ``gt/``) from ``prn_model.evaluate.evaluate_model``; should that module be missing, the mean eq. (1)
    loss and terms over the val store instead (``{"val_loss": ..., "val_semantic": ...}``).
    """
    try:
        from .evaluate import evaluate_model  # issue 8's evaluator, once it offers this entry point
    except ImportError:
        evaluate_model = None
    was_training = model.training
    model.eval()
    try:
        if evaluate_model is not None:
            return dict(evaluate_model(model, cfg.data.val_store, device=device, limit=cfg.val_limit or None))
        return validation_loss(model, cfg, device)
    finally:
        model.train(was_training)


@torch.no_grad()
def validation_loss(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> dict:
    """Mean eq. (1) loss and terms over the validation store (no augmentation)."""
    from .loss import prn_loss

    dataset = StoreDataset(cfg.data.val_store, None, seed=cfg.seed)
    n = len(dataset) if not cfg.val_limit else min(cfg.val_limit, len(dataset))
    loader = make_loader(torch.utils.data.Subset(dataset, range(n)), cfg.data.batch_size, None, num_workers=0)
    weights = loss_weights(cfg)
    sums: dict[str, float] = {}
    count = 0
    for batch in loader:
        batch = _move(batch, device, False)
        outputs = {k: v.float() for k, v in model(batch["image"], batch["instance"], batch["base_semantic"]).items()}
        total, terms = prn_loss(outputs, batch, weights)
        b = batch["image"].shape[0]
        for k, v in {"loss": total, **terms}.items():
            sums[f"val_{k}"] = sums.get(f"val_{k}", 0.0) + float(v) * b
        count += b
    return {k: v / count for k, v in sums.items()}


__all__ = [
    "CheckpointError",
    "TrainingError",
    "build_optimizer",
    "build_scheduler",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_factor",
    "read_checkpoint",
    "save_checkpoint",
    "train",
    "validate",
]
