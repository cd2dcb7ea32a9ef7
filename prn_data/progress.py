"""The progress bar every long loop uses (build, training, evaluation), and the console it writes to.

Library code imports it from here; the CLI (``prn_data.cli``, ``prn_model.cli``) shares the same console.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def progress(transient: bool = False) -> Progress:
    """A rich progress bar showing done/total, rate-derived ETA and elapsed time (written to stderr)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )


__all__ = ["console", "progress"]
