"""The PRN trainer: one process (CPU or one GPU) or several under ``torchrun`` (DDP), reading only a store.

Paper §4.2 "PRN Training": Adam (β1 0.9, weight decay 1e-4), initial lr 1e-3, cosine annealing
(:mod:`prn_model.optim`), random horizontal flip and GridMask (:mod:`prn_model.augment`); the loss is
eq. (1) with the λ of §4.2 (:mod:`prn_model.loss`).

A run folder holds:

- ``config.yaml``: the resolved :class:`~prn_model.config.TrainConfig` (file + every override);
- ``checkpoints/step_NNNNNNN.pt`` every ``checkpoint_every`` steps and at the end (the newest
  ``keep_checkpoints`` are kept; :mod:`prn_model.checkpoint`);
- ``model.pt`` at the end: the model weights and configuration only (what evaluation needs);
- ``metrics.jsonl``: one JSON object per logged step with ``step``, ``loss``, every loss term, ``lr``,
  ``samples_per_s`` and ``data_wait`` (fraction of the interval spent waiting for the loader), averaged
  over the steps since the previous line;
- ``val.jsonl``: one object per validation (``step`` and what the validation returned), when the caller
  gives one (``prn train --val-store``: PQ on a validation store, :func:`prn_model.evaluate.validation`);
- ``log.txt``: the same figures as plain lines, also printed to stdout when the progress bar cannot be
  seen (output sent to files), and ``tensorboard/`` with ``tensorboard: true`` (:mod:`prn_model.trainlog`);
- ``skipped.jsonl``: with ``data.skip_bad`` (``prn train --skip-bad``), one object per damaged sample
  replaced in a batch (``step``, ``index``, ``image_id``, ``array``, ``reason``, ``replaced_by``; every
  process appends its own). Without it a damaged sample stops training with its error (README "Sharing
  stores").

Resuming (``resume=True``) restores everything from the newest checkpoint and drops metrics lines logged
after it; since the sampler position and the per-sample augmentation seeds are functions of the step, an
interrupted-and-resumed run computes the same losses as an uninterrupted one (exactly, on the CPU).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rich.markup import escape
from rich.progress import Progress

from prn_data.errors import PrnError
from prn_data.progress import console, progress

from .batch import decode_batch
from .checkpoint import (
    CheckpointError,
    changed_settings,
    check_run_folder,
    checkpoint_path,
    data_record,
    read_resume_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap_model,
)
from .config import TrainConfig, save_config
from .data import StoreDataset, make_loader
from .devices import configure_device, dist_env, process_group, resolve_device
from .loss import LossWeights, prn_loss
from .network import PRN, PRNConfig
from .pretrained import load_pretrained_encoder
from .optim import build_optimizer, build_scheduler
from .sampler import TrainSampler
from .trainlog import RunLog, tensorboard_writer_class

Validation = Callable[[torch.nn.Module, torch.device], dict[str, float]]
"""A validation the trainer runs on rank 0: ``validate(model, device)`` (the bare PRN, in eval mode) → the
figures written to ``val.jsonl`` (e.g. :func:`prn_model.evaluate.validation`)."""


class TrainingError(PrnError):
    """Training cannot go on (no store given, the loss diverged, a resume without a checkpoint ...)."""


def model_config(cfg: TrainConfig, num_classes: int, thing_ids: list[int]) -> PRNConfig:
    """The ``PRNConfig`` of a run: ``cfg.model`` with the store's class count and thing ids filled in."""
    d = dict(cfg.model)
    d["num_classes"] = int(num_classes)
    d.setdefault("thing_ids", list(thing_ids))
    return PRNConfig.from_dict(d)


def loss_weights(cfg: TrainConfig) -> LossWeights:
    """:class:`~prn_model.loss.LossWeights` from ``cfg.loss`` (eq. 1's λ; defaults are the paper's)."""
    return LossWeights(**cfg.loss)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: TrainConfig, resume: bool = False, *, validate: Validation | None = None,
          show_progress: bool = True) -> dict:
    """Train PRN as ``cfg`` says; returns ``{"out", "step", "last_metrics", "checkpoint", "model"}`` (the
    trained ``PRN``, unwrapped from DDP / compile).

    ``validate``: run on rank 0 every ``cfg.val_every`` steps (0: never before the end) and after the last
    step, its figures appended to ``val.jsonl``; without it nothing is validated.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) each process trains on its shard with DDP (NCCL on CUDA, gloo
    on the CPU); ``data.batch_size`` is the global batch, split evenly over the processes; only rank 0
    writes the run folder.
    """
    if not cfg.data.store:
        raise TrainingError("no training store: give one in the config (data.store) or with --store")
    if not cfg.out:
        raise TrainingError("no run folder: give one in the config (out) or with --out")
    if cfg.tensorboard:
        tensorboard_writer_class()  # the optional package missing is an error before anything is written
    try:
        check_run_folder(cfg.out, resume)  # every rank checks, so none waits forever
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from None
    resumed = _resume_point(cfg) if resume else None  # before any store is opened or file written
    rank, world, local_rank = dist_env()
    device = resolve_device(cfg.device, local_rank)
    with process_group(world, device):
        return _train(cfg, resumed, validate=validate, show_progress=show_progress and rank == 0, rank=rank,
                      world=world, device=device)


