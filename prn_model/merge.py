"""Majority voting and panoptic merging (paper §3.5), and writing the result as COCO panoptic files.

:func:`postprocess` turns a batch of PRN head outputs into one panoptic id map per image:

- instances from :mod:`prn_model.ppgbf` (PPGBF, or Panoptic-DeepLab grouping for the §4.5 ablation);
- each instance's class is the most frequent *thing* class of the semantic prediction over its pixels
  (per-pixel argmax over the thing channels; ties go to the lower train id);
- stuff is the semantic argmax on pixels no instance claims, when that argmax is a stuff class; a stuff
  class with fewer than ``stuff_area`` pixels in the image becomes VOID, as does any remaining pixel;
- ids are ``category_id * 1000 + k`` (k = 1, 2, … per class in decreasing center score; 0 for stuff),
  VOID = −1, with the dataset's own category ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from prn_data.errors import PrnError
from prn_data.records import LABEL_DIVISOR, VOID, CategorySet, Segment

from .ppgbf import PostProcessConfig, instance_map


def _taps(out: int, inp: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows (i0, i1) and weight of i1 of PyTorch's bilinear resize (align_corners=False)."""
    src = ((torch.arange(out, device=device, dtype=torch.float32) + 0.5) * (inp / out) - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=inp - 1)
    return i0, (i0 + 1).clamp_(max=inp - 1), src - i0


