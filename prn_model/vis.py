"""Pictures of results: image | ground truth | base | PRN, and what PRN's post-processing saw (README "Pictures
of results"; ``prn vis``, ``prn evaluate --vis``).

For a store sample and a model (:func:`draw_store_samples`): the image, the ground truth's, the base
network's and PRN's panoptic maps (coloured by segment, labelled with class names), then PRN's center
heatmap (§3.4) with the centers PPGBF kept, its foreground probability (§3.4, 0–1 colour bar) and the box
gate of PPGBF's grouping (§3.5, :func:`gate_map`: which foreground pixels the box-IoU test left with their
nearest center, moved to another center, or left unassigned). Without a model: image | ground truth | base.

For ``prn refine``'s output folder (:func:`draw_refined`, no ground truth): image | base | PRN, read back
from the prediction files (the base from its spec, when given).

The drawing (panel grid sized from the image's aspect, colours) is :mod:`prn_data.show`'s; this module
runs the model and assembles the panels.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from prn_data.base import open_base
from prn_data.base.export import PANOPTIC_JSON
from prn_data.base.files import FilesBase
from prn_data.errors import PrnError
from prn_data.records import Category, CategorySet, Segment
from prn_data.show import DEFAULT_DPI, colorize_ids, draw_panels, heat_over_image, segment_labels
from prn_data.store import Store

from .data import sample_from_store
from .evaluate import default_postprocess_config
from .merge import postprocess
from .ppgbf import PostProcessConfig, find_centers, group_foreground
from .refine import open_images

#: Box-gate map levels (:func:`gate_map`), their colours and legend names.
GATE_LEVELS = (
    ("not foreground", (0, 0, 0)),
    ("nearest center passes the box gate", (60, 180, 75)),
    ("box gate moved it to another center", (255, 165, 0)),
    ("no center passes: unassigned", (230, 25, 75)),
)


@dataclass
class PrnView:
    """PRN's result for one image at its valid size ``(h, w)``: ``panoptic (h, w) int32`` (VOID −1) and its
    segments; ``center (h, w)`` heatmap; ``foreground (h, w)`` probability; ``gate (h, w) uint8``
    (:data:`GATE_LEVELS` index); ``centers (K, 2)`` the (y, x) PPGBF kept."""

    panoptic: np.ndarray
    segments: list[Segment]
    center: np.ndarray
    foreground: np.ndarray
    gate: np.ndarray
    centers: np.ndarray


def gate_map(center: torch.Tensor, center_offset: torch.Tensor, box_offset: torch.Tensor | None,
             foreground: torch.Tensor, cfg: PostProcessConfig) -> np.ndarray:
    """What PPGBF's box gate (§3.5) did to each pixel of one image, ``(h, w) uint8`` (:data:`GATE_LEVELS`):
    0 not foreground, 1 joined its nearest center (the gate let it), 2 joined another center, 3 left
    unassigned (no center passes, or no center at all). Inputs cropped to the valid size: ``center (h, w)``,
    ``center_offset (2, h, w)``, ``box_offset (4, h, w)`` or None (no gate: every foreground pixel with a
    center is 1), ``foreground (h, w)`` logit."""
    h, w = center.shape
    mask = torch.sigmoid(foreground.float()) > cfg.foreground_threshold
    boxes = box_offset if cfg.box_gate else None
    flat, k, _, _ = group_foreground(center, center_offset, boxes, mask, cfg)
    _, k0, _, _ = group_foreground(center, center_offset, None, mask, cfg)  # same pixels, same order
    level = torch.where(k < 0, 3, torch.where(k == k0, 1, 2)).to(torch.uint8)
    gate = torch.zeros(h * w, dtype=torch.uint8, device=center.device)
    gate.index_copy_(0, flat, level)
    return gate.reshape(h, w).cpu().numpy()


def run_model(model: torch.nn.Module, raw: dict, categories: CategorySet, *, cfg: PostProcessConfig,
              label_divisor: int, device: torch.device | str = "cpu") -> PrnView:
    """PRN on one store sample (``raw``: :meth:`Store.read_sample` with ``crop=False``), post-processed as
    ``prn evaluate`` does (§3.5), with its maps cropped to the sample's valid size."""
    x = sample_from_store(raw, 0)
    h, w = (int(v) for v in raw["size"])
    inputs = {k: torch.from_numpy(np.ascontiguousarray(x[k])[None]).to(device)
              for k in ("image", "instance", "base_semantic")}
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(inputs["image"], inputs["instance"], inputs["base_semantic"])
            pan, segs = postprocess(out, categories, cfg, sizes=[(h, w)], label_divisor=label_divisor)[0]
            heat = out["center"][0, 0, :h, :w].float()
            off = out["center_offset"][0, :, :h, :w].float()
            box = out.get("box_offset")
            box = None if box is None else box[0, :, :h, :w].float()
            fg = out.get("foreground")
            fg = torch.full((h, w), 10.0, device=heat.device) if fg is None else fg[0, 0, :h, :w].float()
            gate = gate_map(heat, off, box, fg, cfg)
            centers = find_centers(heat, cfg.threshold, cfg.nms_kernel, cfg.top_k)[0]
    finally:
        model.train(was)
    return PrnView(pan, list(segs), heat.cpu().numpy(), torch.sigmoid(fg).cpu().numpy(), gate,
                   centers.cpu().numpy())


