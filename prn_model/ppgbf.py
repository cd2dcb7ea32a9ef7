"""PPGBF: post-processing guided by bounding box and foreground mask (paper §3.5), in PyTorch.

Steps for one image (the batch is looped, everything inside is tensor code that runs on CPU or GPU):

1. Center NMS (§3.5): a pixel is a center when it equals the max of its ``nms_kernel`` window and its
   heat exceeds θ; the ``top_k`` highest are kept. Candidates are ordered by a stable descending sort so a
   tie at the k-th score keeps the first ones in raster order, up to k (Panoptic-DeepLab's strict ``>``
   against the k-th score drops every tied peak).
2. Each center's box is read from the box offsets at the center pixel; each pixel's own box from its own
   box offsets. Boxes are inclusive pixel boxes (a zero offset is a one-pixel side), so their area is
   ``(t + b + 1)·(l + r + 1)``. Negative offsets are clamped to 0.
3. Grouping (§3.5): every foreground pixel (probability > 0.5) goes to the nearest center, distance
   measured from pixel + predicted center offset, among the centers whose box has IoU > 0.5 with the
   pixel's box; a pixel with no such center is left unassigned. Exactly computed in two passes: first the
   nearest center overall, chunked over pixels so at most ``chunk_pairs`` pixel×center distances exist
   at once; if that center passes the box gate it is the answer; only the pixels whose nearest center
   fails the gate get the full gated search (again chunked).

Ablations (§4.5): ``box_gate=False`` keeps the foreground filter of step 3 but drops the box gate (every
foreground pixel goes to its nearest center); a model trained without box offsets has no gate either way.
``grouping="panoptic_deeplab"`` groups the semantic thing pixels by nearest center alone: no box gate, no
foreground branch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

GROUPINGS = ("ppgbf", "panoptic_deeplab")


@dataclass(frozen=True)
class PostProcessConfig:
    """Post-processing settings (paper §3.5 defaults).

    ``stuff_area``: stuff classes with fewer pixels than this in an image become VOID (COCO 4096,
    Cityscapes 2048; counted at the network's output resolution). ``min_instance_area``: instances with
    fewer pixels are dropped. ``semantic_upsample``: how the 1/4 semantic logits reach full resolution,
    ``"bilinear"`` (logits, as Panoptic-DeepLab) or ``"nearest"`` (argmax at 1/4, each label repeated
    4×4; far cheaper with many classes). ``chunk_pairs`` bounds the pixel×center work held at once.
    ``box_iou``: the box gate's IoU threshold τ (a pixel may join a center only when IoU > τ);
    ``box_gate``: apply that gate at all (off: nearest foreground center, the §4.5 "without box offsets"
    ablation with the foreground filter kept).
    """

    threshold: float = 0.2
    nms_kernel: int = 7
    top_k: int = 200
    box_iou: float = 0.5
    box_gate: bool = True
    foreground_threshold: float = 0.5
    grouping: str = "ppgbf"
    stuff_area: int = 4096
    min_instance_area: int = 0
    semantic_upsample: str = "bilinear"
    chunk_pairs: int = 1 << 21

    def __post_init__(self) -> None:
        if self.grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, not {self.grouping!r}")
        if self.semantic_upsample not in ("bilinear", "nearest"):
            raise ValueError(f"semantic_upsample must be 'bilinear' or 'nearest', not {self.semantic_upsample!r}")
        if self.nms_kernel < 1 or self.nms_kernel % 2 == 0:
            raise ValueError(f"nms_kernel must be a positive odd number, not {self.nms_kernel}")
        if self.top_k < 1 or self.chunk_pairs < 1:
            raise ValueError("top_k and chunk_pairs must be positive")
        if not 0 <= self.box_iou < 1:
            raise ValueError(f"box_iou must lie in [0, 1), not {self.box_iou}")

    def to_json(self) -> dict:
        return asdict(self)


def _max_filter_rows(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Max over a window of ``2·radius + 1`` along the last axis (outside counts as −inf), by doubling
    the covered span: log₂(k) elementwise maxima instead of a k-wide pooling kernel."""
    W = x.shape[-1]
    window = 2 * radius + 1
    m = F.pad(x, (radius, radius), value=float("-inf"))
    span = 1
    while span * 2 <= window:
        m = torch.maximum(m[..., :-span], m[..., span:])
        span *= 2
    if window > span:
        rest = window - span
        m = torch.maximum(m[..., :-rest], m[..., rest:])
    return m[..., :W]


def _max_filter(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Max over a window of ``2·radius + 1`` along ``dim`` of a 2-D map (outside counts as −inf), by
    doubling as :func:`_max_filter_rows`, but slicing along ``dim`` directly: a column pass over a
    transposed view walks memory with a stride of a whole row, several times slower."""
    n = x.shape[dim]
    window = 2 * radius + 1
    pad = (0, 0, radius, radius) if dim == 0 else (radius, radius)
    m = F.pad(x, pad, value=float("-inf"))
    span = 1
    while span * 2 <= window:
        L = m.shape[dim] - span
        m = torch.maximum(m.narrow(dim, 0, L), m.narrow(dim, span, L))
        span *= 2
    if window > span:
        rest = window - span
        L = m.shape[dim] - rest
        m = torch.maximum(m.narrow(dim, 0, L), m.narrow(dim, rest, L))
    return m.narrow(dim, 0, n)


def find_centers(heat: torch.Tensor, threshold: float = 0.2, kernel: int = 7, top_k: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoint NMS on one ``(H, W)`` center heatmap (§3.5).

    Returns ``(yx (K, 2) int64, score (K,) float)``, K ≤ ``top_k``, highest score first (ties in raster
    order)."""
    H, W = heat.shape
    r = kernel // 2
    # heat == window max and heat > θ, in one comparison: with the max raised to the next float above
    # θ, a pixel equals it exactly when it is its window's max and above θ (the max ≥ heat always).
    above = torch.nextafter(torch.tensor(threshold, dtype=heat.dtype), torch.tensor(float("inf"), dtype=heat.dtype))
    # The square max filter is separable: rows, then columns. As heat ≤ row max ≤ window max, only
    # the (few) pixels equal to their row max can be peaks; those take the max over their column
    # window by 2·r gathers instead of a column pass over the whole image. Rows outside the image are
    # clamped to the edge row, which lies inside the window, so the max is unchanged.
    rows = _max_filter(heat, r, 1).clamp_(min=above.item())
    cand = torch.nonzero((heat == rows).reshape(-1)).squeeze(1)
    y = cand // W
    x = cand - y * W
    row_max = rows.reshape(-1)
    window_max = row_max.index_select(0, cand)
    for dy in [d for i in range(1, r + 1) for d in (-i, i)]:
        window_max = torch.maximum(window_max, row_max.index_select(0, (y + dy).clamp_(0, H - 1).mul_(W).add_(x)))
    score = heat.reshape(-1).index_select(0, cand)
    peak = torch.nonzero(score == window_max).squeeze(1)
    flat, score = cand.index_select(0, peak), score.index_select(0, peak)
    order = torch.sort(score, descending=True, stable=True).indices[:top_k]
    flat, score = flat[order], score[order]
    return torch.stack([flat // W, flat % W], dim=1), score


def boxes_from_offsets(yx: torch.Tensor, box_offset: torch.Tensor) -> torch.Tensor:
    """Inclusive pixel boxes as ``(n, 4)`` float ``(y0, y1 + 1, x0, x1 + 1)`` (end-exclusive, so widths are
    differences) from pixel positions ``yx (n, 2)`` and their offsets ``box_offset (n, 4)``
    (top, bottom, left, right; negatives clamped to 0)."""
    o = box_offset.clamp(min=0)
    y = yx[:, 0].to(o.dtype)
    x = yx[:, 1].to(o.dtype)
    return torch.stack([y - o[:, 0], y + o[:, 1] + 1, x - o[:, 2], x + o[:, 3] + 1], dim=1)


def _nearest_dense(target: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of ``centers (K, 2)`` for each ``target (n, 2)`` by all n×K squared
    distances (first index on ties)."""
    d = (target[:, 0:1] - centers[None, :, 0]).square_()
    d.add_((target[:, 1:2] - centers[None, :, 1]).square_())
    return d.argmin(dim=1)


def nearest_center(target: torch.Tensor, centers: torch.Tensor, chunk_pairs: int = 1 << 21) -> torch.Tensor:
    """Exact nearest center (first index on ties) for each ``target (n, 2)`` among ``centers (K, 2)``;
    see :func:`_nearest_yx`."""
    return _nearest_yx(target[:, 0].contiguous(), target[:, 1].contiguous(), centers.to(target.dtype), chunk_pairs)


def _nearest_yx(ty: torch.Tensor, tx: torch.Tensor, centers: torch.Tensor, chunk_pairs: int = 1 << 21) -> torch.Tensor:
    """Exact nearest center (first index on ties) for targets given as two ``(n,)`` coordinate vectors.

    The targets' bounding rectangle is cut into about 16·K cells; a center stays a candidate of a cell
    unless its smallest distance to the cell exceeds the largest distance from the cell to some other
    center, so it cannot be nearest anywhere in the cell. A target in a cell with a single candidate
    takes it without any distance (targets gather near the centers, so this is most of them); the others
    compare their cell's few candidates (listed in index order, so ties resolve as a full search would).
    Returns ``(n,) int64``."""
    n, K = ty.shape[0], centers.shape[0]
    dev, dt = ty.device, ty.dtype
    if K <= 8:
        target = torch.stack([ty, tx], dim=1)
        step = max(1, chunk_pairs // K)
        return torch.cat([_nearest_dense(target[s : s + step], centers) for s in range(0, n, step)])
    lo = torch.stack([ty.amin(), tx.amin()])
    ext = (torch.stack([ty.amax(), tx.amax()]) - lo).clamp_(min=1.0)
    size = torch.sqrt(ext[0] * ext[1] / (16 * K)).clamp_(min=2.0)
    gy, gx = int(torch.ceil(ext[0] / size)), int(torch.ceil(ext[1] / size))
    y0 = lo[0] + torch.arange(gy, device=dev, dtype=dt) * size
    x0 = lo[1] + torch.arange(gx, device=dev, dtype=dt) * size

    def span(c: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (cells, K) nearest and farthest 1-D distances from centers to the intervals [a, a + size].
        below, above = a[:, None] - c[None, :], c[None, :] - (a[:, None] + size)
        near = torch.maximum(torch.maximum(below, above), torch.zeros((), device=dev, dtype=dt))
        far = torch.maximum(below.abs(), above.abs())
        return near.square_(), far.square_()

    ny, fy = span(centers[:, 0], y0)
    nx, fx = span(centers[:, 1], x0)
    dmin = (ny[:, None, :] + nx[None, :, :]).reshape(gy * gx, K)
    dmax = (fy[:, None, :] + fx[None, :, :]).reshape(gy * gx, K)
    bound = dmax.amin(1, keepdim=True)
    # The slack only admits extra candidates, so float rounding cannot exclude the true nearest.
    cand = dmin <= bound * (1 + 1e-4) + 1e-3
    # Each cell's candidates in index order, padded with K: nonzero lists the (cell, center) pairs in
    # row-major order, so a pair's column is its position less its cell's first (no sort needed).
    cell_of, k_of = torch.nonzero(cand, as_tuple=True)
    count = torch.bincount(cell_of, minlength=gy * gx)
    M = int(count.max())
    col = torch.arange(k_of.numel(), device=dev).sub_((count.cumsum(0) - count).index_select(0, cell_of))
    table = torch.full((gy * gx * M,), K, dtype=torch.long, device=dev)
    table = table.index_copy_(0, col.add_(cell_of * M), k_of).view(gy * gx, M)
    # Targets are ≥ lo, so truncation is the floor and only the far edge needs clamping; int32 cell
    # numbers are cheaper to build and serve as indices as well.
    iy = ((ty - lo[0]) / size).to(torch.int32).clamp_(max=gy - 1)
    ix = ((tx - lo[1]) / size).to(torch.int32).clamp_(max=gx - 1)
    cell = iy.mul_(gx).add_(ix)
    # Every cell has a candidate (the center with the smallest far distance), listed first.
    out = table[:, 0].contiguous().index_select(0, cell)
    if M == 1:
        return out
    pc = count.index_select(0, cell)
    # Per-cell candidate coordinates, so each pixel gathers whole rows (index_select) rather than
    # single elements, which is far slower on the CPU.
    inf = torch.full((1,), float("inf"), device=dev, dtype=dt)
    cy = torch.cat([centers[:, 0], inf])[table]
    cx = torch.cat([centers[:, 1], inf])[table]
    # Most multi-candidate cells have two: compare those two directly (no (n, M) reduction). The
    # candidates are in index order, so a tie keeps the first, as argmin does.
    two = torch.nonzero(pc == 2).squeeze(1)
    cols = [(cy[:, i].contiguous(), cx[:, i].contiguous(), table[:, i].contiguous()) for i in range(2)]
    step = max(1, chunk_pairs // 2)
    for s in range(0, two.numel(), step):
        idx = two[s : s + step]
        c = cell.index_select(0, idx)
        py, px = ty.index_select(0, idx), tx.index_select(0, idx)
        d = [(y.index_select(0, c) - py).square_().add_((x.index_select(0, c) - px).square_()) for y, x, _ in cols]
        out.index_copy_(0, idx, torch.where(d[1] < d[0], cols[1][2].index_select(0, c), cols[0][2].index_select(0, c)))
    multi = torch.nonzero(pc > 2).squeeze(1)
    flat_table = table.reshape(-1)
    step = max(1, chunk_pairs // M)
    for s in range(0, multi.numel(), step):
        idx = multi[s : s + step]
        c = cell.index_select(0, idx)
        d = cy.index_select(0, c).sub_(ty.index_select(0, idx)[:, None]).square_()
        d.add_(cx.index_select(0, c).sub_(tx.index_select(0, idx)[:, None]).square_())
        out.index_copy_(0, idx, flat_table.index_select(0, c.long().mul_(M).add_(d.argmin(1))))
    return out


def _center_gate(pbox: torch.Tensor, cbox: torch.Tensor, iou: float) -> torch.Tensor:
    """``(K, n)`` bool: IoU(pixel box, center box) > ``iou`` for coordinate-major pixel boxes ``pbox (4,
    n)`` against ``cbox (K, 4)``, tested as inter·(1 + τ) > τ·(A_p + A_c) so no division is needed.

    Center-major, so every step streams along the pixels with one broadcast value per center row
    (pixel-major, the CPU kernels' inner loops would run over only K elements, several times slower)."""
    c = cbox.t()[:, :, None]
    ih = torch.minimum(pbox[1], c[1]).sub_(torch.maximum(pbox[0], c[0])).clamp_(min=0)
    iw = torch.minimum(pbox[3], c[3]).sub_(torch.maximum(pbox[2], c[2])).clamp_(min=0)
    ap = (pbox[1] - pbox[0]) * (pbox[3] - pbox[2])
    ac = (cbox[:, 1] - cbox[:, 0]) * (cbox[:, 3] - cbox[:, 2])
    return ih.mul_(iw).mul_(1 + iou) > (ap[None, :] + ac[:, None]).mul_(iou)


def _pair_gate(pbox: torch.Tensor, cbox: torch.Tensor, iou: float) -> torch.Tensor:
    """Row-wise version of :func:`_center_gate` on coordinate-major boxes: ``pbox (4, n)`` against ``cbox (4,
    n)`` → ``(n,)`` bool (one contiguous vector per coordinate keeps every step a streaming pass).
    ``cbox`` may carry the center boxes' areas as a fifth row (computed once per center, same value)."""
    ih = torch.minimum(pbox[1], cbox[1]).sub_(torch.maximum(pbox[0], cbox[0])).clamp_(min=0)
    iw = torch.minimum(pbox[3], cbox[3]).sub_(torch.maximum(pbox[2], cbox[2])).clamp_(min=0)
    ap = (pbox[1] - pbox[0]).mul_(pbox[3] - pbox[2])
    ac = cbox[4] if cbox.shape[0] > 4 else (cbox[1] - cbox[0]) * (cbox[3] - cbox[2])
    return ih.mul_(iw).mul_(1 + iou) > ap.add_(ac).mul_(iou)


def group_pixels(
    target: torch.Tensor,
    centers: torch.Tensor,
    pbox: torch.Tensor | None = None,
    cbox: torch.Tensor | None = None,
    *,
    iou: float = 0.5,
    chunk_pairs: int = 1 << 21,
) -> torch.Tensor:
    """Assign pixels to centers (§3.5).

    ``target (n, 2)`` float: pixel + predicted center offset, (y, x); ``centers (K, 2)``. With boxes
    (``pbox (n, 4)``, ``cbox (K, 4)`` from :func:`boxes_from_offsets`) only centers whose box has IoU >
    ``iou`` with the pixel's box are eligible. Returns ``(n,) int64`` center index, −1 for none.
    """
    pb = None if pbox is None else pbox.t().contiguous()
    return _group_yx(target[:, 0].contiguous(), target[:, 1].contiguous(), centers, pb, cbox, iou=iou, chunk_pairs=chunk_pairs)


def _group_yx(
    ty: torch.Tensor,
    tx: torch.Tensor,
    centers: torch.Tensor,
    pbox: torch.Tensor | None,
    cbox: torch.Tensor | None,
    *,
    iou: float,
    chunk_pairs: int,
) -> torch.Tensor:
    """:func:`group_pixels` on coordinate-major inputs: targets ``ty, tx (n,)``, pixel boxes ``pbox (4, n)``.

    Exact in two passes: the nearest center overall; where that center fails the box gate, the full
    gated search over all centers (chunked to ``chunk_pairs`` pixel×center pairs)."""
    n, K = ty.shape[0], centers.shape[0]
    if n == 0 or K == 0:
        return torch.full((n,), -1, dtype=torch.long, device=ty.device)
    centers = centers.to(ty.dtype)
    out = _nearest_yx(ty, tx, centers, chunk_pairs)
    if pbox is None:
        return out
    area = (cbox[:, 1] - cbox[:, 0]) * (cbox[:, 3] - cbox[:, 2])
    ok = _pair_gate(pbox, torch.cat([cbox.t(), area[None]]).index_select(1, out), iou)
    redo = torch.nonzero(~ok).squeeze(1)
    out.index_fill_(0, redo, -1)
    # The gate first: a pixel whose nearest center fails it usually fails every center, and then
    # needs no distances at all.
    cy, cx = centers[:, 0:1], centers[:, 1:2]
    step = max(1, chunk_pairs // K)
    for s in range(0, redo.numel(), step):
        idx = redo[s : s + step]
        elig = _center_gate(pbox.index_select(1, idx), cbox, iou)
        hit = torch.nonzero(elig.any(0)).squeeze(1)
        if hit.numel() == 0:
            continue
        idx, elig = idx.index_select(0, hit), elig.index_select(1, hit)
        d = (ty.index_select(0, idx)[None] - cy).square_()
        d.add_((tx.index_select(0, idx)[None] - cx).square_())
        out.index_copy_(0, idx, d.masked_fill_(~elig, float("inf")).argmin(dim=0))
    return out


def group_foreground(
    center: torch.Tensor,
    center_offset: torch.Tensor,
    box_offset: torch.Tensor | None,
    mask: torch.Tensor,
    cfg: PostProcessConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-agnostic grouping of one image, as a pixel list rather than a map.

    Inputs as :func:`instance_map`. Returns ``(flat (n,) int64`` raster indices of the ``mask`` pixels,
    ``k (n,) int64`` their center (−1: none), ``centers (K, 2) int64``, ``scores (K,))``."""
    W = center.shape[1]
    yx, score = find_centers(center, cfg.threshold, cfg.nms_kernel, cfg.top_k)
    flat = torch.nonzero(mask.reshape(-1)).squeeze(1)
    if yx.shape[0] == 0 or flat.numel() == 0:
        return flat, torch.full_like(flat, -1), yx, score
    dt = center_offset.dtype
    # int32 division is far cheaper than int64 on the CPU (raster indices of one image fit).
    flat32 = flat.to(torch.int32)
    py = flat32 // W
    px = flat32 - py * W
    yf, xf = py.to(dt), px.to(dt)
    # 1-D index_select per channel: far faster than fancy indexing, and than index_select along the
    # second axis of (C, H·W), on the CPU.
    co = center_offset.reshape(2, -1)
    ty, tx = co[0].index_select(0, flat).add_(yf), co[1].index_select(0, flat).add_(xf)
    pbox = cbox = None
    if box_offset is not None:
        bo = box_offset.reshape(4, -1)
        o = [bo[i].index_select(0, flat).clamp_(min=0) for i in range(4)]
        # The arithmetic of boxes_from_offsets, one coordinate row at a time.
        pbox = torch.empty((4, flat.numel()), dtype=dt, device=flat.device)
        torch.sub(yf, o[0], out=pbox[0])
        torch.add(yf, o[1], out=pbox[1]).add_(1)
        torch.sub(xf, o[2], out=pbox[2])
        torch.add(xf, o[3], out=pbox[3]).add_(1)
        cbox = boxes_from_offsets(yx, bo[:, yx[:, 0] * W + yx[:, 1]].t())
    k = _group_yx(ty, tx, yx.to(dt), pbox, cbox, iou=cfg.box_iou, chunk_pairs=cfg.chunk_pairs)
    return flat, k, yx, score


def instance_map(
    center: torch.Tensor,
    center_offset: torch.Tensor,
    box_offset: torch.Tensor | None,
    mask: torch.Tensor,
    cfg: PostProcessConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-agnostic instances of one image.

    ``center (H, W)`` heat, ``center_offset (2, H, W)`` (dy, dx) pixels, ``box_offset (4, H, W)`` (t, b,
    l, r) pixels or None (no box gate), ``mask (H, W)`` bool: the pixels to group. Returns
    ``(instances (H, W) int64`` with 0 = none and i = i-th center (1-based), ``centers (K, 2)``,
    ``scores (K,))``.
    """
    H, W = center.shape
    flat, k, yx, score = group_foreground(center, center_offset, box_offset, mask, cfg)
    inst = torch.zeros((H, W), dtype=torch.long, device=center.device)
    inst.view(-1).index_copy_(0, flat, k + 1)
    return inst, yx, score


__all__ = [
    "PostProcessConfig",
    "GROUPINGS",
    "find_centers",
    "boxes_from_offsets",
    "group_pixels",
    "nearest_center",
    "group_foreground",
    "instance_map",
]
