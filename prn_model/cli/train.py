"""CLI command ``prn train``: train PRN on a precomputed store (paper §4.2), on the CPU, one GPU, or several
under ``torchrun --nproc_per_node=K $(which prn) train ...``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from .app import app, console


@app.command()
def train(
    config: Path = typer.Argument(..., help="Training configuration (YAML), e.g. workflows/demo.yaml; it may "
                                  "inherit from others (_base_: coco.yaml)."),
    assignments: Optional[list[str]] = typer.Argument(None, metavar="KEY=VALUE", show_default=False,
                                                      help="More --set assignments (after CONFIG or --set)."),
    sets: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", show_default=False,
                                             help="Override any config key, dotted, the value read as YAML: "
                                             "--set optim.lr=0.01 model.depth=50 augment.crop=[256,256]."),
    store: Optional[str] = typer.Option(None, "--store", help="Training store: folder, .zip or URL."),
    val_store: Optional[str] = typer.Option(None, "--val-store", help="Validation store (periodic PQ / loss)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (config, checkpoints, metrics.jsonl, log.txt): new or "
                                     "empty, or a prn run's with --resume."),
    iters: Optional[int] = typer.Option(None, "--iters", min=0, help="Total iterations (cosine schedule length)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in the run folder, "
                              "with the run's settings."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Global batch (split over torchrun processes)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="DataLoader worker processes."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Initial learning rate."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of weights, sampling and augmentation."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
    pretrained: Optional[Path] = typer.Option(None, "--pretrained", help="Local torchvision ResNet state dict "
                                              "(.pth) for the encoder's ImageNet initialisation (model.pretrained)."),
    tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard", help="Also log every "
                                               "figure to RUN/tensorboard (needs the tensorboard extra)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Replace a damaged sample by the next readable one "
                                  "and log it (console, skipped.jsonl) instead of stopping."),
) -> None:
    """Train PRN on STORE as CONFIG says; --set and every option override the config file (the named
    options last)."""
    from ..config import load_config, override
    from ..evaluate import validation
    from ..train import train as run_training

    cfg = load_config(config, [*(sets or []), *(assignments or [])])
    cfg = override(
        cfg,
        **{
            "data.store": store,
            "data.val_store": val_store,
            "out": None if out is None else str(out),
            "iters": iters,
            "device": device,
            "data.batch_size": batch_size,
            "data.num_workers": workers,
            "optim.lr": lr,
            "seed": seed,
            "compile": compile,
            "tensorboard": tensorboard,
            "model.pretrained": None if pretrained is None else str(pretrained),
            "data.skip_bad": True if skip_bad else None,  # the config's data.skip_bad otherwise
        },
    )
    if cfg.out is None:
        cfg = override(cfg, out=str(Path("cache") / "runs" / config.stem))
    summary = run_training(cfg, resume=resume, validate=validation(cfg))
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    last = summary["last_metrics"]
    if last:
        console.print(f"step {summary['step']}: loss {last['loss']:.4g}; run folder {summary['out']}")
    else:
        console.print(f"nothing to do: the run in {summary['out']} is already at step {summary['step']}")