def _train(cfg: TrainConfig, resumed: tuple[Path, dict] | None, *, validate: Validation | None, show_progress: bool, rank: int,
           world: int, device: torch.device) -> dict:
    """One process's run (see :func:`train`). The global RNGs are drawn in a fixed order — the seed, the
    model's initial weights, a resumed run's restored states, then the loader's base seed — so a run is
    reproducible and a resumed one replays the same steps."""
    out = Path(cfg.out)
    cuda = device.type == "cuda"
    configure_device(device, deterministic=cfg.deterministic)
    seed_everything(cfg.seed)
    dataset = _open_dataset(cfg, cuda=cuda)
    weights = loss_weights(cfg)
    model = _build_model(cfg, dataset, device=device, world=world, pretrained=resumed is None)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    start = _start_run(out, cfg, model=model, optimizer=optimizer, scheduler=scheduler, resumed=resumed, rank=rank)
    train_model = _wrap(model, cfg, device=device, world=world)
    if cfg.data.batch_size % world:
        raise TrainingError(f"data.batch_size {cfg.data.batch_size} (global) is not divisible by {world} processes")
    bs = cfg.data.batch_size // world  # per process
    sampler = TrainSampler(len(dataset), seed=cfg.seed, rank=rank, world_size=world, start=start * bs)
    loader = make_loader(dataset, bs, sampler, num_workers=cfg.data.num_workers, mp_context=cfg.data.mp_context,
                         pin_memory=cuda, prefetch_factor=cfg.data.prefetch_factor)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda and cfg.amp == "bf16" else nullcontext())

    def checkpoint(step: int) -> Path | None:
        if rank != 0:
            return None
        path = save_checkpoint(checkpoint_path(out, step), model, cfg, optimizer=optimizer, scheduler=scheduler,
                               step=step, sampler={"start": step * bs, "seed": cfg.seed, "world_size": world},
                               rng=rng_state(), data=data_record(dataset.attrs))
        if cfg.keep_checkpoints:
            for old in sorted((out / "checkpoints").glob("step_*.pt"))[: -cfg.keep_checkpoints]:
                old.unlink()
        return path

    last: dict = {}
    last_ckpt: Path | None = None
    meter = _Meter()
    seen_bad: set[int] = set()  # damaged samples already reported on the console
    # the live bar only on a terminal (rich would write one final frame into a file); plain lines on stdout
    # whenever the bar cannot be seen there
    bar = _Bar(cfg.iters, start) if show_progress and console.is_terminal else None
    log = RunLog(out, total=cfg.iters, start=start, echo=show_progress and _bar_unseen(),
                 tensorboard=cfg.tensorboard) if rank == 0 else None
    train_model.train()
    it = iter(loader)
    try:
        for step in range(start, cfg.iters):
            t_wait = time.perf_counter()
            batch = next(it)
            if "_skipped" in batch:
                _log_skipped(batch.pop("_skipped"), step=step + 1, rank=rank, world=world,
                             path=out / "skipped.jsonl", seen=seen_bad, bar=bar)
            batch = _move(batch, device, channels_last=cfg.channels_last, spec=dataset.decode_spec)
            meter.data_s += time.perf_counter() - t_wait
            total, terms, lr = _step(train_model, model, batch, optimizer=optimizer, scheduler=scheduler,
                                     weights=weights, clip_grad_norm=cfg.optim.clip_grad_norm, autocast=autocast)
            meter.add({"loss": total, **terms})
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.iters:
                last = _log(meter, step=done, lr=lr, global_batch=cfg.data.batch_size, world=world)
                if log is not None:
                    log.metrics(last)
                if not math.isfinite(last["loss"]):
                    raise TrainingError(f"the loss is {last['loss']} at step {done}; lower optim.lr or clip gradients")
                if bar is not None:
                    bar.logged(done, last)
                meter = _Meter()
            elif bar is not None:
                bar.update(done)
            if done % cfg.checkpoint_every == 0 or done == cfg.iters:
                last_ckpt = checkpoint(done) or last_ckpt
            if validate is not None and ((cfg.val_every and done % cfg.val_every == 0) or done == cfg.iters):
                _validate(validate, model, device=device, step=done, rank=rank, world=world, log=log, bar=bar)
                train_model.train()
    finally:
        if bar is not None:
            bar.stop()
        if log is not None:
            log.close()
        del it
    if rank == 0 and cfg.iters > start:
        save_checkpoint(out / "model.pt", model, cfg, step=cfg.iters, data=data_record(dataset.attrs))
    return {"out": str(out), "step": max(start, cfg.iters), "last_metrics": last,
            "checkpoint": str(last_ckpt) if last_ckpt else None, "model": unwrap_model(model)}