def argmax_upsampled(logits: torch.Tensor, size: tuple[int, int], chunk: int = 1 << 22) -> torch.Tensor:
    """Argmax over classes of ``(C, h', w')`` logits bilinearly resized to ``size`` (align_corners=False),
    as ``(H, W) int64``, without building the ``(C, H, W)`` tensor.

    A bilinear value is a convex combination of its four source pixels, so where those four share their
    argmax the result has that argmax too; only the remaining (boundary) pixels are interpolated, over
    all classes, ``chunk`` values at a time."""
    H, W = size
    C = logits.shape[0]
    y0, y1, wy = _taps(H, logits.shape[1], logits.device)
    x0, x1, wx = _taps(W, logits.shape[2], logits.device)
    low = logits.max(0).indices  # same first-max rule as argmax, faster along a strided axis
    r0, r1 = low.index_select(0, y0), low.index_select(0, y1)
    a = r0.index_select(1, x0)
    agree = (a == r0.index_select(1, x1)) & (a == r1.index_select(1, x0)) & (a == r1.index_select(1, x1))
    out = a
    pix = torch.nonzero(~agree.reshape(-1)).squeeze(1)
    if pix.numel() == 0:
        return out
    w_in = logits.shape[2]
    # Pixel-major copy so each tap gathers whole class vectors.
    table = logits.reshape(C, -1).t().contiguous()
    step = max(1, chunk // max(C, 1))
    for s in range(0, pix.numel(), step):
        p = pix[s : s + step]
        py, px = p // W, p % W
        ty, tx = wy[py, None], wx[px, None]
        a0, a1, b0, b1 = y0[py] * w_in, y1[py] * w_in, x0[px], x1[px]
        top = torch.lerp(table.index_select(0, a0 + b0), table.index_select(0, a0 + b1), tx)
        bot = torch.lerp(table.index_select(0, a1 + b0), table.index_select(0, a1 + b1), tx)
        out.view(-1)[p] = torch.lerp(top, bot, ty).argmax(1)
    return out


def semantic_labels(logits: torch.Tensor, size: tuple[int, int], thing: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-resolution labels from ``(N_cl, h', w')`` semantic logits of a ``size``-canvas (h' = H/4, or
    h' = H for maps already at full size).

    Returns ``(label (H, W) int64`` argmax over all classes, ``thing_label (H, W) int64`` argmax over the
    classes where ``thing (N_cl,) bool`` is set, as an index into those classes).
    """
    H, W = size
    tl = logits[thing] if bool(thing.any()) else logits[:1]
    if logits.shape[-2:] == (H, W):
        return logits.max(0).indices, tl.max(0).indices
    if mode == "bilinear":
        return argmax_upsampled(logits, (H, W)), argmax_upsampled(tl, (H, W))
    rows = (torch.arange(H, device=logits.device) * logits.shape[1]) // H
    cols = (torch.arange(W, device=logits.device) * logits.shape[2]) // W

    def up(lab: torch.Tensor) -> torch.Tensor:
        return lab.index_select(0, rows).index_select(1, cols)

    return up(logits.max(0).indices), up(tl.max(0).indices)


def _boxes(index: torch.Tensor, n: int) -> torch.Tensor:
    """COCO ``[x, y, w, h]`` boxes ``(n, 4)`` of the labels 1..n of ``index (H, W)`` (0 = none), from
    per-(label, row) and per-(label, column) pixel counts."""
    H, W = index.shape
    rows = torch.bincount((index * H + torch.arange(H, device=index.device)[:, None]).reshape(-1), minlength=(n + 1) * H)
    cols = torch.bincount((index * W + torch.arange(W, device=index.device)[None, :]).reshape(-1), minlength=(n + 1) * W)
    rows = rows.reshape(n + 1, H)[1:] > 0
    cols = cols.reshape(n + 1, W)[1:] > 0

    def span(m: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(L, device=m.device)
        first = torch.where(m, pos, L).amin(1)
        last = torch.where(m, pos, -1).amax(1)
        return first, last

    y0, y1 = span(rows, H)
    x0, x1 = span(cols, W)
    return torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dim=1)


class CategoryTables:
    """Per-train-id tensors of a :class:`CategorySet`: ``category_id (N,)``, ``thing (N,) bool`` and the
    train ids of the thing classes ``thing_ids (T,)``."""

    def __init__(self, categories: CategorySet, device: torch.device | str = "cpu"):
        self.categories = categories
        self.category_id = torch.tensor([c.id for c in categories], dtype=torch.long, device=device)
        self.thing = torch.tensor([c.isthing for c in categories], dtype=torch.bool, device=device)
        self.thing_ids = torch.nonzero(self.thing).squeeze(1)


def merge_image(
    semantic: torch.Tensor,
    center: torch.Tensor,
    center_offset: torch.Tensor,
    box_offset: torch.Tensor,
    foreground: torch.Tensor | None,
    tables: CategoryTables,
    cfg: PostProcessConfig,
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, list[Segment]]:
    """Panoptic segmentation of one image from its head outputs (§3.5).

    ``semantic (N_cl, H/4, W/4)`` logits (or ``(N_cl, H, W)``), ``center (1, H, W)``, ``center_offset
    (2, H, W)``, ``box_offset (4, H, W)`` pixels, ``foreground (1, H, W)`` logit (unused by
    Panoptic-DeepLab grouping). ``size = (h, w)``: the valid top-left part of a padded canvas.
    Returns ``(panoptic (h, w) int32`` with VOID = −1, ``segments)``.
    """
    H, W = center.shape[-2:]
    h, w = size if size is not None else (H, W)
    if semantic.shape[0] != len(tables.category_id):
        raise PrnError(f"semantic output has {semantic.shape[0]} classes, the dataset {len(tables.category_id)}")
    label, thing_label = semantic_labels(semantic.float(), (H, W), tables.thing, cfg.semantic_upsample)
    label, thing_label = label[:h, :w], thing_label[:h, :w]
    heat = center[0, :h, :w].float()
    off = center_offset[:, :h, :w].float()
    if cfg.grouping == "ppgbf":
        mask = torch.sigmoid(foreground[0, :h, :w].float()) > cfg.foreground_threshold
        inst, _, score = instance_map(heat, off, box_offset[:, :h, :w].float(), mask, cfg)
    else:
        inst, _, score = instance_map(heat, off, None, tables.thing[label], cfg)

    K, T = score.numel(), tables.thing_ids.numel()
    n_inst = 0
    inst_cat: list[int] = []
    if K and T:
        votes = torch.bincount((inst * T + thing_label).reshape(-1), minlength=(K + 1) * T).reshape(K + 1, T)[1:]
        area = votes.sum(1)
        keep = (area > 0) & (area >= cfg.min_instance_area)
        cls = tables.thing_ids[votes.argmax(1)]
        # Renumber kept instances 1..n in score order; dropped ones go to 0.
        renum = torch.zeros(K + 1, dtype=torch.long, device=inst.device)
        renum[1:][keep] = torch.arange(1, int(keep.sum()) + 1, device=inst.device)
        inst = renum[inst]
        n_inst = int(keep.sum())
        inst_cls = cls[keep]
        inst_score = score[keep]
    # Stuff: the semantic argmax where no instance is, when it names a stuff class with enough pixels.
    stuff_px = (inst == 0) & ~tables.thing[label]
    n_cl = len(tables.category_id)
    stuff_area = torch.bincount(label[stuff_px], minlength=n_cl)
    stuff_ok = (stuff_area >= max(cfg.stuff_area, 1)) & ~tables.thing
    stuff_classes = torch.nonzero(stuff_ok).squeeze(1)
    # One compact segment index per pixel: 1..n_inst instances, then one per surviving stuff class.
    stuff_slot = torch.zeros(n_cl, dtype=torch.long, device=inst.device)
    stuff_slot[stuff_classes] = torch.arange(n_inst + 1, n_inst + 1 + stuff_classes.numel(), device=inst.device)
    index = torch.where(stuff_px, stuff_slot[label], inst)
    n_seg = n_inst + stuff_classes.numel()

    seg_ids: list[int] = []
    segs_meta: list[tuple[int, int, bool, float | None]] = []
    counter: dict[int, int] = {}
    cat_ids = tables.category_id.tolist()
    if n_inst:
        for c, s in zip(inst_cls.tolist(), inst_score.tolist()):
            counter[c] = counter.get(c, 0) + 1
            seg_ids.append(cat_ids[c] * LABEL_DIVISOR + counter[c])
            segs_meta.append((cat_ids[c], c, True, float(s)))
    for c in stuff_classes.tolist():
        seg_ids.append(cat_ids[c] * LABEL_DIVISOR)
        segs_meta.append((cat_ids[c], c, False, None))
    lut = torch.tensor([VOID] + seg_ids, dtype=torch.long, device=inst.device)
    panoptic = lut[index].to(torch.int32)

    areas = torch.bincount(index.reshape(-1), minlength=n_seg + 1)[1:].tolist()
    boxes = _boxes(index, n_seg).tolist() if n_seg else []
    segments = []
    for i, (sid, (cid, tid, isthing, sc)) in enumerate(zip(seg_ids, segs_meta)):
        segments.append(Segment(sid, cid, tid, isthing, False, int(areas[i]), tuple(int(v) for v in boxes[i]), sc))
    return panoptic.cpu().numpy(), segments


def postprocess(
    outputs: dict[str, torch.Tensor],
    categories: CategorySet,
    cfg: PostProcessConfig | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> list[tuple[np.ndarray, list[Segment]]]:
    """Batched post-processing of PRN's outputs (the network's dict: ``semantic (B, N_cl, H/4, W/4)``,
    ``center (B, 1, H, W)``, ``center_offset (B, 2, H, W)``, ``box_offset (B, 4, H, W)``, ``foreground
    (B, 1, H, W)``) on the tensors' device. ``sizes``: each image's valid ``(h, w)`` within the canvas.
    Returns one ``(panoptic (h, w) int32, segments)`` per image, at the network's resolution."""
    cfg = cfg or PostProcessConfig()
    tables = CategoryTables(categories, outputs["center"].device)
    B = outputs["center"].shape[0]
    out = []
    with torch.no_grad():
        for b in range(B):
            fg = outputs.get("foreground")
            out.append(
                merge_image(
                    outputs["semantic"][b],
                    outputs["center"][b],
                    outputs["center_offset"][b],
                    outputs["box_offset"][b],
                    None if fg is None else fg[b],
                    tables,
                    cfg,
                    None if sizes is None else tuple(int(v) for v in sizes[b]),
                )
            )
    return out


def to_original_size(panoptic: np.ndarray, segments: Sequence[Segment], orig_size: tuple[int, int]) -> tuple[np.ndarray, list[Segment]]:
    """Nearest-exact resize (:func:`prn_data.resize.resize_labels`) of a panoptic map to ``orig_size``;
    segment areas and boxes recomputed, vanished segments dropped."""
    from prn_data.panoptic_io import refresh_segments
    from prn_data.resize import resize_labels

    orig_size = (int(orig_size[0]), int(orig_size[1]))
    if tuple(panoptic.shape) == orig_size:
        return panoptic, list(segments)
    pan = resize_labels(panoptic, orig_size)
    return pan, refresh_segments(pan, segments)


def coco_categories(categories: CategorySet) -> list[dict]:
    """COCO panoptic ``categories`` entries (id, name, isthing, supercategory, color)."""
    return [
        {"id": c.id, "name": c.name, "isthing": int(c.isthing), "supercategory": "", "color": list(c.color)}
        for c in categories
    ]


def write_panoptic(
    out_dir: str | Path,
    items: Sequence[tuple[Any, str, np.ndarray, Sequence[Segment]]],
    categories: CategorySet,
    json_name: str = "panoptic.json",
) -> Path:
    """Write COCO panoptic predictions: ``out_dir/<json_name stem>/<file>.png`` and ``out_dir/<json_name>``.

    ``items``: ``(image_id, file_name, panoptic (h, w) int32 with VOID = −1, segments)`` per image; the
    PNG is named after ``file_name`` with a ``.png`` suffix. Returns the JSON's path."""
    from prn_data.panoptic_io import write_rgb_ids

    out_dir = Path(out_dir)
    png_dir = out_dir / Path(json_name).stem
    png_dir.mkdir(parents=True, exist_ok=True)
    anns = []
    for image_id, file_name, pan, segs in items:
        png = Path(file_name).with_suffix(".png").name
        write_rgb_ids(png_dir / png, pan)
        anns.append({"image_id": image_id, "file_name": png, "segments_info": [s.to_json() for s in segs]})
    path = out_dir / json_name
    with open(path, "w") as f:
        json.dump({"annotations": anns, "categories": coco_categories(categories)}, f)
    return path


__all__ = [
    "CategoryTables",
    "semantic_labels",
    "merge_image",
    "postprocess",
    "to_original_size",
    "coco_categories",
    "write_panoptic",
]
