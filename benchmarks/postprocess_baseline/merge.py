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

from prn_data.errors import PrnError
from prn_data.records import LABEL_DIVISOR, VOID, CategorySet, Segment

from .ppgbf import PostProcessConfig, instance_map


def _taps(out: int, inp: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows (i0, i1) and weight of i1 of PyTorch's bilinear resize (align_corners=False)."""
    src = ((torch.arange(out, device=device, dtype=torch.float32) + 0.5) * (inp / out) - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=inp - 1)
    return i0, (i0 + 1).clamp_(max=inp - 1), src - i0


def argmax_upsampled(
    logits: torch.Tensor,
    size: tuple[int, int],
    chunk: int = 1 << 22,
    crop: tuple[int, int] | None = None,
    where: torch.Tensor | None = None,
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    """Argmax over classes of ``(C, h', w')`` logits bilinearly resized to ``size`` (align_corners=False),
    as ``(H, W) int64`` (or the top-left ``crop = (h, w)`` of it), without building ``(C, H, W)``.

    A bilinear value is a convex combination of its four source pixels, so where those four share their
    argmax the result has that argmax too; only the remaining (boundary) pixels are interpolated, over
    all classes, ``chunk`` values at a time. With ``where`` (bool, the output's shape) only those boundary
    pixels are interpolated; the others keep the top-left source pixel's argmax. ``table``: the logits as
    a pixel-major ``(h'·w', C)`` copy, when the caller has one."""
    H, W = size
    C = logits.shape[0]
    y0, y1, wy = _taps(H, logits.shape[1], logits.device)
    x0, x1, wx = _taps(W, logits.shape[2], logits.device)
    if crop is not None:
        y0, y1, wy = y0[: crop[0]], y1[: crop[0]], wy[: crop[0]]
        x0, x1, wx = x0[: crop[1]], x1[: crop[1]], wx[: crop[1]]
    W = x0.numel()
    low = logits.max(0).indices  # same first-max rule as argmax, faster along a strided axis
    # Narrow labels make the four full-size tap maps below cheaper to gather and compare.
    narrow = low.to(torch.int16) if C <= torch.iinfo(torch.int16).max else low
    r0, r1 = narrow.index_select(0, y0), narrow.index_select(0, y1)
    a = r0.index_select(1, x0)
    agree = (a == r0.index_select(1, x1)) & (a == r1.index_select(1, x0)) & (a == r1.index_select(1, x1))
    if where is not None:
        agree |= ~where
    out = a.long()
    pix = torch.nonzero(~agree.reshape(-1)).squeeze(1)
    if pix.numel() == 0:
        return out
    h_in, w_in = logits.shape[1], logits.shape[2]
    if table is None:
        table = pixel_major(logits)
    py, px = pix // W, pix % W
    taps = [y0[py] * w_in + x0[px], y0[py] * w_in + x1[px], y1[py] * w_in + x0[px], y1[py] * w_in + x1[px]]
    pix = _resolve_by_bound(logits, table, low, pix, taps, wy[py], wx[px], out)
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


def pixel_major(logits: torch.Tensor) -> torch.Tensor:
    """``(h'·w', C)`` contiguous copy of ``(C, h', w')`` logits, so a pixel's class vector is one row."""
    return logits.reshape(logits.shape[0], -1).t().contiguous()


def _resolve_by_bound(
    logits: torch.Tensor,
    table: torch.Tensor,
    low: torch.Tensor,
    pix: torch.Tensor,
    taps: list[torch.Tensor],
    ty: torch.Tensor,
    tx: torch.Tensor,
    out: torch.Tensor,
) -> torch.Tensor:
    """Settle boundary pixels whose winner is one of their four taps' argmax classes; returns the rest.

    An interpolated logit never exceeds its largest tap value, so when the best of the (≤ 4) tap-argmax
    classes, interpolated exactly, beats every other class's largest tap value at that 2×2 source block,
    no other class can win. Only the pixels where that bound does not decide need all classes."""
    C, hw = logits.shape[0], logits.shape[1] * logits.shape[2]
    flat = logits.reshape(-1)
    lowf = low.reshape(-1)
    cls = torch.stack([lowf[t] for t in taps], dim=1)  # (n, 4) candidate classes
    base = cls * hw
    v = [flat[base + t[:, None]] for t in taps]  # value of each candidate at each tap, (n, 4) each
    val = torch.lerp(torch.lerp(v[0], v[1], tx[:, None]), torch.lerp(v[2], v[3], tx[:, None]), ty[:, None])
    best = val.max(1, keepdim=True).values
    # argmax's rule on exact ties: the lowest class index.
    winner = torch.where(val == best, cls, torch.full_like(cls, C)).amin(1)
    # Per source block (identified by its top-left tap): the largest tap value of any non-candidate class.
    blocks, inv = torch.unique(taps[0], return_inverse=True)
    first = torch.full((blocks.numel(),), pix.numel(), dtype=torch.long, device=pix.device)
    first.scatter_reduce_(0, inv, torch.arange(pix.numel(), device=pix.device), reduce="amin")
    m = table.index_select(0, taps[0][first])
    for t in taps[1:]:
        m = torch.maximum(m, table.index_select(0, t[first]))
    m.scatter_(1, cls[first], float("-inf"))
    bound = m.max(1).values[inv]
    done = best[:, 0] > bound
    out.view(-1)[pix[done]] = winner[done]
    return pix[~done]


def upsample_labels(
    logits: torch.Tensor,
    size: tuple[int, int],
    mode: str,
    crop: tuple[int, int] | None = None,
    where: torch.Tensor | None = None,
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(h, w) int64`` argmax labels of ``(C, h', w')`` logits at the canvas ``size = (H, W)`` (h' = H/4,
    or h' = H for maps already at full size), cropped to ``crop``. ``mode``: "bilinear" (resize the logits,
    then argmax; see :func:`argmax_upsampled`) or "nearest" (argmax, then repeat)."""
    H, W = size
    h, w = crop if crop is not None else (H, W)
    if logits.shape[-2:] == (H, W):
        return logits[:, :h, :w].max(0).indices
    if mode == "bilinear":
        return argmax_upsampled(logits, (H, W), crop=(h, w), where=where, table=table)
    rows = (torch.arange(h, device=logits.device) * logits.shape[1]) // H
    cols = (torch.arange(w, device=logits.device) * logits.shape[2]) // W
    return logits.max(0).indices.index_select(0, rows).index_select(1, cols)


def logits_at(
    logits: torch.Tensor,
    size: tuple[int, int],
    ys: torch.Tensor,
    xs: torch.Tensor,
    mode: str,
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(n, C)`` logits of ``(C, h', w')`` resized to the canvas ``size`` (as :func:`upsample_labels`), read
    only at the pixels ``(ys, xs)``. ``table``: :func:`pixel_major` of ``logits``, when at hand."""
    H, W = size
    C, h_in, w_in = logits.shape
    if table is None:
        # Without a pixel-major copy, gather the few pixels from each class plane instead of transposing.
        flat = logits.reshape(C, -1)

        def rows(idx: torch.Tensor) -> torch.Tensor:
            return flat.index_select(1, idx).t()
    else:

        def rows(idx: torch.Tensor) -> torch.Tensor:
            return table.index_select(0, idx)

    if (h_in, w_in) == (H, W):
        return rows(ys * w_in + xs)
    if mode != "bilinear":
        return rows((ys * h_in // H) * w_in + xs * w_in // W)
    y0, y1, wy = _taps(H, h_in, logits.device)
    x0, x1, wx = _taps(W, w_in, logits.device)
    a0, a1, b0, b1 = y0[ys] * w_in, y1[ys] * w_in, x0[xs], x1[xs]
    ty, tx = wy[ys, None], wx[xs, None]
    top = torch.lerp(rows(a0 + b0), rows(a0 + b1), tx)
    bot = torch.lerp(rows(a1 + b0), rows(a1 + b1), tx)
    return torch.lerp(top, bot, ty)


def semantic_labels(logits: torch.Tensor, size: tuple[int, int], thing: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(label, thing_label)``, both ``(H, W) int64``: the argmax over all classes and over the classes
    where ``thing (N_cl,) bool`` is set (an index into those), by :func:`upsample_labels`."""
    tl = logits[thing] if bool(thing.any()) else logits[:1]
    return upsample_labels(logits, size, mode), upsample_labels(tl, size, mode)


def _lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a 1-D table; index_select is several times faster than advanced indexing on
    the CPU."""
    return table.index_select(0, index.reshape(-1)).reshape(index.shape)


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
        # train id → position among the thing classes (0 for stuff; only read where the class is a thing)
        self.thing_index = torch.zeros(len(self.thing), dtype=torch.long, device=device)
        self.thing_index[self.thing_ids] = torch.arange(len(self.thing_ids), device=device)


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
    sem = semantic.float()
    resized = sem.shape[-2:] != (H, W) and cfg.semantic_upsample == "bilinear"
    table = pixel_major(sem) if resized else None
    label = upsample_labels(sem, (H, W), cfg.semantic_upsample, crop=(h, w), table=table)
    label_is_thing = _lookup(tables.thing, label)
    heat = center[0, :h, :w].float()
    off = center_offset[:, :h, :w].float()
    if cfg.grouping == "ppgbf":
        mask = torch.sigmoid(foreground[0, :h, :w].float()) > cfg.foreground_threshold
        inst, _, score = instance_map(heat, off, box_offset[:, :h, :w].float(), mask, cfg)
    else:
        inst, _, score = instance_map(heat, off, None, label_is_thing, cfg)

    K, T = score.numel(), tables.thing_ids.numel()
    n_inst = 0
    if K and T:
        # Where the overall argmax is a thing class it is also the argmax over the thing classes; only
        # instance pixels labelled stuff need the thing channels, interpolated at those pixels alone.
        thing_label = _lookup(tables.thing_index, label)
        need = torch.nonzero(((inst > 0) & ~label_is_thing).reshape(-1)).squeeze(1)
        if need.numel():
            vals = logits_at(sem, (H, W), need // w, need % w, cfg.semantic_upsample, table)
            thing_label.view(-1)[need] = vals[:, tables.thing].argmax(1)
        votes = torch.bincount((inst * T + thing_label).reshape(-1), minlength=(K + 1) * T).reshape(K + 1, T)[1:]
        area = votes.sum(1)
        keep = (area > 0) & (area >= cfg.min_instance_area)
        cls = tables.thing_ids[votes.argmax(1)]
        # Renumber kept instances 1..n in score order; dropped ones go to 0.
        renum = torch.zeros(K + 1, dtype=torch.long, device=inst.device)
        renum[1:][keep] = torch.arange(1, int(keep.sum()) + 1, device=inst.device)
        inst = _lookup(renum, inst)
        n_inst = int(keep.sum())
        inst_cls = cls[keep]
        inst_score = score[keep]
    # Stuff: the semantic argmax where no instance is, when it names a stuff class with enough pixels.
    stuff_px = (inst == 0) & ~label_is_thing
    n_cl = len(tables.category_id)
    stuff_area = torch.bincount(torch.where(stuff_px, label, n_cl).reshape(-1), minlength=n_cl + 1)[:n_cl]
    stuff_ok = (stuff_area >= max(cfg.stuff_area, 1)) & ~tables.thing
    stuff_classes = torch.nonzero(stuff_ok).squeeze(1)
    # One compact segment index per pixel: 1..n_inst instances, then one per surviving stuff class.
    stuff_slot = torch.zeros(n_cl, dtype=torch.long, device=inst.device)
    stuff_slot[stuff_classes] = torch.arange(n_inst + 1, n_inst + 1 + stuff_classes.numel(), device=inst.device)
    index = torch.where(stuff_px, _lookup(stuff_slot, label), inst)
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
    lut = torch.tensor([VOID] + seg_ids, dtype=torch.int32, device=inst.device)
    panoptic = _lookup(lut, index)

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
    "upsample_labels",
    "logits_at",
    "pixel_major",
    "argmax_upsampled",
    "merge_image",
    "postprocess",
    "to_original_size",
    "coco_categories",
    "write_panoptic",
]
