"""Training configuration: dataclasses loaded from YAML, every field overridable (the CLI's options).

A YAML file mirrors :class:`TrainConfig` (sections ``model``, ``loss``, ``optim``, ``data``, ``augment``
and top-level run fields). ``model`` is passed through to ``prn_model.network.PRNConfig`` (``num_classes``
is filled in from the store) and ``loss`` to ``prn_model.loss.LossWeights``.

Every value is checked against its field's type by :func:`validate_config` (README "Training"), strictly:
no string is read as a number or a boolean (``channels_last: "no"`` is an error, not true), no float as an
integer, and floats must be finite. Unknown keys are errors too, so a typo never silently falls back to a
default. Each problem is one line naming the file and the key: ``file: key: expected <type>, got <value>``.
The check is generic over the dataclasses' fields and type hints, so a new field is checked as it is typed.

A file may inherit from others (``_base_: coco.yaml``) and ``--set KEY=VALUE`` overrides any key
(:mod:`prn_model.config_loading`); both go through the same check.
"""

from __future__ import annotations

import difflib
import functools
import json
import types
import typing
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import pydantic
import yaml

from .augment import AugmentConfig, GridMaskConfig
from .config_loading import ConfigError, near_keys, parse_assignments, read_config_tree, set_dotted
from .devices import DEVICE_SPEC
from .loss import LossWeights
from .network import PRNConfig
from .ppgbf import PostProcessConfig


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
    # a damaged sample stops training (README "Sharing stores"); true: replace it by the next readable one
    # and log it (console and skipped.jsonl in the run folder)
    skip_bad: bool = False


@dataclass
class TrainConfig:
    """Everything one training run needs; saved resolved as ``config.yaml`` in the run folder."""

    model: dict = field(default_factory=dict)
    loss: dict = field(default_factory=dict)
    # PostProcessConfig fields (§3.5: box_iou, box_gate, grouping …) for validation and `prn evaluate`
    postprocess: dict = field(default_factory=dict)
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
    log_every: int = 10  # steps per metrics.jsonl / log.txt line (and plain stdout line off a terminal)
    tensorboard: bool = False  # also log every figure to RUN/tensorboard (needs the tensorboard extra)
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


# Mappings kept as dicts in TrainConfig but checked against the dataclass they become: ``model`` (every
# PRNConfig field but num_classes, which comes from the store), ``loss`` (LossWeights) and ``postprocess``
# (PostProcessConfig; unset fields keep the store's defaults, see prn_model.evaluate.postprocess_config).
_PASSED_THROUGH: dict[tuple[type, str], tuple[type, frozenset[str]]] = {
    (TrainConfig, "model"): (PRNConfig, frozenset({"num_classes"})),
    (TrainConfig, "loss"): (LossWeights, frozenset()),
    (TrainConfig, "postprocess"): (PostProcessConfig, frozenset()),
}

_LEAF_CONFIG = pydantic.ConfigDict(strict=True, allow_inf_nan=False)


def validate_config(d: Any, source: str = "<config>") -> TrainConfig:
    """A :class:`TrainConfig` from a nested dict (YAML's, a checkpoint's, overrides'), every value checked
    against its field's type (module docstring), then the value ranges. Raises :class:`ConfigError`, one line
    per wrong key: ``source: key: expected <type>, got <value>``."""
    problems: list[str] = []
    cfg = _typed(TrainConfig, {} if d is None else d, "", problems)
    if not problems:
        problems = _check_values(cfg)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return cfg


config_from_dict = validate_config  # the name the trainer, checkpoints and tests use


