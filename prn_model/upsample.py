"""Semantic labels at full resolution: the argmax of upsampled logits (paper §3.5).

PRN's semantic head predicts at 1/4 resolution (§3.4); merging needs each full-resolution pixel's class.
As Panoptic-DeepLab, the logits are bilinearly resized (align_corners=False) and then reduced by argmax, or,
the cheaper option, reduced first and each label repeated ("nearest"). The kernels here give the labels of
:func:`torch.nn.functional.interpolate` followed by ``argmax`` (ties to the lower class) without building
the ``(C, H, W)`` tensor:

- :func:`upsample_labels` / :func:`argmax_upsampled`: the label map, cropped to the image's valid part;
- :func:`logits_at` / :func:`argmax_at`: the resized logits, or their argmax, at a list of pixels only;
- :func:`lookup`: a 1-D table read at every pixel of a label map.
"""

from __future__ import annotations

import math

import torch


def _taps(out: int, inp: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows (i0, i1) and weight of i1 of PyTorch's bilinear resize (align_corners=False)."""
    src = ((torch.arange(out, device=device, dtype=torch.float32) + 0.5) * (inp / out) - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=inp - 1)
    return i0, (i0 + 1).clamp_(max=inp - 1), src - i0


def argmax_upsampled(
    logits: torch.Tensor,
    size: tuple[int, int],
    *,
    chunk: int = 1 << 22,
    crop: tuple[int, int] | None = None,
    where: torch.Tensor | None = None,
    dtype: torch.dtype = torch.int64,
) -> torch.Tensor:
    """Argmax over classes of ``(C, h', w')`` logits bilinearly resized to ``size`` (align_corners=False),
    as ``(H, W)`` labels of ``dtype`` (or the top-left ``crop = (h, w)`` of it), without building ``(C, H,
    W)``. ``torch.int32`` labels are cheaper to build, scan and count, and are what the kernels make.

    See :func:`_argmax_upsampled`. With ``where`` (bool, the output's shape) only boundary pixels inside it
    are resolved; the others keep the top-left source pixel's argmax."""
    return _argmax_upsampled(logits, size, chunk=chunk, crop=crop, where=where).to(dtype)


def _argmax_upsampled(
    logits: torch.Tensor,
    size: tuple[int, int],
    *,
    chunk: int = 1 << 22,
    crop: tuple[int, int] | None = None,
    where: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`argmax_upsampled` as ``int32``.

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

    lab = _resolve_blocks(logits.reshape(C, -1), taps, at_taps(low), at_taps(runner_up), pb=pb,
                          ty=wy.index_select(0, py)[None], tx=wx.index_select(0, px)[None], chunk=chunk)
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
    *,
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


def upsample_labels(
    logits: torch.Tensor,
    size: tuple[int, int],
    mode: str,
    *,
    crop: tuple[int, int] | None = None,
    where: torch.Tensor | None = None,
    dtype: torch.dtype = torch.int64,
) -> torch.Tensor:
    """``(h, w)`` argmax labels (of ``dtype``) of ``(C, h', w')`` logits at the canvas ``size = (H, W)``
    (h' = H/4, or h' = H for maps already at full size), cropped to ``crop``. ``mode``: "bilinear" (resize
    the logits, then argmax; see :func:`argmax_upsampled`) or "nearest" (argmax, then repeat; §3.5's
    cheaper option with many classes)."""
    return _upsample_labels(logits, size, mode, crop=crop, where=where).to(dtype)


def _upsample_labels(
    logits: torch.Tensor,
    size: tuple[int, int],
    mode: str,
    *,
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
) -> torch.Tensor:
    """``(n, C)`` logits of ``(C, h', w')`` resized to the canvas ``size`` (as :func:`upsample_labels`), read
    only at the pixels ``(ys, xs)``."""
    H, W = size
    C, h_in, w_in = logits.shape
    # Gather the few pixels from each class plane rather than transposing the whole map.
    flat = logits.reshape(C, -1)

    def rows(idx: torch.Tensor) -> torch.Tensor:
        return flat.index_select(1, idx).t()

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


def argmax_at(logits: torch.Tensor, size: tuple[int, int], ys: torch.Tensor, xs: torch.Tensor, mode: str) -> torch.Tensor:
    """``(n,) int64`` argmax of ``logits (C, h', w')`` resized as :func:`upsample_labels` does, at the
    pixels ``(ys, xs)`` only (merging reads the thing channels at instance pixels labelled stuff)."""
    # Such pixels lie on class boundaries, so the block shortcut of _argmax_upsampled rarely applies to
    # them: interpolate directly. Transposed back to (C, n), contiguous: max over the first axis is the
    # fast reduction.
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


def lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a 1-D table; index_select is several times faster than advanced indexing on
    the CPU."""
    return table.index_select(0, index.reshape(-1)).reshape(index.shape)


__all__ = [
    "argmax_upsampled",
    "upsample_labels",
    "logits_at",
    "argmax_at",
    "semantic_labels",
    "lookup",
]
