"""Parsing a base network's ``--base`` spec: ``kind[:rest]`` with ``key=value`` options (README "Base
networks (`--base`)")."""

from __future__ import annotations

from ..errors import BaseNetworkError

BASE_KINDS = ("none", "files", "coco-results", "python", "simulated")


def parse_options(text: str, spec: str) -> dict[str, str]:
    """``"a=1,b=x"`` → ``{"a": "1", "b": "x"}``; a malformed item raises :class:`BaseNetworkError`."""
    out: dict[str, str] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BaseNetworkError(f"base spec {spec!r}: expected key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def split_spec(spec: str) -> tuple[str, str]:
    """``"kind:rest"`` → ``(kind, rest)``; checks that ``kind`` is known."""
    kind, _, rest = spec.strip().partition(":")
    if kind not in BASE_KINDS:
        raise BaseNetworkError(f"unknown base network spec {spec!r}; expected one of {', '.join(BASE_KINDS)}")
    return kind, rest


__all__ = ["BASE_KINDS", "parse_options", "split_spec"]
