"""The Typer application of the data commands, and the entry-point wrapper every ``prn`` app runs under.

Each data command lives in its own module of this package and registers itself on :data:`app` (or on
:data:`base_app`); heavy imports (dask, zarr, matplotlib) happen inside the command functions so
``prn --help`` stays fast. The ``prn`` console command is :mod:`prn_model.cli`, which joins these commands
with the model's; the progress bar and console live in :mod:`prn_data.progress`.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from ..errors import PrnError
from ..progress import console, progress

app = typer.Typer(
    name="prn",
    help="prn's data commands: generate and describe datasets, build Zarr stores of PRN inputs and targets, "
    "inspect, verify and share them, and score COCO panoptic predictions (PQ).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
base_app = typer.Typer(help="Base panoptic networks: export their predictions.", no_args_is_help=True)
app.add_typer(base_app, name="base")


def run(cli: typer.Typer) -> None:
    """Run ``cli``, printing prn's own errors as one line (no traceback), exit status 2."""
    try:
        cli()
    except PrnError as exc:
        # unwrapped (one line per line of the message, whatever the terminal's width) and not read as markup
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        sys.exit(2)


__all__ = ["app", "base_app", "console", "progress", "run"]
