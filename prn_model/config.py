"""Training configuration: dataclasses loaded from YAML, every field overridable (the CLI's options).

A YAML file mirrors :class:`TrainConfig` (sections ``model``, ``loss``, ``optim``, ``data``, ``augment``
and top-level run fields). Unknown keys are errors naming the file and the key, so a typo never silently
falls back to a default. ``model`` is passed through to ``prn_model.network.PRNConfig`` (``num_classes``
is filled in from the store) and ``loss`` to ``prn_model.loss.LossWeights``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from prn_data.errors import PrnError

from .augment import AugmentConfig, GridMaskConfig


class ConfigError(PrnError):
    """A training configuration file is unreadable or has unknown or ill-typed fields."""


@dataclass
class OptimConfig:
    """Adam with L2 weight decay and a cosine schedule (§4.2: lr 1e-3, weight decay 1e-4, β1 = 0.9).

    ``warmup_iters`` ramps the lr linearly from 0 (0 = none, as in the paper); the cosine decays from
    ``lr`` to ``min_lr`` over the remaining iterations. ``clip_grad_norm`` (0 = off) clips the global
    gradient L2 norm before each step.
    """

    name: str = "adam"  # "adam" (L2 decay, the paper's) or "adamw" (decoupled decay)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"  # "cosine" or "constant"
    warmup_iters: int = 0
    min_lr: float = 0.0
    clip_grad_norm: float = 0.0


@dataclass
class DataConfig:
    """Where samples come from and how they are loaded. ``batch_size`` is the global batch (split evenly
    over the processes of a ``torchrun`` job); ``num_workers`` loader processes per training process."""

    store: str | None = None
    val_store: str | None = None  # read by the validation the caller gives (prn_model.evaluate.validation)
    batch_size: int = 16
    num_workers: int = 2
    mp_context: str | None = "forkserver"
    prefetch_factor: int = 2
    # "loader": workers decode the stored codes to float32 maps; "device": workers ship the stored integer
    # codes (about half the bytes) and the trainer decodes them on the device; "auto": device on CUDA.
    decode: str = "auto"


@dataclass
class TrainConfig:
    """Everything one training run needs; saved resolved as ``config.yaml`` in the run folder."""

    model: dict = field(default_factory=dict)
    loss: dict = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    iters: int = 1000
    seed: int = 0
    device: str = "auto"  # "auto" (cuda if present), "cpu", "cuda", "cuda:1"
    amp: str = "bf16"  # autocast dtype on CUDA: "bf16" or "none" (the CPU always runs fp32)
    channels_last: bool = True  # NHWC model and inputs (CUDA and CPU)
    compile: bool = False
    out: str | None = None
    log_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3  # newest training checkpoints kept in the run folder (0 = all)
    val_every: int = 0  # 0 = validate only at the end (when the trainer is given a validation)
    val_limit: int = 0  # 0 = every done val sample
    deterministic: bool = False

    def to_dict(self) -> dict:
        """Plain-Python form (lists, not tuples), as written to YAML and checkpoints."""
        return _plain(asdict(self))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


_NESTED = {
    (TrainConfig, "optim"): OptimConfig,
    (TrainConfig, "data"): DataConfig,
    (TrainConfig, "augment"): AugmentConfig,
    (AugmentConfig, "gridmask"): GridMaskConfig,
}
_TUPLE_FIELDS = {(OptimConfig, "betas"), (AugmentConfig, "crop")}


def _build(cls, d: dict | None, where: str, source: str):
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: '{where or 'top level'}' must be a mapping, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)}")
    kwargs = {}
    for name, value in d.items():
        sub = _NESTED.get((cls, name))
        if sub is not None and value is not None:
            value = _build(sub, value, f"{where}.{name}" if where else name, source)
        elif (cls, name) in _TUPLE_FIELDS and value is not None:
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(d: dict, source: str = "<config>") -> TrainConfig:
    """A :class:`TrainConfig` from a nested dict (YAML's or a checkpoint's); unknown keys raise."""
    cfg = _build(TrainConfig, d, "", source)
    _validate(cfg, source)
    return cfg


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML training configuration; errors name the file and the problem."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror or exc})") from None
    try:
        d = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    return config_from_dict(d, str(p))


def override(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of ``cfg`` with dotted-path fields replaced, ``None`` values skipped
    (``override(cfg, **{"data.store": "x.zarr", "iters": 5})``)."""
    d = cfg.to_dict()
    for key, value in changes.items():
        if value is None:
            continue
        node = d
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config_from_dict(d, "<overrides>")


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _validate(cfg: TrainConfig, source: str) -> None:
    problems = []
    if cfg.iters < 0:
        problems.append("iters must be ≥ 0")
    if cfg.data.batch_size < 1:
        problems.append("data.batch_size must be ≥ 1")
    if cfg.data.num_workers < 0:
        problems.append("data.num_workers must be ≥ 0")
    if cfg.optim.name not in ("adam", "adamw"):
        problems.append(f"optim.name must be adam or adamw, not {cfg.optim.name!r}")
    if cfg.optim.schedule not in ("cosine", "constant"):
        problems.append(f"optim.schedule must be cosine or constant, not {cfg.optim.schedule!r}")
    if cfg.data.decode not in ("auto", "loader", "device"):
        problems.append(f"data.decode must be auto, loader or device, not {cfg.data.decode!r}")
    if cfg.amp not in ("bf16", "none"):
        problems.append(f"amp must be bf16 or none, not {cfg.amp!r}")
    if cfg.keep_checkpoints < 0:
        problems.append("keep_checkpoints must be ≥ 0")
    if cfg.log_every < 1 or cfg.checkpoint_every < 1:
        problems.append("log_every and checkpoint_every must be ≥ 1")
    if cfg.augment.crop is not None and (len(cfg.augment.crop) != 2 or any(int(c) % 32 for c in cfg.augment.crop)):
        problems.append(f"augment.crop must be (h, w), multiples of 32, not {cfg.augment.crop}")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "GridMaskConfig",
    "OptimConfig",
    "TrainConfig",
    "config_from_dict",
    "load_config",
    "override",
    "save_config",
]
