"""CLI command ``prn evaluate``: the base network vs PRN over a store (PPGBF §3.5, PQ / SQ / RQ §4.2)."""

from __future__ import annotations

import json
from dataclasses import replace
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
    from prn_data.store import open_store

    from ..devices import resolve_device
    from ..evaluate import default_postprocess_config, evaluate_store, format_comparison
    from ..ppgbf import GROUPINGS

    if grouping not in GROUPINGS:
        raise typer.BadParameter(f"--grouping must be one of {', '.join(GROUPINGS)}")
    resolve_device(device)  # an unknown or absent device is an error before any work, --base-only too
    cfg = replace(default_postprocess_config(open_store(store).attrs), grouping=grouping)
    if stuff_area is not None:
        cfg = replace(cfg, stuff_area=stuff_area)
    with progress(transient=True) as bar:
        task = bar.add_task("evaluate", total=None, rate="")

        def step(n: int, total: int) -> None:
            bar.update(task, completed=n, total=total)

        results = evaluate_store(store, checkpoint=checkpoint, out=out, device=device, batch=batch, gt=gt,
                                 base_only=base_only, cfg=cfg, limit=limit, on_progress=step, workers=workers)
    if as_json:
        typer.echo(json.dumps(results, indent=1, default=float))
    else:
        typer.echo(format_comparison(results))
        if out is not None:
            console.print(f"predictions and results.json in {out}")
