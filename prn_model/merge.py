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
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from prn_data.errors import PrnError
from prn_data.records import LABEL_DIVISOR, VOID, CategorySet, Segment

from .ppgbf import PostProcessConfig, group_foreground


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

    See :func:`_argmax_upsampled` (which returns int32). With ``where`` (bool, the output's shape) only
    boundary pixels inside it are resolved; the others keep the top-left source pixel's argmax.
    ``table`` is accepted for compatibility and not needed."""
    return _argmax_upsampled(logits, size, chunk, crop, where).long()


def _argmax_upsampled(
    logits: torch.Tensor,
    size: tuple[int, int],
    chunk: int = 1 << 22,
    crop: tuple[int, int] | None = None,
    where: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`argmax_upsampled` as ``int32`` (narrow labels are cheaper to build, scan and count).

    Every output pixel interpolates one 2×2 source block (rows i, i + 1; columns j, j + 1, clamped at the
    border). A bilinear value is a convex combination of its block's four values, so where the block's
    four argmaxes agree, so does the result: that test and the label copy run at the source resolution,
    and the full-size map is one gather of a per-block code. Pixels of the other (boundary) blocks are
    resolved by :func:`_resolve_blocks`."""
    H, W = size
    C, h_in, w_in = logits.shape
    dev = logits.device
    y0, _, wy = _taps(H, h_in, dev)
    x0, _, wx = _taps(W, w_in, dev)
    if crop is not None:
        y0, wy = y0[: crop[0]], wy[: crop[0]]
        x0, wx = x0[: crop[1]], wx[: crop[1]]
    W = x0.numel()
    low, runner_up = _first_argmax_runner_up(logits)
    low = low.to(torch.int32)
    i1, j1 = _next(h_in, dev), _next(w_in, dev)
    below = low.index_select(0, i1)
    agree = (low == low.index_select(1, j1)) & (low == below) & (low == below.index_select(1, j1))
    code = torch.where(agree, low, -1)
    # Columns first: the row gather then copies whole rows.
    out = code.index_select(1, x0).index_select(0, y0)
    if where is not None:
        top_left = low.index_select(1, x0).index_select(0, y0)
        out = torch.where(out < 0, top_left, out)
    blocks = torch.nonzero(~agree.reshape(-1)).squeeze(1)
    # The boundary pixels are listed from the blocks (not by scanning the full-size map), each with
    # its block's position in ``blocks``.
    py, px, pb = _block_pixels(blocks, y0, x0, h_in, w_in)
    if where is not None:
        keep = torch.nonzero(where[py, px]).squeeze(1)
        py, px, pb = py.index_select(0, keep), px.index_select(0, keep), pb.index_select(0, keep)
    if py.numel() == 0:
        return out
    pix = py * W + px
    taps = _block_taps(blocks, i1, j1, w_in)

    def at_taps(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1).index_select(0, taps.view(-1)).view(taps.shape)

    lab = _resolve_blocks(logits.reshape(C, -1), taps, at_taps(low), at_taps(runner_up), pb, wy.index_select(0, py)[None], wx.index_select(0, px)[None], chunk)
    out.view(-1).index_copy_(0, pix, lab.to(torch.int32))
    return out


def _first_argmax(x: torch.Tensor) -> torch.Tensor:
    """``x.max(0).indices`` (the first maximum's index over the classes of ``(C, ...)`` float logits, as
    int64 of shape ``x.shape[1:]``), computed faster on the CPU: a max reduction with indices along the
    strided class axis is several times slower than one without. Classes are cut into groups of about
    √C; the group maxima give the overall max, the first group reaching it is found by a short chain of
    comparisons, and within it the first class reaching it likewise. Exact (ties keep the lowest
    index); with a NaN present it falls back to ``max``."""
    return _first_argmax_runner_up(x, runner_up=False)[0]


def _first_argmax_runner_up(x: torch.Tensor, runner_up: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`_first_argmax` of ``x (C, ...)`` and, with ``runner_up``, the best value of any other class
    (the max over all classes but the argmax; −inf for one class), both of shape ``x.shape[1:]``. From
    the group maxima and the argmax's own group, already at hand, this costs a few passes over
    ``(√C, ...)`` rather than one over ``(C, ...)``."""
    C = x.shape[0]
    flat = x.reshape(C, -1)

    def fallback() -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = flat.max(0).indices
        second = flat.scatter(0, idx[None], float("-inf")).amax(0).view(x.shape[1:]) if runner_up else None
        return idx.view(x.shape[1:]), second

    if C < 16:
        return fallback()
    n, dev = flat.shape[1], x.device
    g = math.isqrt(C)
    G = C // g
    gm = flat[: G * g].view(G, g, n).amax(1)
    if G * g < C:
        gm = torch.cat([gm, flat[G * g :].amax(0, keepdim=True)])
    m = gm.amax(0)
    if bool(torch.isnan(m).any()):
        return fallback()
    # Walking backwards leaves the first match.
    grp = torch.full((n,), gm.shape[0] - 1, dtype=torch.long, device=dev)
    for j in range(gm.shape[0] - 2, -1, -1):
        grp.masked_fill_(gm[j] == m, j)
    # The last group may be short: its missing rows repeat class C − 1, after its real position.
    rows = (grp[None] * g + torch.arange(g, device=dev)[:, None]).clamp_(max=C - 1)
    vals = flat.gather(0, rows)
    k = torch.full((n,), g - 1, dtype=torch.long, device=dev)
    for j in range(g - 2, -1, -1):
        k.masked_fill_(vals[j] == m, j)
    idx = rows[0] + k
    second = None
    if runner_up:
        # The other groups' maxima and the own group's rows of other classes (a repeat of class
        # C − 1 is that class).
        others = gm.scatter_(0, grp[None], float("-inf")).amax(0)
        second = torch.maximum(others, vals.masked_fill_(rows == idx, float("-inf")).amax(0)).view(x.shape[1:])
    return idx.view(x.shape[1:]), second


def _block_pixels(blocks: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, h_in: int, w_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output pixels ``(py, px)`` interpolating the 2×2 source blocks whose top-left pixels are ``blocks
    (n_b,)`` (flat, row width ``w_in``), and each one's block number (position in ``blocks``), all
    ``(n,) int64``, block by block. ``y0 (H,)``, ``x0 (W,)``: each output row's / column's first source
    tap, non-decreasing, so a source row's output rows are one contiguous range."""
    ny = torch.bincount(y0, minlength=h_in)
    nx = torch.bincount(x0, minlength=w_in)
    first_y, first_x = ny.cumsum(0) - ny, nx.cumsum(0) - nx
    bi = blocks // w_in
    bj = blocks - bi * w_in
    by, bx = ny.index_select(0, bi), nx.index_select(0, bj)
    count = by * bx
    block = torch.repeat_interleave(count)
    start = count.cumsum(0) - count
    k = torch.arange(block.numel(), device=blocks.device) - start.index_select(0, block)
    w = bx.index_select(0, block)
    r = k // w
    py = first_y.index_select(0, bi).index_select(0, block) + r
    px = first_x.index_select(0, bj).index_select(0, block) + (k - r * w)
    return py, px, block


def _next(n: int, device: torch.device) -> torch.Tensor:
    """Index of the next source row (or column), clamped at the last: bilinear's second tap."""
    return (torch.arange(n, device=device) + 1).clamp_(max=n - 1)


def _block_taps(blocks: torch.Tensor, i1: torch.Tensor, j1: torch.Tensor, w_in: int) -> torch.Tensor:
    """``(4, n_b)`` flat source pixels (top-left, top-right, bottom-left, bottom-right) of the 2×2 blocks
    whose top-left pixels are ``blocks (n_b,)``."""
    bi, bj = blocks // w_in, blocks % w_in
    bi1, bj1 = i1.index_select(0, bi).mul_(w_in), j1.index_select(0, bj)
    bi = bi.mul_(w_in)
    return torch.stack([bi + bj, bi + bj1, bi1 + bj, bi1 + bj1])


def _unique_slots(index: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct values ``(u,) int64`` (ascending) of ``index`` (values in ``[0, n)``) and each entry's
    position among them (``index``'s shape), by marking a length-``n`` table (no sort)."""
    flat = index.reshape(-1)
    mark = torch.zeros(n, dtype=torch.bool, device=index.device)
    mark.index_fill_(0, flat, True)
    uniq = torch.nonzero(mark).squeeze(1)
    pos = torch.empty(n, dtype=torch.long, device=index.device)
    pos.index_copy_(0, uniq, torch.arange(uniq.numel(), device=index.device))
    return uniq, pos.index_select(0, flat).view(index.shape)


def _resolve_blocks(
    logits: torch.Tensor,
    taps: torch.Tensor,
    tap_cls: torch.Tensor,
    tap_runner_up: torch.Tensor,
    pb: torch.Tensor,
    ty: torch.Tensor,
    tx: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """Exact argmax of the bilinear interpolation at pixels of 2×2 source blocks, ``(n,) int64``.

    ``logits (C, h'·w')``: the source logits; ``taps (4, n_b)``: each block's source pixels (top-left,
    top-right, bottom-left, bottom-right, as :func:`_block_taps`); ``tap_cls, tap_runner_up (4, n_b)``:
    their argmax and the best logit of any other class there (:func:`_first_argmax_runner_up`); ``pb
    (n,)``: each pixel's block; ``ty, tx (1, n)``: its interpolation weights. An interpolated logit never
    exceeds its largest tap value, so when the best of the (≤ 4) tap-argmax classes, interpolated
    exactly, beats every other class's value at every tap, no other class can win. As that bound each
    tap's runner-up logit is used: it is at least the best logit of any non-candidate class there, so
    the test stays sound while reading no class vectors. The remaining pixels are interpolated
    over all classes, ``chunk`` values at a time. Every interpolation is the same lerp sequence, so a
    winner is bit-for-bit the full interpolation's argmax."""
    C, hw = logits.shape
    nb = taps.shape[1]
    # The value of candidate k at tap t: one flat gather, (4, n_b) per tap.
    kcol = tap_cls.long() * hw
    flat = logits.reshape(-1)
    v = [flat.index_select(0, (kcol + taps[t]).view(-1)).view(4, nb) for t in range(4)]
    vp = [x.index_select(1, pb) for x in v]
    val = torch.lerp(torch.lerp(vp[0], vp[1], tx), torch.lerp(vp[2], vp[3], tx), ty)
    # Reductions over an axis of 4 are slow on the CPU; elementwise chains over the 4 rows are not.
    best = torch.maximum(torch.maximum(val[0], val[1]), torch.maximum(val[2], val[3]))
    cp = tap_cls.index_select(1, pb)
    # argmax's rule on exact ties: the lowest class index.
    winner = torch.where(val[0] == best, cp[0], C)
    for t in range(1, 4):
        winner = torch.minimum(winner, torch.where(val[t] == best, cp[t], C))
    r = tap_runner_up
    bound = torch.maximum(torch.maximum(r[0], r[1]), torch.maximum(r[2], r[3])).index_select(0, pb)
    rest = torch.nonzero(best <= bound).squeeze(1)
    out = winner.long()
    step = max(1, chunk // max(C, 1))
    for s in range(0, rest.numel(), step):
        r = rest[s : s + step]
        b = pb.index_select(0, r)
        v = [logits.index_select(1, taps[t].index_select(0, b)) for t in range(4)]
        rx, ry = tx[:, r], ty[:, r]
        val = torch.lerp(torch.lerp(v[0], v[1], rx), torch.lerp(v[2], v[3], rx), ry)
        out.index_copy_(0, r, val.max(0).indices)
    return out


def pixel_major(logits: torch.Tensor) -> torch.Tensor:
    """``(h'·w', C)`` contiguous copy of ``(C, h', w')`` logits, so a pixel's class vector is one row."""
    return logits.reshape(logits.shape[0], -1).t().contiguous()


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
    then argmax; see :func:`argmax_upsampled`) or "nearest" (argmax, then repeat). ``table`` is accepted
    for compatibility and not needed."""
    return _upsample_labels(logits, size, mode, crop, where).long()


def _upsample_labels(
    logits: torch.Tensor,
    size: tuple[int, int],
    mode: str,
    crop: tuple[int, int] | None = None,
    where: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`upsample_labels` as ``int32``."""
    H, W = size
    h, w = crop if crop is not None else (H, W)
    if logits.shape[-2:] == (H, W):
        return logits[:, :h, :w].max(0).indices.to(torch.int32)
    if mode == "bilinear":
        return _argmax_upsampled(logits, (H, W), crop=(h, w), where=where)
    rows = (torch.arange(h, device=logits.device) * logits.shape[1]) // H
    cols = (torch.arange(w, device=logits.device) * logits.shape[2]) // W
    return _first_argmax(logits).to(torch.int32).index_select(1, cols).index_select(0, rows)


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


def _thing_argmax_at(logits: torch.Tensor, size: tuple[int, int], ys: torch.Tensor, xs: torch.Tensor, mode: str) -> torch.Tensor:
    """``(n,) int64`` argmax of the (thing) ``logits (T, h', w')`` resized as :func:`upsample_labels`
    does, at the pixels ``(ys, xs)`` only."""
    # (Instance pixels labelled stuff lie on class boundaries, so the block shortcut of
    # _argmax_upsampled rarely applies to them: interpolate directly.) Transposed back to (T, n), contiguous here: max over the first axis is the fast reduction.
    H, W = size
    C, h_in, w_in = logits.shape
    if mode != "bilinear" or (h_in, w_in) == (H, W):
        return logits_at(logits, size, ys, xs, mode).t().max(0).indices
    # As logits_at, but each distinct source pixel's class vector is gathered once (pixels of one 4×4
    # patch share their taps), into a small pixel-major table whose rows are then copied whole.
    y0, y1, wy = _taps(H, h_in, logits.device)
    x0, x1, wx = _taps(W, w_in, logits.device)
    a0, a1 = y0.index_select(0, ys).mul_(w_in), y1.index_select(0, ys).mul_(w_in)
    b0, b1 = x0.index_select(0, xs), x1.index_select(0, xs)
    src, slot = _unique_slots(torch.stack([a0 + b0, a0 + b1, a1 + b0, a1 + b1]), h_in * w_in)
    table = logits.reshape(C, -1).index_select(1, src).t().contiguous()
    rows = [table.index_select(0, slot[t]) for t in range(4)]
    ty, tx = wy.index_select(0, ys)[:, None], wx.index_select(0, xs)[:, None]
    val = torch.lerp(torch.lerp(rows[0], rows[1], tx), torch.lerp(rows[2], rows[3], tx), ty)
    return val.t().max(0).indices


def _lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a 1-D table; index_select is several times faster than advanced indexing on
    the CPU."""
    return table.index_select(0, index.reshape(-1)).reshape(index.shape)


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
    label = _upsample_labels(sem, (H, W), cfg.semantic_upsample, crop=(h, w))
    heat = center[0, :h, :w].float()
    off = center_offset[:, :h, :w].float()
    if cfg.grouping == "ppgbf":
        mask = torch.sigmoid(foreground[0, :h, :w].float()) > cfg.foreground_threshold
        flat, k, _, score = group_foreground(heat, off, box_offset[:, :h, :w].float(), mask, cfg)
    else:
        flat, k, _, score = group_foreground(heat, off, None, _lookup(tables.thing, label), cfg)

    dev = label.device
    n_cl = len(tables.category_id)
    label_flat = label.reshape(-1)
    K, T = score.numel(), tables.thing_ids.numel()
    n_inst = 0
    # Everything about instances works on the list of masked pixels (``flat``, center ``k``, −1 for
    # none), never on a full-size map.
    plabel = label_flat.index_select(0, flat)
    pid = torch.zeros_like(plabel)  # each masked pixel's kept instance (1..n_inst), 0 for none
    if K and T and flat.numel():
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
                tl = _thing_argmax_at(tables.thing_logits(sem), (H, W), p // w, p % w, cfg.semantic_upsample)
                votes.view(-1).index_add_(0, k1.index_select(0, need) * T + tl, torch.ones_like(tl))
        votes = votes[1:]
        keep = (area > 0) & (area >= cfg.min_instance_area)
        n_inst = int(keep.sum())
        # Renumber kept instances 1..n in score order; dropped ones (and "none") go to 0.
        renum = torch.zeros(K + 1, dtype=torch.int32, device=dev)
        renum[1:][keep] = torch.arange(1, n_inst + 1, device=dev, dtype=torch.int32)
        inst_cls = tables.thing_ids[votes.argmax(1)][keep]
        inst_score = score[keep]
        pid = renum.index_select(0, k1)
    # Stuff: the semantic argmax where no kept instance is, when it names a stuff class with enough
    # pixels; its area is the class's count over the image less its count under kept instances
    # (counted with the masked pixels' (label, kept) pairs, so no list of kept pixels is made).
    kept = pid > 0
    under = torch.bincount(plabel * 2 + kept, minlength=2 * n_cl).view(n_cl, 2)[:, 1]
    stuff_area = torch.bincount(label_flat, minlength=n_cl) - under
    stuff_ok = (stuff_area >= max(cfg.stuff_area, 1)) & ~tables.thing
    stuff_classes = torch.nonzero(stuff_ok).squeeze(1)
    # One compact segment index per pixel: 1..n_inst instances, then one per surviving stuff class.
    stuff_slot = torch.zeros(n_cl, dtype=torch.int32, device=dev)
    stuff_slot[stuff_classes] = torch.arange(n_inst + 1, n_inst + 1 + stuff_classes.numel(), device=dev, dtype=torch.int32)
    index = _lookup(stuff_slot, label)
    # Masked pixels outside kept instances are rewritten with the stuff index they already hold.
    index.view(-1).index_copy_(0, flat, torch.where(kept, pid, stuff_slot.index_select(0, plabel)))
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
    lut = torch.tensor([VOID] + seg_ids, dtype=torch.int32, device=dev)
    panoptic = _lookup(lut, index)

    areas, boxes = _areas_boxes(index, n_seg) if n_seg else (torch.zeros(0), torch.zeros(0, 4))
    areas, boxes = areas.tolist(), boxes.tolist()
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


def write_panoptic_png(png_dir: Path, image_id: Any, file_name: str, panoptic: np.ndarray, segments: Sequence[Segment]) -> dict:
    """Write one prediction's PNG into ``png_dir`` (named after ``file_name`` with a ``.png`` suffix;
    ``panoptic (h, w)`` int with VOID = −1) and return its COCO panoptic annotation."""
    from prn_data.panoptic_io import write_rgb_ids

    png = Path(file_name).with_suffix(".png").name
    write_rgb_ids(Path(png_dir) / png, panoptic)
    return {"image_id": image_id, "file_name": png, "segments_info": [s.to_json() for s in segments]}


def write_panoptic_json(path: str | Path, annotations: Sequence[dict], categories: CategorySet) -> Path:
    """Write the COCO panoptic JSON of ``annotations`` (from :func:`write_panoptic_png`) to ``path``."""
    with open(path, "w") as f:
        json.dump({"annotations": list(annotations), "categories": coco_categories(categories)}, f)
    return Path(path)


def write_panoptic(
    out_dir: str | Path,
    items: Sequence[tuple[Any, str, np.ndarray, Sequence[Segment]]],
    categories: CategorySet,
    json_name: str = "panoptic.json",
) -> Path:
    """Write COCO panoptic predictions: ``out_dir/<json_name stem>/<file>.png`` and ``out_dir/<json_name>``.

    ``items``: ``(image_id, file_name, panoptic (h, w) int32 with VOID = −1, segments)`` per image; the
    PNG is named after ``file_name`` with a ``.png`` suffix. Returns the JSON's path."""
    out_dir = Path(out_dir)
    png_dir = out_dir / Path(json_name).stem
    png_dir.mkdir(parents=True, exist_ok=True)
    anns = [write_panoptic_png(png_dir, *item) for item in items]
    return write_panoptic_json(out_dir / json_name, anns, categories)


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
    "write_panoptic_png",
    "write_panoptic_json",
    "write_panoptic",
]
