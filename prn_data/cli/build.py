"""``prn build``: generate a store of PRN inputs and targets in parallel with Dask (README "A tour", step 1)."""

from __future__ import annotations

import time
from typing import Optional

import typer

from .app import app, console, progress


@app.command()
def build(
    dataset: str = typer.Argument(..., help="coco:PATH, cityscapes:PATH or synthetic[:N]."),
    split: str = typer.Option(..., "--split", help="Split, e.g. val2017, train, val."),
    base: str = typer.Option("none", "--base", help="Base network: simulated, files:DIR, python:module:factory, "
                             "or none (ground truth only)."),
    out: Optional[str] = typer.Option(None, "--out", help="Store folder or fsspec URL (not a .zip: "
                                      "`prn pack` makes one); default cache/<dataset>-<split>-<base>.zarr."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Build only the first N samples."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Local worker threads (processes with "
                                          "--scheduler processes); default: the machine's cores."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Address of a running dask.distributed "
                                            "scheduler, or 'processes'; default: a local in-process cluster "
                                            "of --workers threads."),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", min=1, help="Samples per shard (default 256; "
                                             "a resumed store keeps its own)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing store first instead of resuming."),
    short: int = typer.Option(640, "--short", min=0, help="Resize: shorter side (0 = keep the original size)."),
    max_long: int = typer.Option(800, "--max-long", min=1, help="Resize: longer side at most this."),
    image_codec: str = typer.Option("zstd", "--image-codec", help="zstd (lossless, any Zarr reader), jpegxl "
                                    "(lossless, ~45% smaller) or jpeg (lossy, quality 90, ~85% smaller); "
                                    "jpegxl/jpeg stores need prn installed to decode the image."),
    sigma: float = typer.Option(8.0, "--sigma", help="Center Gaussians' standard deviation, pixels at store "
                                "resolution (Panoptic-DeepLab's 8 at COCO's 640-800 px; scale it with "
                                "the image size for smaller stores)."),
    small_instance_area: int = typer.Option(4096, "--small-instance-area", min=0, help="Thing segments "
                                            "smaller than this (pixels at store resolution) weigh 3 in the "
                                            "semantic loss."),
) -> None:
    """Build (or resume) a Zarr store: resized images, ground-truth targets and base-network inputs.

    Running the same command again resumes: samples already done are skipped. Samples that fail are listed
    and the command exits with status 1; fix the files and run it again to fill them in.
    """
    from ..build import BuildConfig, build as run_build
    from ..errors import PrnError
    from ..resize import ResizePolicy
    from ..targets import TargetParams

    try:
        params = TargetParams(sigma=sigma, small_instance_area=small_instance_area)
    except ValueError as exc:
        raise PrnError(f"prn build: {exc}") from None
    cfg = BuildConfig(dataset=dataset, split=split, base=base, out=out, limit=limit, workers=workers,
                      scheduler=scheduler, shard_size=shard_size, overwrite=overwrite,
                      policy=ResizePolicy(short=short, max_long=max_long), image_codec=image_codec, params=params)
    with progress() as bar:
        task = bar.add_task("build", total=None, rate="")
        t0 = time.perf_counter()  # the rate includes start-up, as a user experiences it

        def on_progress(done: int, total: int, advance: int) -> None:
            rate = done / max(time.perf_counter() - t0, 1e-6)
            bar.update(task, total=total, completed=done, rate=f"{rate:.1f} samples/s")

        result = run_build(cfg, on_progress=on_progress,
                           on_dashboard=lambda url: console.print(f"Dask dashboard (this machine only): {url}"))
    console.print(f"{result.store}: {result.built} built, {result.skipped} already done, "
                  f"{len(result.failures)} failed of {result.n_samples} in {result.seconds:.1f} s", soft_wrap=True)
    if result.failures:
        for f in result.failures:
            console.print(f"[red]failed[/red] sample {f['index']}: {f['file']}: {f['error']}", soft_wrap=True)
        console.print("fix these files and run the same command again to fill them in")
        raise typer.Exit(1)