# ------------------------------------------------------------------------------------------- setup


def _open_dataset(cfg: TrainConfig, *, cuda: bool) -> StoreDataset:
    """The training store as a dataset (augmented as ``cfg.augment`` says), decoded in the loader or, on
    CUDA by default, on the device."""
    decode = cfg.data.decode if cfg.data.decode != "auto" else ("device" if cuda else "loader")
    dataset = StoreDataset(cfg.data.store, cfg.augment, seed=cfg.seed, decode=decode, skip_bad=cfg.data.skip_bad)
    if any(c % 32 for c in (cfg.augment.crop or dataset.canvas)):
        raise TrainingError(
            f"{cfg.data.store}: training size {tuple(cfg.augment.crop or dataset.canvas)} is not a multiple of "
            "32; set augment.crop"
        )
    return dataset


def _build_model(cfg: TrainConfig, dataset: StoreDataset, *, device: torch.device, world: int,
                 pretrained: bool = True) -> PRN:
    """A freshly initialised PRN for the store's classes, on ``device`` (SyncBatchNorm across several GPUs;
    NHWC with ``cfg.channels_last``); its encoder from ``model.pretrained`` when set and ``pretrained`` (a
    resumed run takes its weights from the checkpoint instead)."""
    thing_ids = [c.train_id for c in dataset.categories if c.isthing]
    mcfg = model_config(cfg, dataset.num_classes, thing_ids)
    model = PRN(mcfg)
    if mcfg.pretrained and pretrained:
        load_pretrained_encoder(model, mcfg.pretrained)
    if device.type == "cuda" and world > 1 and mcfg.norm == "batch":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    # NHWC helps oneDNN on the CPU too: the demo model's training step ran 1.2x faster than NCHW.
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _start_run(out: Path, cfg: TrainConfig, *, model: PRN, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, resumed: tuple[Path, dict] | None,
               rank: int) -> int:
    """Prepare the run folder and return the first step: with ``resumed`` (:func:`_resume_point`'s checkpoint
    path and dict), the model, optimizer, scheduler
    and RNGs come back from the newest checkpoint (refused when a setting that decides the steps changed:
    :func:`~prn_model.checkpoint.changed_settings`) and later metrics lines are dropped. :func:`train` has
    checked the folder (:func:`~prn_model.checkpoint.check_run_folder`). Rank 0 writes ``config.yaml``."""
    start = 0
    metrics_path, val_path = out / "metrics.jsonl", out / "val.jsonl"
    if resumed is not None:
        ck_path, ckpt = resumed
        if ckpt["model_config"] != model.cfg.to_dict():
            raise TrainingError(f"{ck_path}: the checkpoint's model configuration differs from this run's")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        start = int(ckpt["step"])
        if rank == 0:
            _truncate_metrics(metrics_path, start)
            _truncate_metrics(val_path, start)
            _truncate_metrics(out / "skipped.jsonl", start)
    if rank == 0:
        # checkpoints/ from the start marks the folder as a run's (check_run_folder) before the first checkpoint
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    return start


def _resume_point(cfg: TrainConfig) -> tuple[Path, dict]:
    """The newest intact checkpoint of the run in ``cfg.out`` and its dict; refused when ``cfg`` changes a
    setting that decides the steps (:func:`~prn_model.checkpoint.changed_settings`), since ``config.yaml``
    would then record a run that never happened."""
    try:
        ck_path, ckpt = read_resume_checkpoint(cfg.out)
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from None
    changed = changed_settings(ckpt["config"], cfg)
    if changed:
        raise TrainingError(f"{ck_path}: --resume with settings other than the run's: {'; '.join(changed)} "
                            "(resume with the run's settings, or start a new run with another --out)")
    return ck_path, ckpt


