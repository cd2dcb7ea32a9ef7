"""CLI commands: ``prn info``, ``prn show``, ``prn stats``, ``prn verify`` (inspect a store; README "A tour").

Every STORE argument is a path or URL :func:`prn_data.store.open_store` accepts: a folder, a ``.zip``,
``http(s)://…``, ``s3://…``; all four commands only read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..errors import StoreError
from .app import app, progress

if TYPE_CHECKING:  # for annotations only: the commands open stores inside their functions
    from ..store import Store


def _bar_callback(bar: Progress, description: str) -> Callable[[int, int], None]:
    """A task on ``bar`` and the ``(done, total)`` callback that updates it."""
    task = bar.add_task(description, total=None, rate="")

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return update


@app.command()
def info(
    store: str = typer.Argument(..., help="Store folder, .zip or URL."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (for scripts)."),
) -> None:
    """Summary of a store: dataset, samples done, canvas, per-array layout, codecs, sizes, provenance."""
    from ..inspect import render_info, store_info

    data = store_info(store)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        # Wide enough for the array table even when piped (rich assumes 80 columns then).
        render_info(data, Console(width=max(Console().width, 140)))


def _index_by_id(st: Store, image_id: str) -> int:
    ids = [str(v) for v in st.values("image_id")]
    try:
        return ids.index(image_id)
    except ValueError:
        raise StoreError(f"{st.url}: no sample with image id {image_id!r}") from None


@app.command()
def show(
    store: str = typer.Argument(..., help="Store folder, .zip or URL."),
    index: Optional[int] = typer.Argument(None, help="Sample index (0-based)."),
    by_id: Optional[str] = typer.Option(None, "--by-id", help="Select the sample by its image id instead."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write; default ./<store>-<index>-<image id>.png."),
    dpi: int = typer.Option(80, "--dpi", min=20, max=600, help="Resolution: the PNG is 12 in wide (4 panels of 3 in) at this dpi, as high as the image's aspect makes it."),
) -> None:
    """Draw one sample's stored maps like the paper's Fig. 4: image, semantic, panoptic, centers, offsets, boxes
    (GT and base on one colour scale), foreground (0–1). Predictions of a model: prn vis."""
    from ..show import draw_sample
    from ..store import open_store

    if (index is None) == (by_id is None):
        raise StoreError("give exactly one of INDEX or --by-id IMAGE_ID")
    st = open_store(store, mode="r")
    i = _index_by_id(st, by_id) if by_id is not None else int(index)
    if not 0 <= i < len(st):
        raise StoreError(f"{store}: sample {i} out of range 0..{len(st) - 1}")
    sample = st.read_sample(i)
    if out is None:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(store.rstrip("/")).stem or "store")
        tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", sample["image_id"])
        out = Path.cwd() / f"{stem}-{i}-{tag}.png"
    title = (f"{st.attrs.get('dataset_name', '')} {st.attrs.get('split', '')} · sample {i} · {sample['image_id']} · "
             f"{sample['size'][0]}×{sample['size'][1]} · base {st.attrs.get('base')}")
    path = draw_sample(sample, out, st.categories, title=title, dpi=dpi)
    typer.echo(str(path))


@app.command()
def stats(
    store: str = typer.Argument(..., help="Store folder, .zip or URL."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Reader threads (default: cores, at most 4)."),
) -> None:
    """Per-category pixel and instance counts, instance-size histogram, and the base network's PQ."""
    from ..stats import store_stats
    from ..store import open_store

    st = open_store(store, mode="r")
    with progress(transient=True) as bar:
        res = store_stats(st, _bar_callback(bar, "stats"), workers=workers)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    out = Console()
    out.print(f"{store}: {res['samples']} done samples of {res['total']}")
    tab = Table(title="categories present (ground truth, stored resolution)")
    for col in ("id", "name", "kind", "pixels", "instances", "crowd", "images"):
        tab.add_column(col, justify="left" if col in ("name", "kind") else "right")
    pq_per = (res["base_pq"] or {}).get("per_category", {})
    if pq_per:
        tab.add_column("base PQ", justify="right")
    for r in res["categories"]:
        if not r["pixels"]:
            continue
        row = [str(r["id"]), r["name"], "thing" if r["isthing"] else "stuff", str(r["pixels"]),
               str(r["instances"]), str(r["crowds"]), str(r["images"])]
        if pq_per:
            pc = pq_per.get(r["name"])
            row.append(f"{100 * pc['pq']:.1f}" if pc else "-")
        tab.add_row(*row)
    out.print(tab)
    h = res["instance_area_histogram"]
    hist = Table(title="instance areas (px, non-crowd things)")
    hist.add_column("area")
    hist.add_column("instances", justify="right")
    edges = h["edges"]
    for lo, hi, c in zip(edges[:-1], edges[1:], h["counts"]):
        hist.add_row(f"[{lo}, {hi if hi is not None else '∞'})", str(c))
    out.print(hist)
    if res["base_pq"] is None:
        out.print("no base network in this store: no base PQ")
    else:
        pq = Table(title="base network vs ground truth (PQ at the stored resolution)")
        for col in ("", "PQ", "SQ", "RQ", "classes"):
            pq.add_column(col, justify="right")
        for name in ("all", "things", "stuff"):
            v = res["base_pq"][name]
            pq.add_row(name, f"{100 * v['pq']:.1f}", f"{100 * v['sq']:.1f}", f"{100 * v['rq']:.1f}", str(v["n"]))
        out.print(pq)


@app.command()
def verify(
    store: str = typer.Argument(..., help="Store folder, .zip or URL."),
    deep: int = typer.Option(0, "--deep", min=0, help="Also recompute N random samples from the source dataset."),
    seed: int = typer.Option(0, "--seed", help="Seed choosing the --deep samples."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Reader threads (default: cores, at most 4)."),
) -> None:
    """Check schema and attributes, that every sample is done and matches its checksum; exit 1 if any is bad."""
    from ..verify import verify_store

    with progress(transient=True) as bar:
        report = verify_store(store, deep=deep, seed=seed, progress=_bar_callback(bar, "verify"), workers=workers)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        for p in report.problems:
            typer.echo(f"PROBLEM {p}")
        for b in report.bad:
            typer.echo(f"BAD {b}")
        deep_msg = f", {len(report.deep_checked)} recomputed from the dataset" if deep else ""
        status = "OK" if report.ok else f"FAILED: {len(report.bad_indices)} bad samples, {len(report.problems)} problems"
        typer.echo(f"{status} — {report.checked} samples checked{deep_msg} ({store})")
    if not report.ok:
        raise typer.Exit(1)
