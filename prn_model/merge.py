"""Majority voting and panoptic merging (paper §3.5).

:func:`postprocess` turns a batch of PRN head outputs into one panoptic id map per image:

- instances from :mod:`prn_model.ppgbf` (PPGBF, or Panoptic-DeepLab grouping for the §4.5 ablation);
- each instance's class is the most frequent *thing* class of the semantic prediction over its pixels
  (per-pixel argmax over the thing channels; ties go to the lower train id);
- stuff is the semantic argmax on pixels no instance claims, when that argmax is a stuff class; a stuff
  class with fewer than ``stuff_area`` pixels in the image becomes VOID, as does any remaining pixel;
- ids come from :class:`prn_data.records.IdAllocator`: ``category_id * label_divisor + k`` (k = 1, 2, … per
  class in decreasing center score; 0 for stuff), VOID = −1, with the dataset's own category ids (README,
  "Conventions");
- an instance's ``score`` is the center heatmap's value at its center (:func:`prn_model.ppgbf.find_centers`):
  a regression output (trained towards Gaussians of peak 1, or the base's score), so it can exceed 1 (1.025
  was seen); it is kept as predicted here and clamped to [0, 1] when written
  (:func:`prn_data.base.export.clamp_score`).

The semantic labels at full resolution come from :mod:`prn_model.upsample`; writing the result as COCO
panoptic files is :mod:`prn_model.predictions`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from prn_data.errors import PrnError
from prn_data.records import LABEL_DIVISOR, VOID, CategorySet, IdAllocator, Segment

from .ppgbf import PostProcessConfig, group_foreground
from .upsample import argmax_at, lookup, upsample_labels


def _areas_boxes(index: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel counts ``(n,)`` and COCO ``[x, y, w, h]`` boxes ``(n, 4)`` of the labels 1..n of ``index (H,
    W)`` (0 = none), from the map's horizontal runs of one label: a segment map has far fewer runs than
    pixels, so after one comparison pass everything is counted per run. A run adds its length to its
    label's area, marks its row, and marks its column span through a difference table (+1 at its first
    column, −1 after its last, summed along the columns)."""
    H, W = index.shape
    dev = index.device
    start = torch.ones((H, W), dtype=torch.bool, device=dev)
    torch.ne(index[:, 1:], index[:, :-1], out=start[:, 1:])
    p = torch.nonzero(start.reshape(-1)).squeeze(1)
    # Every row starts a run, so a run ends where the next one (in raster order) starts.
    length = torch.diff(p, append=torch.tensor([H * W], device=dev))
    lab = index.reshape(-1).index_select(0, p).long()
    row = p // W
    c0 = p - row * W
    areas = torch.zeros(n + 1, dtype=torch.long, device=dev).index_add_(0, lab, length)[1:]
    rows = torch.bincount(lab * H + row, minlength=(n + 1) * H).reshape(n + 1, H)[1:] > 0
    edge = torch.zeros((n + 1) * (W + 1), dtype=torch.long, device=dev)
    at = lab * (W + 1)
    edge.index_add_(0, at + c0, torch.ones_like(c0))
    edge.index_add_(0, at + c0 + length, torch.full_like(c0, -1))
    cols = edge.view(n + 1, W + 1)[1:, :W].cumsum(1) > 0

    def span(m: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(L, device=m.device)
        first = torch.where(m, pos, L).amin(1)
        last = torch.where(m, pos, -1).amax(1)
        return first, last

    y0, y1 = span(rows, H)
    x0, x1 = span(cols, W)
    return areas, torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dim=1)


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
        ids = self.thing_ids.tolist()
        # Thing classes usually occupy one run of train ids: their logits are then a view, not a copy.
        self.thing_run = (ids[0], ids[-1] + 1) if ids and ids == list(range(ids[0], ids[-1] + 1)) else None

    def thing_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The thing channels ``(T, ...)`` of ``logits (N_cl, ...)``."""
        if self.thing_run is not None:
            return logits[self.thing_run[0] : self.thing_run[1]]
        return logits.index_select(0, self.thing_ids)


def merge_image(
    semantic: torch.Tensor,
    center: torch.Tensor,
    center_offset: torch.Tensor,
    box_offset: torch.Tensor | None,
    foreground: torch.Tensor | None,
    *,
    tables: CategoryTables,
    cfg: PostProcessConfig,
    size: tuple[int, int] | None = None,
    label_divisor: int = LABEL_DIVISOR,
) -> tuple[np.ndarray, list[Segment]]:
    """Panoptic segmentation of one image from its head outputs (§3.5).

    ``semantic (N_cl, H/4, W/4)`` logits (or ``(N_cl, H, W)``), ``center (1, H, W)``, ``center_offset
    (2, H, W)``, ``box_offset (4, H, W)`` pixels or None (a model trained without box offsets: no box gate),
    ``foreground (1, H, W)`` logit (unused by Panoptic-DeepLab grouping). The box gate applies when
    ``cfg.box_gate`` and box offsets are given (§3.5; its absence is the §4.5 ablation). ``size = (h, w)``: the valid top-left part of a padded canvas.
    ``label_divisor``: of the panoptic ids (the store's). Returns ``(panoptic (h, w) int32`` with VOID = −1,
    ``segments)``.
    """
    H, W = center.shape[-2:]
    h, w = size if size is not None else (H, W)
    if semantic.shape[0] != len(tables.category_id):
        raise PrnError(f"semantic output has {semantic.shape[0]} classes, the dataset {len(tables.category_id)}")
    sem = semantic.float()
    label = upsample_labels(sem, (H, W), cfg.semantic_upsample, crop=(h, w), dtype=torch.int32)
    heat = center[0, :h, :w].float()
    off = center_offset[:, :h, :w].float()
    if cfg.grouping == "ppgbf":
        mask = torch.sigmoid(foreground[0, :h, :w].float()) > cfg.foreground_threshold
        boxes = box_offset[:, :h, :w].float() if cfg.box_gate and box_offset is not None else None
        flat, k, _, score = group_foreground(heat, off, boxes, mask, cfg)
    else:
        flat, k, _, score = group_foreground(heat, off, None, lookup(tables.thing, label), cfg)
    # Everything about instances works on the list of masked pixels (``flat``, center ``k``, −1 for
    # none), never on a full-size map.
    plabel = label.reshape(-1).index_select(0, flat)
    pid, inst_cls, inst_score = _vote(sem, plabel, flat, k, score, tables=tables, cfg=cfg, canvas=(H, W), width=w)
    index, stuff_classes = _segment_index(label, plabel, flat, pid, n_inst=inst_cls.numel(), tables=tables, cfg=cfg)
    return _segments(index, inst_cls, inst_score, stuff_classes, tables=tables, label_divisor=label_divisor)


def _vote(
    sem: torch.Tensor,
    plabel: torch.Tensor,
    flat: torch.Tensor,
    k: torch.Tensor,
    score: torch.Tensor,
    *,
    tables: CategoryTables,
    cfg: PostProcessConfig,
    canvas: tuple[int, int],
    width: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each instance's class by majority vote of its pixels' thing labels, and the instances kept.

    ``plabel (n,) int32``: the semantic label of each masked pixel ``flat (n,)`` (raster index in a map of
    ``width`` columns), ``k (n,)`` its center (−1: none), ``score (K,)`` the centers'; ``sem`` the semantic
    logits of the ``canvas = (H, W)`` (at 1/4 or full resolution). Returns ``(pid (n,) int32`` each masked pixel's kept instance
    (1..n_inst in score order, 0 for none), ``classes (n_inst,)`` train ids, ``scores (n_inst,))``."""
    dev = plabel.device
    K, T = score.numel(), tables.thing_ids.numel()
    pid = torch.zeros_like(plabel)
    if not (K and T and flat.numel()):
        return pid, tables.thing_ids[:0], score[:0]
    k1 = k + 1  # 0: no instance
    # Where the overall argmax is a thing class it is also the argmax over the thing classes; only
    # instance pixels labelled stuff need the thing channels. Those are counted first as votes for
    # thing 0 (the stuff classes' thing_index; the right vote when there is one thing class), so
    # the row sums are the instance areas.
    thing_label = tables.thing_index.index_select(0, plabel)
    need = torch.nonzero((k1 > 0) & ~tables.thing.index_select(0, plabel)).squeeze(1)
    votes = torch.bincount(k1 * T + thing_label, minlength=(K + 1) * T).reshape(K + 1, T)
    area = votes[1:].sum(1)
    if need.numel() and T > 1:
        # Take those votes back. An instance whose leading class is ahead of every other by more
        # than its number of such pixels keeps that class as its strict maximum however they
        # vote, so only the other instances' pixels are interpolated (at those pixels alone).
        k_need = k1.index_select(0, need)
        n_need = torch.bincount(k_need, minlength=K + 1)
        votes[:, 0] -= n_need
        top = votes.topk(2, dim=1).values
        undecided = top[:, 0] - top[:, 1] <= n_need
        need = need.index_select(0, torch.nonzero(undecided.index_select(0, k_need)).squeeze(1))
        if need.numel():
            p = flat.index_select(0, need)
            tl = argmax_at(tables.thing_logits(sem), canvas, p // width, p % width, cfg.semantic_upsample)
            votes.view(-1).index_add_(0, k1.index_select(0, need) * T + tl, torch.ones_like(tl))
    votes = votes[1:]
    keep = (area > 0) & (area >= cfg.min_instance_area)
    n_inst = int(keep.sum())
    # Renumber kept instances 1..n in score order; dropped ones (and "none") go to 0.
    renum = torch.zeros(K + 1, dtype=torch.int32, device=dev)
    renum[1:][keep] = torch.arange(1, n_inst + 1, device=dev, dtype=torch.int32)
    return renum.index_select(0, k1), tables.thing_ids[votes.argmax(1)][keep], score[keep]


def _segment_index(
    label: torch.Tensor,
    plabel: torch.Tensor,
    flat: torch.Tensor,
    pid: torch.Tensor,
    *,
    n_inst: int,
    tables: CategoryTables,
    cfg: PostProcessConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One compact segment index per pixel, ``(h, w) int32``: 0 VOID, 1..n_inst the kept instances, then
    one per stuff class that survives; and those stuff classes' train ids.

    Stuff is the semantic argmax ``label`` where no kept instance is, when it names a stuff class with at
    least ``cfg.stuff_area`` pixels; its area is the class's count over the image less its count under kept
    instances (counted with the masked pixels' (label, kept) pairs, so no list of kept pixels is made)."""
    dev = label.device
    n_cl = len(tables.category_id)
    kept = pid > 0
    under = torch.bincount(plabel * 2 + kept, minlength=2 * n_cl).view(n_cl, 2)[:, 1]
    stuff_area = torch.bincount(label.reshape(-1), minlength=n_cl) - under
    stuff_ok = (stuff_area >= max(cfg.stuff_area, 1)) & ~tables.thing
    stuff_classes = torch.nonzero(stuff_ok).squeeze(1)
    stuff_slot = torch.zeros(n_cl, dtype=torch.int32, device=dev)
    stuff_slot[stuff_classes] = torch.arange(n_inst + 1, n_inst + 1 + stuff_classes.numel(), device=dev, dtype=torch.int32)
    index = lookup(stuff_slot, label)
    # Masked pixels outside kept instances are rewritten with the stuff index they already hold.
    index.view(-1).index_copy_(0, flat, torch.where(kept, pid, stuff_slot.index_select(0, plabel)))
    return index, stuff_classes


def _segments(
    index: torch.Tensor,
    inst_cls: torch.Tensor,
    inst_score: torch.Tensor,
    stuff_classes: torch.Tensor,
    *,
    tables: CategoryTables,
    label_divisor: int,
) -> tuple[np.ndarray, list[Segment]]:
    """The panoptic id map of the compact segment ``index`` (see :func:`_segment_index`) and its
    segments: the instances (train ids ``inst_cls``, scores ``inst_score``) in order, then the stuff."""
    ids = IdAllocator(label_divisor)
    cat_ids = tables.category_id.tolist()
    seg_ids: list[int] = []
    segs_meta: list[tuple[int, int, bool, float | None]] = []
    for c, s in zip(inst_cls.tolist(), inst_score.tolist()):
        seg_ids.append(ids.thing(cat_ids[c]))
        segs_meta.append((cat_ids[c], c, True, float(s)))
    for c in stuff_classes.tolist():
        seg_ids.append(ids.stuff(cat_ids[c]))
        segs_meta.append((cat_ids[c], c, False, None))
    lut = torch.tensor([VOID] + seg_ids, dtype=torch.int32, device=index.device)
    panoptic = lookup(lut, index)
    n_seg = len(seg_ids)
    areas, boxes = _areas_boxes(index, n_seg) if n_seg else (torch.zeros(0), torch.zeros(0, 4))
    areas, boxes = areas.tolist(), boxes.tolist()
    segments = []
    for i, (sid, (cid, tid, isthing, sc)) in enumerate(zip(seg_ids, segs_meta)):
        segments.append(Segment(id=sid, category_id=cid, train_id=tid, isthing=isthing, iscrowd=False,
                                area=int(areas[i]), bbox=tuple(int(v) for v in boxes[i]), score=sc))
    return panoptic.cpu().numpy(), segments


def postprocess(
    outputs: dict[str, torch.Tensor],
    categories: CategorySet,
    cfg: PostProcessConfig | None = None,
    *,
    sizes: Sequence[tuple[int, int]] | None = None,
    label_divisor: int = LABEL_DIVISOR,
) -> list[tuple[np.ndarray, list[Segment]]]:
    """Batched post-processing of PRN's outputs (the network's dict: ``semantic (B, N_cl, H/4, W/4)``,
    ``center (B, 1, H, W)``, ``center_offset (B, 2, H, W)``, ``box_offset (B, 4, H, W)`` (absent when the
    model has no box offsets: no box gate), ``foreground (B, 1, H, W)``) on the tensors' device. ``sizes``: each image's valid ``(h, w)`` within the canvas;
    ``label_divisor``: of the panoptic ids (the store's). Returns one ``(panoptic (h, w) int32, segments)``
    per image, at the network's resolution."""
    cfg = cfg or PostProcessConfig()
    tables = CategoryTables(categories, outputs["center"].device)
    fg = outputs.get("foreground")
    box = outputs.get("box_offset")  # absent for a model trained with box_offsets off (§4.5 ablation)
    out = []
    with torch.no_grad():
        for b in range(outputs["center"].shape[0]):
            out.append(
                merge_image(
                    outputs["semantic"][b],
                    outputs["center"][b],
                    outputs["center_offset"][b],
                    None if box is None else box[b],
                    None if fg is None else fg[b],
                    tables=tables,
                    cfg=cfg,
                    size=None if sizes is None else tuple(int(v) for v in sizes[b]),
                    label_divisor=label_divisor,
                )
            )
    return out


__all__ = ["CategoryTables", "merge_image", "postprocess"]
