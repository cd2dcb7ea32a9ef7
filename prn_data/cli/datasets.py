"""CLI commands for datasets: ``prn synthetic`` writes a generated dataset, ``prn dataset`` describes and
checks one."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import DatasetError, PrnError
from .app import app, console, progress


def _size(text: str, option: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise PrnError(f"{option} must be HxW, e.g. 160x224; got {text!r}") from None
    return h, w


@app.command()
def synthetic(
    out: Path = typer.Argument(..., help="Dataset root to write (official COCO panoptic layout)."),
    split: str = typer.Option("train", "--split", help="Split name; the scenes depend on it."),
    num: int = typer.Option(8, "--num", min=1, help="Number of scenes."),
    seed: int = typer.Option(0, "--seed", help="Seed; with split and index it fixes every scene."),
    min_size: str = typer.Option("160x224", "--min-size", help="Smallest scene size, HxW."),
    max_size: str = typer.Option("256x320", "--max-size", help="Largest scene size, HxW."),
) -> None:
    """Write NUM seeded synthetic panoptic scenes (textured stuff, shapes as things, some crowd) to OUT."""
    from ..datasets.synthetic import SyntheticConfig, write_synthetic

    lo, hi = _size(min_size, "--min-size"), _size(max_size, "--max-size")
    config = SyntheticConfig(seed=seed, min_size=lo, max_size=hi)
    with progress() as bar:
        task = bar.add_task(f"synthetic {split}", total=num, rate="")
        json_path = write_synthetic(out, split, num, config, on_image=lambda i: bar.advance(task))
    console.print(f"wrote {num} scenes: {json_path}")


@app.command("dataset")
def dataset(
    spec: str = typer.Argument(..., help="coco:PATH, cityscapes:PATH or synthetic[:N]."),
    split: str = typer.Option(..., "--split", help="Split, e.g. val2017 or val."),
    check: bool = typer.Option(False, "--check", help="Load every sample and report the ones that fail."),
) -> None:
    """Print a dataset's description (JSON); with --check, read every sample and list the failures."""
    from ..datasets import open_dataset

    ds = open_dataset(spec, split)
    desc = ds.describe() | {"categories": len(ds.categories), "things": len(ds.categories.thing_train_ids)}
    typer.echo(json.dumps(desc, indent=2))
    if not check:
        return
    failures: list[str] = []
    segments = 0
    with progress() as bar:
        task = bar.add_task(f"check {ds.name}/{split}", total=len(ds), rate="")
        for i in range(len(ds)):
            try:
                segments += len(ds.load(i).segments)
            except DatasetError as exc:
                failures.append(str(exc))
            bar.advance(task)
    for f in failures:
        console.print(f"[red]failed:[/red] {f}")
    console.print(f"{len(ds) - len(failures)}/{len(ds)} samples read, {segments} segments")
    if failures:
        raise DatasetError(None, f"{len(failures)} of {len(ds)} samples failed")
