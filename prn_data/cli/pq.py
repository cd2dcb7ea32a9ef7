"""CLI command ``prn pq``: panopticapi-style PQ of any COCO panoptic pair (:mod:`prn_data.pq`, NumPy only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import DatasetError
from .app import app, progress


@app.command()
def pq(
    gt_json: Path = typer.Argument(..., help="Ground truth COCO panoptic JSON."),
    gt_dir: Path = typer.Argument(..., help="Folder of the ground-truth PNGs."),
    pred_json: Path = typer.Argument(..., help="Predicted COCO panoptic JSON."),
    pred_dir: Path = typer.Argument(..., help="Folder of the predicted PNGs."),
    as_json: bool = typer.Option(False, "--json", help="Print pq_compute's dict (All/Things/Stuff, per_class; fractions)."),
    per_class: bool = typer.Option(False, "--per-class", help="Also list every class in the table."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Threads (default: the machine's cores, at most 8)."),
) -> None:
    """PQ / SQ / RQ of a COCO panoptic prediction, exactly as panopticapi's pq_compute."""
    from ..pq import format_table, load_panoptic_json, pq_compute

    for d in (gt_dir, pred_dir):
        if not d.is_dir():
            raise DatasetError(d, "PNG folder does not exist")
    total = len(load_panoptic_json(gt_json)["annotations"])
    with progress(transient=True) as bar:
        task = bar.add_task("pq", total=total, rate="")
        results = pq_compute(gt_json, gt_dir, pred_json, pred_dir, workers=workers,
                             progress=lambda n: bar.update(task, completed=n))
    if as_json:
        typer.echo(json.dumps(results, indent=1, default=float))
    else:
        cats = load_panoptic_json(gt_json).get("categories")
        typer.echo(format_table(results, cats, per_class=per_class))
