"""CLI: ``prn base export`` — write a base network's predictions in COCO panoptic format."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import BaseNetworkError
from .app import base_app, progress


@base_app.command("export")
def export(
    dataset: str = typer.Argument(..., help="Dataset spec: coco:PATH, cityscapes:PATH or synthetic[:N]."),
    split: str = typer.Option(..., "--split", help="Dataset split, e.g. val2017 or val."),
    base: str = typer.Option(..., "--base", help="Base spec: files:DIR, coco-results:JSON,DIR, python:mod:fn, "
                                                     "simulated[:k=v,...]."),
    out: Path = typer.Option(..., "--out", help="Output folder: panoptic.json + panoptic/<image>.png (+ .npz probabilities)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Export only the first N images."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Record an empty prediction for images the base has "
                                                                      "none for."),
    batch: int = typer.Option(4, "--batch", min=1, help="Images per base-network call."),
) -> None:
    """Write any base network's predictions as COCO panoptic PNG + JSON, so `files:OUT` reads them back
    and panopticapi can score them."""
    from ..base import open_base
    from ..base.export import export_predictions
    from ..datasets import open_dataset

    ds = open_dataset(dataset, split)
    net = open_base(base, ds.categories, allow_missing=allow_missing)
    if net is None:
        raise BaseNetworkError("base 'none' has no predictions to export")
    n = len(ds) if limit is None else min(limit, len(ds))
    with progress() as bar:
        task = bar.add_task("export", total=n, rate="")
        path = export_predictions(ds, net, out, limit=n, batch=batch,
                                  on_progress=lambda k: bar.advance(task, k))
    typer.echo(f"wrote {n} predictions to {path}")
