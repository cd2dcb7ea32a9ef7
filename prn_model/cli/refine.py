"""CLI command ``prn refine``: PRN on new images and a base network's predictions, without a store or
ground truth (:mod:`prn_model.refine`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import typer

from .app import app, console, progress


@app.command()
def refine(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="PRN checkpoint (from prn train)."),
    images: str = typer.Option(..., "--images", help="A folder of JPEG/PNG images, or a dataset spec: coco:PATH, "
                                                    "cityscapes:PATH, synthetic[:N] (with --split)."),
    base: str = typer.Option(..., "--base", help="The base network's predictions: files:DIR, coco-results:JSON,DIR, "
                                                 "python:mod:fn (simulated only on a dataset)."),
    out: Path = typer.Option(..., "--out", help="Output folder: panoptic.json + panoptic/<image>.png."),
    split: Optional[str] = typer.Option(None, "--split", help="Dataset split, for a dataset spec as --images."),
    batch: int = typer.Option(1, "--batch", min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Threads preparing images ahead of the "
                                                                        "network (default: 0 on the CPU, 2 on a GPU)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch intra-op threads (default: "
                                          "$PRN_THREADS, else 1; README 'Parallelism')."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Refine an image the base has no prediction "
                                                                      "for from an empty one."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the predictions already in --out."),
) -> None:
    """Refine a base network's panoptic predictions of new images with PRN; write them as COCO panoptic
    PNG + JSON at each image's original size (read back by --base files:OUT, scored by prn pq)."""
    from ..refine import check_out, load_refiner, open_images, refine_to_folder

    check_out(out, overwrite)  # before the checkpoint is read
    imgs = open_images(images, split)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refiner = load_refiner(checkpoint, device)
    for w in caught:
        console.print(f"[yellow]warning:[/yellow] {w.message}")
    if workers is None:
        workers = 0 if refiner.device.type == "cpu" else 2
    with progress() as bar:
        task = bar.add_task("refine", total=len(imgs), rate="")
        summary = refine_to_folder(imgs, base, refiner, out, batch=batch, workers=workers,
                                   allow_missing=allow_missing, overwrite=overwrite, threads=threads,
                                   on_progress=lambda n, total: bar.update(task, completed=n))
    note = f" ({summary['missing']} without a base prediction)" if summary["missing"] else ""
    typer.echo(f"refined {summary['images']} images{note}: {summary['json']} + {summary['png_dir']}/")
