"""Reading training configurations as the field does (README "Training"): YAML files that inherit from
others (``_base_``) and dotted ``KEY=VALUE`` overrides. Dict-level only: the typed check of the result is
:func:`prn_model.config.validate_config`.

- ``_base_: coco.yaml`` (or a list of files) in a YAML file: the named files (paths relative to the file
  that names them, any number of levels) are read first, in order, and the file's own values are merged
  into them deeply, so a child states only what differs; a mapping merges key by key, anything else (a
  number, a list, ``null``) replaces. A file that inherits from itself, directly or not, is refused.
- ``--set optim.lr=0.01 model.widths=[8,16,32,64]``: the value is read as YAML (a number, ``true``,
  ``null``, a list ...), as in a YAML file.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from prn_data.errors import PrnError

BASE_KEY = "_base_"


class ConfigError(PrnError):
    """A training configuration file is unreadable or has unknown or ill-typed fields."""


class YamlLoader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, but ``1e-3`` and ``1.0e3`` are numbers, as in YAML 1.2 and JSON
    (PyYAML alone reads them as strings, which the strict check would then refuse)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path`` (None when empty); errors name the file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return yaml.load(text, Loader=YamlLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None


def read_config_tree(path: str | Path, check: Callable[[dict, str], Any] | None = None,
                     _chain: tuple[Path, ...] = ()) -> Any:
    """The configuration in ``path`` with its ``_base_`` files merged in (module docstring), without the
    ``_base_`` key. ``check(d, source)`` is called on each file's own values (so a wrong value is named
    with the file that holds it). A non-mapping document is returned as is (the caller's check names it)."""
    p = Path(path)
    here = p.resolve()
    if here in _chain:
        cycle = " → ".join(str(c) for c in _chain[_chain.index(here):] + (here,))
        raise ConfigError(f"{p}: {BASE_KEY} cycle: {cycle}")
    d = read_yaml(p)
    if d is None:
        d = {}
    if not isinstance(d, dict):
        return d
    bases = d.pop(BASE_KEY, None)
    if check is not None:
        check(d, str(p))
    if bases is None:
        return d
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{p}: {BASE_KEY}: expected a file name or a list of file names, got {bases!r}")
    merged: dict = {}
    for name in bases:
        base_path = p.parent / name
        if not base_path.is_file():
            raise ConfigError(f"{p}: {BASE_KEY}: no such file {base_path}")
        base = read_config_tree(base_path, check, _chain + (here,))
        if not isinstance(base, dict):
            raise ConfigError(f"{base_path}: top level: expected a mapping, got {base!r}")
        merged = deep_merge(merged, base)
    return deep_merge(merged, d)


def deep_merge(base: dict, child: dict) -> dict:
    """``child`` merged into a copy of ``base``: where both hold a mapping the merge recurses, elsewhere the
    child's value replaces the base's (lists and ``null`` included)."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_assignments(items: Iterable[str], source: str = "--set") -> dict[str, Any]:
    """``{"optim.lr": 0.01, ...}`` from ``["optim.lr=0.01", ...]``, each value read as YAML. A key given
    twice with different values is refused (which one wins would be a guess)."""
    out: dict[str, Any] = {}
    for text in items:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{source}: {text!r}: expected KEY=VALUE (a dotted key, e.g. optim.lr=0.01)")
        try:
            value = yaml.load(raw, Loader=YamlLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: {key}: value {raw!r} is not valid YAML "
                              f"({' '.join(str(exc).split())})") from None
        if key in out and out[key] != value:
            raise ConfigError(f"{source}: {key} given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def set_dotted(d: dict, key: str, value: Any) -> None:
    """``d[a][b][c] = value`` for ``key`` "a.b.c", making (or replacing a ``null`` by) the mappings on the
    way: ``augment.gridmask.prob=0.5`` where ``gridmask`` is null gives a GridMask of defaults but that."""
    *parents, leaf = key.split(".")
    node = d
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def near_keys(key: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The known keys closest to an unknown one: those ending in its last part (``lr`` → ``optim.lr``),
    then the closest spellings (``optim.lrr`` → ``optim.lr``)."""
    known = list(known)
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in known if k.rsplit(".", 1)[-1] == leaf and k != key]
    close = difflib.get_close_matches(key, known, n=n, cutoff=0.6)
    out: list[str] = []
    for k in same_leaf + close:
        if k not in out:
            out.append(k)
    return out[:n]


__all__ = [
    "BASE_KEY",
    "ConfigError",
    "YamlLoader",
    "deep_merge",
    "near_keys",
    "parse_assignments",
    "read_config_tree",
    "read_yaml",
    "set_dotted",
]