def _panoptic_panel(pan: np.ndarray, segments: Sequence[Any], categories: CategorySet | None) -> tuple:
    return ("labels", colorize_ids(pan), segment_labels(pan, segments, categories))


def result_panels(image: np.ndarray, categories: CategorySet | None, *,
                  gt: tuple[np.ndarray, Sequence[Any]] | None = None,
                  base: tuple[np.ndarray, Sequence[Any]] | None = None,
                  prn: PrnView | tuple[np.ndarray, Sequence[Any]] | None = None) -> tuple[list[tuple[str, Any]], int]:
    """``(panels, columns)`` for :func:`prn_data.show.draw_panels`: image, then each of ``gt``, ``base``,
    ``prn`` given (``(panoptic, segments)`` at the image's size; segments as dicts or Segments), coloured by
    segment and labelled with class names; a :class:`PrnView` adds a second row of PRN's heatmap,
    foreground probability and box gate (and the gate's legend). ``image``: ``(h, w, 3) uint8``."""
    panels: list[tuple[str, Any]] = [("image", image)]
    for name, pred in (("ground truth", gt), ("base", base), ("PRN", prn)):
        if pred is None:
            continue
        pan, segs = (pred.panoptic, pred.segments) if isinstance(pred, PrnView) else pred
        panels.append((f"{name} panoptic ({len(segs)} segments)", _panoptic_panel(np.asarray(pan), segs, categories)))
    cols = len(panels)
    if isinstance(prn, PrnView):
        cols = max(cols, 4)
        panels += [("", ("text", ""))] * (cols - len(panels))
        marks = [(float(y), float(x), "+") for y, x in prn.centers]
        gate_rgb = np.asarray([c for _, c in GATE_LEVELS], dtype=np.uint8)[prn.gate]
        panels += [
            (f"PRN center heatmap ({len(prn.centers)} centers kept)", ("labels", heat_over_image(image, prn.center), marks)),
            ("PRN foreground probability", ("map", prn.foreground, {"vmin": 0.0, "vmax": 1.0})),
            ("PRN box gate (PPGBF grouping)", gate_rgb),
            ("box gate", ("legend", [(n, np.asarray(c)) for n, c in GATE_LEVELS])),
        ]
    return panels, cols


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)) or "image"


