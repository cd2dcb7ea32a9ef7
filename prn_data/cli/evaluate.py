"""CLI commands ``prn evaluate`` (base network vs PRN over a store) and ``prn pq`` (panopticapi-style PQ
of any COCO panoptic pair)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .app import app, console, progress


@app.command()
def evaluate(
    store: str = typer.Option(..., "--store", help="Validation store: folder, .zip or URL."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="PRN checkpoint (from prn train)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for predictions (COCO panoptic) and results.json."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    batch: int = typer.Option(1, "--batch", min=1, help="Images per forward pass."),
    gt: Optional[Path] = typer.Option(None, "--gt", help="The dataset's root, if not where the store recorded it."),
    base_only: bool = typer.Option(False, "--base-only", help="Score the base network alone (no checkpoint needed)."),
    grouping: str = typer.Option("ppgbf", "--grouping", help="ppgbf (PRN, §3.5) or panoptic_deeplab (§4.5 ablation)."),
    stuff_area: Optional[int] = typer.Option(None, "--stuff-area", min=0, help="Stuff regions under this many px become VOID (default: COCO 4096, Cityscapes 2048)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate only the first N done samples."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Scoring threads (default: the machine's cores, at most 8)."),
    as_json: bool = typer.Option(False, "--json", help="Print results.json's content instead of the table."),
) -> None:
    """Score the base network and PRN over STORE (PQ / SQ / RQ / PQ_th / PQ_st) and print them side by side."""
    from dataclasses import replace

    from prn_data.store import open_store
    from prn_model.evaluate import default_postprocess_config, evaluate_store, format_comparison
    from prn_model.ppgbf import GROUPINGS

    if grouping not in GROUPINGS:
        raise typer.BadParameter(f"--grouping must be one of {', '.join(GROUPINGS)}")
    cfg = replace(default_postprocess_config(open_store(store).attrs), grouping=grouping)
    if stuff_area is not None:
        cfg = replace(cfg, stuff_area=stuff_area)
    with progress(transient=True) as bar:
        task = bar.add_task("evaluate", total=None, rate="")

        def step(n: int, total: int) -> None:
            bar.update(task, completed=n, total=total)

        results = evaluate_store(store, checkpoint, out, device, batch, gt, base_only, cfg, limit, on_progress=step, workers=workers)
    if as_json:
        typer.echo(json.dumps(results, indent=1, default=float))
    else:
        typer.echo(format_comparison(results))
        if out is not None:
            console.print(f"predictions and results.json in {out}")


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
    from prn_model.pq import _load_json, format_table, pq_compute

    for d in (gt_dir, pred_dir):
        if not d.is_dir():
            from prn_data.errors import DatasetError

            raise DatasetError(d, "PNG folder does not exist")
    total = len(_load_json(gt_json)["annotations"])
    with progress(transient=True) as bar:
        task = bar.add_task("pq", total=total, rate="")
        results = pq_compute(gt_json, gt_dir, pred_json, pred_dir, workers=workers,
                             progress=lambda n: bar.update(task, completed=n))
    if as_json:
        typer.echo(json.dumps(results, indent=1, default=float))
    else:
        cats = _load_json(gt_json).get("categories")
        typer.echo(format_table(results, cats, per_class=per_class))