def _typed(cls: type, d: Any, where: str, problems: list[str]) -> Any:
    """``cls(**d)`` with every value of ``d`` checked (and nested dataclasses built) against ``cls``'s type
    hints; each problem appended to ``problems`` (then None is returned)."""
    if not isinstance(d, dict):
        problems.append(f"{where or 'top level'}: expected a mapping, got {_show(d)}")
        return None
    hints = _hints(cls)
    prefix = f"{where}." if where else ""
    unknown = [k for k in d if k not in hints]
    if unknown:
        problems.append(f"unknown key(s) {', '.join(prefix + str(k) for k in unknown)}"
                        + _did_you_mean(unknown, _known_keys(cls), prefix))
    kwargs = {}
    n_problems = len(problems)
    for name, value in d.items():
        if name not in hints:
            continue
        key, hint = prefix + name, hints[name]
        passed = _PASSED_THROUGH.get((cls, name))
        sub = _dataclass_of(hint)
        if passed is not None:
            target, skip = passed
            kwargs[name] = _mapping(target, skip, value, key, problems)
        elif sub is not None and not (value is None and _allows_none(hint)):
            kwargs[name] = _typed(sub, value, key, problems)
        else:
            kwargs[name] = _leaf(hint, value, key, problems)
    return cls(**kwargs) if len(problems) == n_problems and not unknown else None


def _mapping(target: type, skip: frozenset[str], d: Any, where: str, problems: list[str]) -> dict | None:
    """A pass-through mapping (``model``, ``loss``) checked against ``target``'s fields (less ``skip``, which
    are allowed but not checked); kept a plain dict of the checked values."""
    if d is None:
        return {}
    if not isinstance(d, dict):
        problems.append(f"{where}: expected a mapping, got {_show(d)}")
        return None
    hints = _hints(target)
    unknown = [k for k in d if k not in hints]
    if unknown:
        problems.append(f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}"
                        + _did_you_mean(unknown, list(hints), f"{where}."))
    out = {}
    for name, value in d.items():
        if name in hints:
            out[name] = value if name in skip else _plain(_leaf(hints[name], value, f"{where}.{name}", problems))
    return out


def _leaf(hint: Any, value: Any, key: str, problems: list[str]) -> Any:
    """``value`` checked against the type ``hint`` (strict, finite floats; a list where a tuple is typed, as
    YAML has no tuples); the problem is appended to ``problems``."""
    try:
        text = json.dumps(value, allow_nan=True)
        return _adapter(hint).validate_json(text, strict=True)
    except (TypeError, ValueError):  # pydantic.ValidationError is a ValueError; json.dumps raises TypeError
        problems.append(f"{key}: expected {_describe(hint)}, got {_show(value)}")
        return None