def _wrap(model: PRN, cfg: TrainConfig, *, device: torch.device, world: int) -> torch.nn.Module:
    """The module the steps run: ``model`` in DDP across several processes, compiled with ``cfg.compile``."""
    train_model: torch.nn.Module = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        train_model = torch.compile(train_model)
    return train_model


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only the lines logged at or before ``step`` (a resumed run logs the rest again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


# -------------------------------------------------------------------------------------------- steps


def _move(batch: dict, device: torch.device, *, channels_last: bool, spec: dict) -> dict:
    """The batch on ``device``, decoded there when it holds stored codes (``data.decode: device``)."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    out = decode_batch(out, spec)
    if channels_last:
        for k in ("image", "instance", "base_semantic"):
            out[k] = out[k].contiguous(memory_format=torch.channels_last)
    return out


def _step(train_model: torch.nn.Module, model: PRN, batch: dict, *, optimizer: torch.optim.Optimizer,
          scheduler: torch.optim.lr_scheduler.LRScheduler, weights: LossWeights, clip_grad_norm: float,
          autocast: AbstractContextManager) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    """One optimisation step on ``batch``: forward (under ``autocast``), eq. (1), backward, optional
    gradient clipping, optimizer and schedule steps. Returns ``(loss, terms, lr)`` (the lr it stepped with)."""
    with autocast:
        outputs = train_model(batch["image"], batch["instance"], batch["base_semantic"])
    outputs = {k: v.float() for k, v in outputs.items()}
    total, terms = prn_loss(outputs, batch, weights)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    return total, terms, lr


# ------------------------------------------------------------------------------------ reporting


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


class _Bar:
    """Rank 0's progress bar over the run's steps."""

    def __init__(self, total: int, completed: int):
        self.progress: Progress = progress()
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=completed, rate="")

    def update(self, done: int) -> None:
        self.progress.update(self.task, completed=done)

    def logged(self, done: int, record: dict) -> None:
        self.progress.update(self.task, completed=done,
                             rate=f"loss {record['loss']:.4g}  {record['samples_per_s']:.1f} samples/s  "
                                  f"wait {100 * record['data_wait']:.0f}%")

    def print(self, text: str) -> None:
        self.progress.console.print(text)

    def stop(self) -> None:
        self.progress.stop()


def _bar_unseen() -> bool:
    """True when the progress bar cannot be seen live: stdout or the console (stderr) is not a terminal (a
    cluster job writing to files); the trainer then prints plain lines to stdout."""
    return not (sys.stdout.isatty() and console.is_terminal)


def _log_skipped(records: list[dict], *, step: int, rank: int, world: int, path: Path, seen: set[int],
                 bar: _Bar | None) -> None:
    """Log damaged samples a batch replaced (``data.skip_bad``): every one to ``skipped.jsonl``, and to the
    console the first time this process meets it."""
    for r in records:
        _append_jsonl(path, {"step": step, **({"rank": rank} if world > 1 else {}), **r})
        if r["index"] in seen:
            continue
        seen.add(r["index"])
        who = f"sample {r['index']}" + (f" (image id {r['image_id']})" if r.get("image_id") else "")
        text = (f"skipped damaged {who}" + (f", array {r['array']}" if r.get("array") else "")
                + f": {r['reason']}; sample {r['replaced_by']} used instead (step {step}, logged in {path.name})")
        if bar is not None:
            bar.print(escape(text))
        else:
            console.print(text, markup=False, highlight=False)


def _append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _log(meter: _Meter, *, step: int, lr: float, global_batch: int, world: int) -> dict:
    """The interval's ``metrics.jsonl`` record (averaged over the processes too; rank 0's RunLog writes it)."""
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
    return record


def _validate(validate: Validation, model: PRN, *, device: torch.device, step: int, rank: int, world: int,
              log: RunLog | None, bar: _Bar | None) -> None:
    """Run ``validate`` on rank 0 (the model in eval mode meanwhile) and log its figures (``val.jsonl``);
    the other processes wait at a barrier: one evaluation, not one per process."""
    if rank == 0:
        raw = unwrap_model(model)
        was_training = raw.training
        raw.eval()
        try:
            result = dict(validate(raw, device))
        finally:
            raw.train(was_training)
        if log is not None:
            log.validation({"step": step, **result})
        if bar is not None:
            bar.print(f"step {step} validation: " + ", ".join(
                f"{k} {v:.2f}" for k, v in result.items() if isinstance(v, (int, float))))
    if world > 1:
        dist.barrier()


__all__ = [
    "TrainingError",
    "Validation",
    "loss_weights",
    "model_config",
    "seed_everything",
    "train",
]