def draw_store_samples(model: torch.nn.Module | None, store: Store, indices: Sequence[int], out: str | Path, *,
                       device: torch.device | str = "cpu", cfg: PostProcessConfig | None = None,
                       dpi: int = DEFAULT_DPI) -> list[Path]:
    """One panel PNG per store sample in ``indices`` (image | ground truth | base | PRN and PRN's maps; no
    PRN without ``model``). ``out``: a folder (files ``<index>-<image id>.png``), or a ``.png`` file when
    one index is given. Returns the written paths."""
    out = Path(out)
    single = out.suffix.lower() == ".png"
    if single and len(indices) != 1:
        raise PrnError(f"{out}: a single PNG holds one sample; give a folder for {len(indices)}")
    cfg = cfg or default_postprocess_config(store.attrs)
    cats = store.categories
    label_divisor = int(store.attrs["label_divisor"])
    paths = []
    for i in indices:
        raw = store.read_sample(int(i), crop=False)
        h, w = (int(v) for v in raw["size"])
        image = np.moveaxis(np.asarray(raw["image"])[:, :h, :w], 0, -1)
        gt = (np.asarray(raw["gt/panoptic"])[:h, :w], raw["gt/segments"])
        base = (np.asarray(raw["base/panoptic"])[:h, :w], raw["base/segments"]) if "base/panoptic" in raw else None
        prn = None if model is None else run_model(model, raw, cats, cfg=cfg, label_divisor=label_divisor, device=device)
        panels, cols = result_panels(image, cats, gt=gt, base=base, prn=prn)
        title = f"{store.attrs.get('dataset_name', '')} · sample {int(i)} · {raw['image_id']} · {h}×{w}"
        path = out if single else out / f"{int(i)}-{_slug(raw['image_id'])}.png"
        paths.append(draw_panels(panels, path, (h, w), cols=cols, title=title, dpi=dpi))
    return paths


def folder_categories(folder: str | Path) -> CategorySet:
    """The categories of a prediction folder's ``panoptic.json`` (COCO ``id``, ``name``, ``isthing``,
    optional ``color``), train ids in the file's order."""
    path = Path(folder) / PANOPTIC_JSON
    try:
        items = json.loads(path.read_text())["categories"]
        return CategorySet([Category(int(c["id"]), str(c["name"]), bool(c.get("isthing", 0)), t,
                                     tuple(int(v) for v in c.get("color", (0, 0, 0))))
                            for t, c in enumerate(items)])
    except FileNotFoundError:
        raise PrnError(f"{path}: no such file (is {folder} a prn refine output folder?)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PrnError(f"{path}: not a COCO panoptic JSON with categories ({type(exc).__name__}: {exc})") from None


def draw_refined(refined: str | Path, images: str | Path, out: str | Path, *, base: str | None = None,
                 split: str | None = None, limit: int | None = None, dpi: int = DEFAULT_DPI) -> list[Path]:
    """Panels image | base | PRN for ``prn refine``'s output folder ``refined`` and its ``images`` (a folder
    or dataset spec, as ``prn refine --images``), at each image's original size; the base from ``base``
    (a spec such as ``files:DIR``; omitted: image | PRN). ``out``: a folder (``<image id>.png`` each),
    or a ``.png`` when ``limit`` is 1. At most ``limit`` images (default all)."""
    cats = folder_categories(refined)
    prn_files = FilesBase(refined, cats)
    base_net = open_base(base, cats) if base else None
    ds = open_images(images, split)
    n = len(ds) if limit is None else min(len(ds), int(limit))
    out = Path(out)
    single = out.suffix.lower() == ".png"
    if single and n != 1:
        raise PrnError(f"{out}: a single PNG holds one image; give a folder, or --limit 1")
    paths = []
    for k in range(n):
        sample = ds.load(k)
        image = np.asarray(sample.image)
        prn = prn_files.predict_one(sample)
        b = base_net.predict([sample])[0] if base_net is not None else None
        panels, cols = result_panels(image, cats, base=None if b is None else (b.panoptic, b.segments),
                                     prn=(prn.panoptic, prn.segments))
        title = f"{sample.file_name} · {image.shape[0]}×{image.shape[1]} · PRN from {refined}"
        path = out if single else out / f"{_slug(sample.image_id)}.png"
        paths.append(draw_panels(panels, path, image.shape[:2], cols=cols, title=title, dpi=dpi))
    return paths


__all__ = ["GATE_LEVELS", "PrnView", "gate_map", "run_model", "result_panels", "draw_store_samples",
           "folder_categories", "draw_refined"]
