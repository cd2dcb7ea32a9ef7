"""Errors that name the file and the problem, so bad input never surfaces as a NumPy traceback."""

from __future__ import annotations

from pathlib import Path


class PrnError(Exception):
    """Base class of every error prn raises on purpose (the CLI prints these without a traceback)."""


class DatasetError(PrnError):
    """A dataset file is missing, unreadable or inconsistent with its annotation.

    ``str(err)`` is ``"<path>: <problem>"``; ``err.path`` and ``err.problem`` hold the parts.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class StoreError(PrnError):
    """A store is not a prn store, has another schema version, or is damaged."""


class BaseNetworkError(PrnError):
    """A base network's prediction is missing or malformed, or its adapter cannot be loaded."""


def safe_join(root: str | Path, relative: str) -> Path:
    """Join ``relative`` under ``root`` and refuse a result outside it (``../``, absolute paths, links).

    Raises :class:`DatasetError` naming the offending path.
    """
    root_p = Path(root).resolve()
    candidate = (root_p / relative).resolve()
    if candidate != root_p and root_p not in candidate.parents:
        raise DatasetError(Path(root) / relative, f"path escapes its root {root_p}")
    return candidate
