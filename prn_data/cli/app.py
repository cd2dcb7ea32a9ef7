"""The Typer application behind the ``prn`` command, and the progress bar every long loop uses.

Each command lives in its own module of this package and registers itself on :data:`app` (or on one of
its sub-apps); heavy imports (torch, dask, zarr) happen inside the command functions so ``prn --help``
stays fast.
"""

from __future__ import annotations

import typer
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

app = typer.Typer(
    name="prn",
    help="Panoptic Refinement Network toolkit: build Zarr stores of PRN inputs and targets, inspect and "
    "share them, train PRN and evaluate it against its base network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
base_app = typer.Typer(help="Base panoptic networks: export their predictions.", no_args_is_help=True)
app.add_typer(base_app, name="base")

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
