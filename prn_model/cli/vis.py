"""CLI command ``prn vis``: pictures of results (image | ground truth | base | PRN, :mod:`prn_model.vis`).

Two sources: a store sample (``prn vis STORE INDEX [--checkpoint MODEL.pt]``: with the model, PRN's
panoptic result, center heatmap, foreground and box gate; without, image | ground truth | base), or
``prn refine``'s output folder (``prn vis --refined OUT --images DIR [--base SPEC]``: image | base | PRN,
no ground truth). ``prn show`` (the data layer) draws a sample's stored maps; this model-layer command
draws predictions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from .app import app


@app.command()
def vis(
    store: Optional[str] = typer.Argument(None, help="Store folder, .zip or URL (not with --refined)."),
    index: Optional[int] = typer.Argument(None, min=0, help="Sample index (0-based) in STORE."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="PRN checkpoint: adds PRN's result and maps."),
    refined: Optional[Path] = typer.Option(None, "--refined", help="A prn refine output folder to draw instead of a store sample."),
    images: Optional[str] = typer.Option(None, "--images", help="With --refined: the images it refined (folder or dataset spec)."),
    split: Optional[str] = typer.Option(None, "--split", help="With --refined: the split of a dataset spec as --images."),
    base: Optional[str] = typer.Option(None, "--base", help="With --refined: the base predictions it refined (e.g. files:DIR)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="With --refined: draw the first N images only."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (a folder with --refined and several images)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    dpi: int = typer.Option(80, "--dpi", min=20, max=600, help="Resolution: each panel is 3 in wide at this dpi."),
) -> None:
    """Draw image | ground truth | base | PRN (+ PRN's heatmap, foreground, box gate) for a store sample, or
    image | base | PRN for prn refine's output (--refined)."""
    from prn_data.errors import PrnError

    if refined is not None:
        if store is not None or checkpoint is not None:
            raise PrnError("--refined draws a refine output folder: give no STORE, INDEX or --checkpoint")
        if images is None:
            raise PrnError("--refined needs --images, the images it refined")
        from ..vis import draw_refined

        target = out if out is not None else Path.cwd() / f"{refined.name or 'refined'}-vis"
        for p in draw_refined(refined, images, target, base=base, split=split, limit=limit, dpi=dpi):
            typer.echo(str(p))
        return
    if store is None or index is None:
        raise PrnError("give STORE and INDEX (a store sample), or --refined OUT --images DIR")
    if images is not None or base is not None or split is not None or limit is not None:
        raise PrnError("--images, --base, --split and --limit go with --refined")
    from prn_data.store import open_store

    from ..checkpoint import load_checkpoint
    from ..devices import resolve_device
    from ..evaluate import default_postprocess_config
    from ..vis import draw_store_samples

    dev = resolve_device(device)
    st = open_store(store, mode="r")
    if index >= len(st):
        raise PrnError(f"{store}: sample {index} out of range 0..{len(st) - 1}")
    if not st.has_base:
        raise PrnError(f"{store}: the store holds no base-network prediction (built with --base none)")
    model = load_checkpoint(checkpoint, dev)[0] if checkpoint is not None else None
    if out is None:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(store.rstrip("/")).stem or "store")
        out = Path.cwd() / f"{stem}-{index}-vis.png"
    elif out.suffix.lower() != ".png":
        raise PrnError(f"{out}: give the PNG's file name (ending in .png)")
    for p in draw_store_samples(model, st, [index], out, device=dev, cfg=default_postprocess_config(st.attrs), dpi=dpi):
        typer.echo(str(p))
