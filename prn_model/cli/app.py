"""The Typer application behind the ``prn`` command: the data commands of :mod:`prn_data.cli` joined with
the model commands of this package.

The data commands (and the ``base`` group) are taken over first, in data-path order; each model command
module registers itself on :data:`app` after them. Heavy imports (torch, dask, zarr) happen inside the
command functions so ``prn --help`` stays fast.
"""

from __future__ import annotations

import typer

from prn_data.cli import app as data_app
from prn_data.progress import console, progress

app = typer.Typer(
    name="prn",
    help="Panoptic Refinement Network toolkit: build Zarr stores of PRN inputs and targets, inspect and "
    "share them, train PRN and evaluate it against its base network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.registered_commands.extend(data_app.registered_commands)
app.registered_groups.extend(data_app.registered_groups)

__all__ = ["app", "console", "progress"]
