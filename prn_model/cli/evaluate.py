"""CLI command ``prn evaluate``: the base network vs PRN over a store (PPGBF §3.5, PQ / SQ / RQ §4.2)."""

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
    grouping: Optional[str] = typer.Option(None, "--grouping", help="ppgbf (PRN, §3.5; the default) or panoptic_deeplab "
                                           "(§4.5 ablation: semantic things, no box gate, no foreground branch)."),
    box_iou: Optional[float] = typer.Option(None, "--box-iou", min=0.0, max=0.999, help="Box gate: a pixel joins a "
                                            "center only when their boxes' IoU exceeds this (default 0.5, §3.5)."),
    box_gate: Optional[bool] = typer.Option(None, "--box-gate/--no-box-gate", help="Apply the box gate (default on; "
                                            "off keeps the foreground filter, the §4.5 ablation)."),
    base_predictions: Optional[str] = typer.Option(None, "--base-predictions", help="Score the base from these "
                                                   "files:… / coco-results:… predictions at their original size, or "
                                                   "'store' for the store's round-tripped maps (default: the store's "
                                                   "own files: / coco-results: base when at hand)."),
    stuff_area: Optional[int] = typer.Option(None, "--stuff-area", min=0, help="Stuff regions under this many px become VOID (default: COCO 4096, Cityscapes 2048)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate only the first N done samples."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Scoring threads (default: the machine's cores, at most 8)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch intra-op threads (default: "
                                          "$PRN_THREADS, else 1; README 'Parallelism')."),
    as_json: bool = typer.Option(False, "--json", help="Print results.json's content instead of the table."),
    vis: int = typer.Option(0, "--vis", min=0, help="Also draw the first N samples (image | GT | base | PRN and "
                                                   "PRN's maps) as PNGs into OUT/vis/ (needs --out)."),
) -> None:
    """Score the base network and PRN over STORE (PQ / SQ / RQ / PQ_th / PQ_st) and print them side by side."""
    from ..devices import resolve_device
    from ..evaluate import evaluate_store, format_comparison, format_per_class
    from ..ppgbf import GROUPINGS

    if grouping is not None and grouping not in GROUPINGS:
        raise typer.BadParameter(f"--grouping must be one of {', '.join(GROUPINGS)}")
    resolve_device(device)  # an unknown or absent device is an error before any work, --base-only too
    if vis and out is None:
        raise typer.BadParameter("--vis N writes its pictures into --out: give --out")
    # flags override the checkpoint's postprocess: settings, which override the store's defaults
    post = {"grouping": grouping, "stuff_area": stuff_area, "box_iou": box_iou, "box_gate": box_gate}
    with progress(transient=True) as bar:
        task = bar.add_task("evaluate", total=None, rate="")

        def step(n: int, total: int) -> None:
            bar.update(task, completed=n, total=total)

        results = evaluate_store(store, checkpoint=checkpoint, out=out, device=device, batch=batch, gt=gt,
                                 base_only=base_only, post=post, limit=limit, on_progress=step, workers=workers,
                                 base_predictions=base_predictions, threads=threads)
    if as_json:
        typer.echo(json.dumps(results, indent=1, default=float))
    else:
        typer.echo(format_comparison(results))
        typer.echo(format_per_class(results["per_class_table"]))
        if out is not None:
            console.print(f"predictions and results.json in {out}")
    if vis:
        _draw_vis(store, None if base_only else checkpoint, device, post, vis, out / "vis")
        if not as_json:
            console.print(f"{vis} pictures in {out / 'vis'}")


def _draw_vis(store: str, checkpoint: Optional[Path], device: str, post: dict, n: int, folder: Path) -> None:
    """``--vis N``: the first N done samples drawn by :func:`prn_model.vis.draw_store_samples` with the
    post-processing settings the evaluation used."""
    import numpy as np
    from prn_data.store import open_store

    from ..checkpoint import load_checkpoint
    from ..devices import resolve_device
    from ..evaluate import postprocess_config
    from ..vis import draw_store_samples

    st = open_store(store)
    dev = resolve_device(device)
    model, run_cfg = load_checkpoint(checkpoint, dev) if checkpoint is not None else (None, None)
    cfg = postprocess_config(st.attrs, None if run_cfg is None else run_cfg.postprocess, post)
    indices = [int(i) for i in np.nonzero(st.done)[0]][:n]
    draw_store_samples(model, st, indices, folder, device=dev, cfg=cfg)
