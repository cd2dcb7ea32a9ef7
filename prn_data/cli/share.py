"""CLI commands: ``prn pack`` and ``prn unpack`` (share a store as one zip that opens in place)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import typer
from rich.progress import Progress

from .app import app, console, progress


def _bar(description: str) -> tuple[Progress, Callable[[int, int], None]]:
    """A progress bar and the ``(done, total)`` callback that advances it."""
    bar = progress(transient=True)
    task = bar.add_task(description, total=None, rate="")

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


@app.command()
def pack(
    store: str = typer.Argument(..., help="Store folder, or URL of one (s3://…) to pack."),
    out: Path = typer.Argument(..., help="The zip file to write (e.g. coco-val2017-simulated.zip)."),
    deflate: bool = typer.Option(False, "--deflate", help="Deflate members (default: STORED, best for compressed chunks)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Pack a store into a single zip file that zarr (and `prn info/show/verify`) opens in place."""
    from ..share import pack as do_pack

    bar, update = _bar("pack")
    with bar:
        z = do_pack(store, out, compression="deflated" if deflate else "stored", overwrite=overwrite, progress=update)
    console.print(f"packed {store} → {z} ({z.stat().st_size / 1e6:.1f} MB)")
    typer.echo(str(z))


@app.command()
def unpack(
    zip_file: Path = typer.Argument(..., help="A zip written by `prn pack`."),
    out: Path = typer.Argument(..., help="Store directory to create."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it is a prn store (nothing else "
                                   "is replaced)."),
) -> None:
    """Extract a packed store back into a directory (the reverse of `prn pack`)."""
    from ..share import unpack as do_unpack

    bar, update = _bar("unpack")
    with bar:
        d = do_unpack(zip_file, out, overwrite=overwrite, progress=update)
    console.print(f"unpacked {zip_file} → {d}")
    typer.echo(str(d))
