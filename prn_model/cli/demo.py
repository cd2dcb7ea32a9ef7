"""``prn demo``: synthetic data → stores → COCO sample → training → base, rule baseline, untrained PRN and PRN on
the test split (:mod:`prn_model.demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..demo_options import DEMO_BASE, DEMO_MAX_SIZE, DEMO_MIN_SIZE, DemoOptions  # no torch: defaults only
from .app import app, console


def _size(text: str, name: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{name} must look like HxW, e.g. 96x128; got {text!r}") from None
    return h, w


@app.command()
def demo(
    out: Path = typer.Option(Path("cache/demo"), "--out", help="Folder for everything the demo makes."),
    train_images: int = typer.Option(DemoOptions.train_images, "--train-images", min=1, help="Synthetic training scenes."),
    val_images: int = typer.Option(DemoOptions.val_images, "--val-images", min=1, help="Synthetic validation scenes (for tuning)."),
    test_images: int = typer.Option(DemoOptions.test_images, "--test-images", min=1, help="Synthetic test scenes (the reported table)."),
    min_size: str = typer.Option("x".join(map(str, DEMO_MIN_SIZE)), "--min-size", help="Smallest synthetic scene, HxW."),
    max_size: str = typer.Option("x".join(map(str, DEMO_MAX_SIZE)), "--max-size", help="Largest synthetic scene, HxW."),
    iters: Optional[int] = typer.Option(None, "--iters", min=1, help="Training iterations (default: the config's)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Training batch (default: the config's)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Training YAML (default workflows/demo.yaml)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base network of the synthetic stores (default: "
                                       "the demo's simulated settings)."),
    coco_limit: Optional[int] = typer.Option(None, "--coco-limit", min=1, help="Build only N COCO sample images."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Build workers (default: the cores)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="As prn build: a scheduler address, "
                                            "'threads', or default a local process cluster."),
    device: str = typer.Option("auto", "--device", help="Training / evaluation device: auto | cpu | cuda."),
) -> None:
    """Run the whole toolkit on the CPU: synthetic COCO-panoptic data and stores, the real COCO sample and
    its drawing, PRN training, and the test-split table (base, rule baseline, untrained PRN, PRN, the gain's
    95% interval); everything under OUT (re-runs reuse it)."""
    from ..demo import run_demo

    opts = DemoOptions(train_images=train_images, val_images=val_images, test_images=test_images,
                       min_size=_size(min_size, "--min-size"),
                       max_size=_size(max_size, "--max-size"), iters=iters, batch_size=batch_size,
                       config=None if config is None else str(config), base=base or DEMO_BASE,
                       coco_limit=coco_limit, workers=workers, scheduler=scheduler, device=device)
    report = run_demo(out, opts, console=console)
    d, (lo, hi) = report["diff"], report["gain_ci95"]
    console.print(f"PRN − base on {report['images']} test images: PQ {d['pq']:+.2f} (95% interval [{lo:+.2f}, "
                  f"{hi:+.2f}]), SQ {d['sq']:+.2f}, RQ {d['rq']:+.2f}; all results in "
                  f"{Path(report['artifacts']['results'])}", soft_wrap=True)