@functools.cache
def _adapter(hint: Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(hint, config=_LEAF_CONFIG)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Type hints of ``cls``'s init fields (resolved from their ``from __future__`` strings)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if f.init}


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass ``hint`` names, alone or with None (``GridMaskConfig | None``); else None."""
    if is_dataclass(hint):
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else []
    return args[0] if len(args) == 1 and is_dataclass(args[0]) else None


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _allows_none(hint: Any) -> bool:
    return hint is type(None) or (_is_union(hint) and type(None) in typing.get_args(hint))


_NAMES = {int: ("an integer", "integers"), float: ("a finite number", "finite numbers"), bool:
          ("true or false", "booleans"), str: ("a string", "strings"), type(None): ("null", "nulls")}


def _describe(hint: Any, plural: bool = False) -> str:
    """``hint`` in words: ``int`` → "an integer", ``tuple[float, float] | None`` → "a list of 2 finite
    numbers or null"."""
    if hint in _NAMES:
        return _NAMES[hint][plural]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(hint):
        return " or ".join(_describe(a, plural) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {_describe(args[0], True)}"
    if origin is tuple and args and len(set(args)) == 1:
        return f"a list of {len(args)} {_describe(args[0], True)}"
    if origin is tuple:
        return "a list [" + ", ".join(_describe(a) for a in args) + "]"
    if origin is list:
        return f"a list of {_describe(args[0], True)}" if args else "a list"
    if hint is dict or origin is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _show(value: Any) -> str:
    """A value as the error shows it (short)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _known_keys(cls: type) -> list[str]:
    """``cls``'s keys and, dotted, those of its sections (``optim.lr``), for suggestions."""
    keys = []
    for name, hint in _hints(cls).items():
        keys.append(name)
        sub = _PASSED_THROUGH.get((cls, name), (_dataclass_of(hint),))[0]
        keys += [f"{name}.{k}" for k in (_hints(sub) if sub is not None else ())]
    return keys


def _did_you_mean(unknown: list, known: list[str], prefix: str) -> str:
    """`` (did you mean optim.lr?)`` for the known keys closest to the unknown ones (a key of a section
    given at the top level, or a typo), else ""."""
    close = []
    for k in map(str, unknown):
        nested = [c for c in known if c.rsplit(".", 1)[-1] == k]
        close += nested[:1] or difflib.get_close_matches(k, known, n=1)
    return f" (did you mean {', '.join(prefix + c for c in close)}?)" if close else ""


def load_config(path: str | Path, sets: Iterable[str] = ()) -> TrainConfig:
    """Read a YAML training configuration with its ``_base_`` files merged in, then the dotted ``sets``
    (``["optim.lr=0.01"]``) applied (:mod:`prn_model.config_loading`); every file's values and every set
    value is checked (:func:`validate_config`); errors name the file (or ``--set``) and the key."""
    d = read_config_tree(path, check=validate_config)
    cfg = validate_config(d, str(path))
    return apply_sets(cfg, sets) if sets else cfg


def dotted_keys(cls: type | None = None) -> list[str]:
    """Every settable key of a :class:`TrainConfig`, dotted (``optim.lr``, ``augment.gridmask.prob``,
    ``model.depth``), for ``--set`` and its suggestions."""
    cls = TrainConfig if cls is None else cls
    keys = []
    for name, hint in _hints(cls).items():
        keys.append(name)
        passed = _PASSED_THROUGH.get((cls, name))
        if passed is not None:
            keys += [f"{name}.{k}" for k in _hints(passed[0]) if k not in passed[1]]
        elif _dataclass_of(hint) is not None:
            keys += [f"{name}.{k}" for k in dotted_keys(_dataclass_of(hint))]
    return keys


def apply_sets(cfg: TrainConfig, sets: Iterable[str], source: str = "--set") -> TrainConfig:
    """``cfg`` with dotted ``KEY=VALUE`` assignments applied (values read as YAML) and the result checked
    like a file (:func:`validate_config`, errors named ``--set: key: ...``). An unknown key is one line that
    names it and lists the nearest known keys."""
    assignments = parse_assignments(sets, source)
    known = dotted_keys()
    d = cfg.to_dict()
    for key, value in assignments.items():
        if key not in known:
            near = near_keys(key, known)
            hint = f" (did you mean {', '.join(near)}?)" if near else " (see `prn train --help`)"
            raise ConfigError(f"{source}: unknown key {key}{hint}")
        set_dotted(d, key, value)
    return validate_config(d, source)


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
    return validate_config(d, "<overrides>")


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _check_values(cfg: TrainConfig) -> list[str]:
    """The value ranges of a well-typed config, one problem per entry."""
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
    if not DEVICE_SPEC.fullmatch(cfg.device):
        problems.append(f"device must be auto, cpu, cuda or cuda:N, not {cfg.device!r}")
    if cfg.data.mp_context not in (None, "fork", "spawn", "forkserver"):
        problems.append(f"data.mp_context must be forkserver, spawn, fork or null, not {cfg.data.mp_context!r}")
    if cfg.data.prefetch_factor < 1:
        problems.append("data.prefetch_factor must be ≥ 1")
    problems += [f"loss.{k} must be ≥ 0, not {v}" for k, v in cfg.loss.items() if v < 0]
    try:
        PostProcessConfig(**cfg.postprocess)
    except ValueError as exc:
        problems.append(f"postprocess: {exc}")
    return problems


__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "GridMaskConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_sets",
    "config_from_dict",
    "dotted_keys",
    "load_config",
    "override",
    "save_config",
    "validate_config",
]
