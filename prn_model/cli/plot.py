"""CLI command ``prn plot``: training curves of run folders as one PNG (:mod:`prn_model.plot`)."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, console


@app.command()
def plot(
    runs: list[Path] = typer.Argument(..., help="Run folders of prn train (their metrics.jsonl and val.jsonl)."),
    out: Path = typer.Option(..., "--out", help="The PNG to write."),
    dpi: int = typer.Option(100, "--dpi", min=20, max=600, help="Resolution (dots per inch)."),
) -> None:
    """Draw the loss terms, learning rate, samples/s and validation PQ of one run, or of several overlaid
    (one colour per run folder, for ablations), to a PNG."""
    from ..plot import plot_runs

    written = plot_runs(runs, out, dpi=dpi)
    console.print(f"wrote {written} ({len(runs)} run{'s' if len(runs) > 1 else ''})", soft_wrap=True,
                  markup=False)
