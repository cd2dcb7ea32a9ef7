"""One picture of a stored sample in the spirit of the paper's Fig. 4 (inputs and targets of PRN, §3.2–3.4).

Pure NumPy colouring functions (:func:`flow_to_rgb`, :func:`colorize_ids`, :func:`colorize_semantic`) and a
matplotlib (Agg, no pyplot) figure drawn from a sample dict as :meth:`prn_data.store.Store.read_sample`
returns it. The figure is a grid of panels :data:`PANEL_INCHES` wide and as high as the image's aspect
makes them (:func:`figure_size_px`), laid out by matplotlib's constrained layout. :func:`draw_panels` draws
any such grid (``prn_model.vis`` draws predictions with it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .errors import PrnError
from .records import IGNORE_LABEL, VOID, CategorySet

GRID_ROWS = 5
GRID_COLS = 4
PANEL_INCHES = 3.0
DEFAULT_DPI = 80

BOX_CHANNELS = ("top", "bottom", "left", "right")
LEGEND_MAX = 24


# ---------------------------------------------------------------------------------------------- colours
def flow_to_rgb(offset: np.ndarray, max_norm: float | None = None) -> np.ndarray:
    """Colour a 2-channel offset field with a flow colour wheel.

    ``offset``: ``(2, H, W)`` float (dy, dx) in pixels. Direction sets the hue (hue 0 = red = +x, hue
    increases clockwise on screen: +y (down) is hue 1/4, yellow-green), length over ``max_norm`` sets the
    saturation (0 = white), value is always 1. ``max_norm`` defaults to the field's largest length.
    Returns ``(H, W, 3) uint8``.
    """
    offset = np.asarray(offset, dtype=np.float64)
    if offset.ndim != 3 or offset.shape[0] != 2:
        raise ValueError(f"offset must be (2, H, W), got {offset.shape}")
    dy, dx = offset[0], offset[1]
    norm = np.hypot(dy, dx)
    if max_norm is None:
        max_norm = float(norm.max()) if norm.size else 0.0
    hue = np.mod(np.arctan2(dy, dx) / (2 * np.pi), 1.0)
    sat = np.clip(norm / max_norm, 0.0, 1.0) if max_norm > 0 else np.zeros_like(norm)
    hsv = np.stack([hue, sat, np.ones_like(norm)], axis=-1)
    return np.round(hsv_to_rgb(hsv) * 255).astype(np.uint8)


def flow_wheel(size: int = 101) -> np.ndarray:
    """``(size, size, 3) uint8`` key of :func:`flow_to_rgb`: the offset from the centre, unit length at the
    inscribed circle; outside it saturates."""
    r = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return flow_to_rgb(np.stack([yy - r, xx - r]), max_norm=r)


def id_colors(ids: np.ndarray) -> np.ndarray:
    """Deterministic, well-spread ``(K, 3) uint8`` colours for integer ids (golden-ratio hues)."""
    ids = np.asarray(ids, dtype=np.int64)
    # Multiplicative hashing spreads consecutive instance counters (k, k+1) to distant hues.
    h = (ids * 2654435761) % (2**32)
    hue = np.mod(h * 0.6180339887498949 / 2**10, 1.0)
    sat = 0.55 + 0.45 * ((h >> 7) % 5) / 4
    val = 0.65 + 0.35 * ((h >> 11) % 3) / 2
    return np.round(hsv_to_rgb(np.stack([hue, sat, val], axis=-1)) * 255).astype(np.uint8)


def colorize_ids(panoptic: np.ndarray) -> np.ndarray:
    """``(H, W) int`` panoptic ids → ``(H, W, 3) uint8``, one colour per segment (by instance, not class,
    as in the paper's figures); VOID (−1) is black."""
    uniq, inv = np.unique(panoptic, return_inverse=True)
    lut = id_colors(uniq)
    lut[uniq == VOID] = 0
    return lut[inv.reshape(panoptic.shape)]


def category_palette(categories: CategorySet | None, n: int) -> np.ndarray:
    """``(256, 3) uint8`` train id → colour: the dataset's category colours where they are set (not all
    black), else a tab20-like fallback; 255 (ignore) is black."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    cmap = matplotlib.colormaps["tab20"]
    for t in range(min(n, 255)):
        pal[t] = np.round(np.asarray(cmap(t % 20)[:3]) * 255)
    if categories is not None:
        for c in categories:
            if any(c.color) and c.train_id < 255:
                pal[c.train_id] = c.color
    pal[IGNORE_LABEL] = 0
    return pal


def colorize_semantic(semantic: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``(H, W) uint8`` train ids → ``(H, W, 3) uint8`` through ``palette (256, 3)``."""
    return palette[np.asarray(semantic, dtype=np.uint8)]


def base_semantic_labels(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Base semantic probabilities ``(N_cl, ⌈h/4⌉, ⌈w/4⌉)`` → ``(h, w) uint8`` arg-max train ids at full
    resolution (each 1/4-resolution cell covers 4×4 pixels). Cells with no class clearly ahead (largest
    probability below 2/N_cl, e.g. a uniform distribution on VOID) → 255, so noise is not drawn as labels."""
    h, w = size
    lab = np.argmax(probs, axis=0).astype(np.uint8)
    lab[probs.max(axis=0) < 2.0 / max(len(probs), 2)] = IGNORE_LABEL
    return np.repeat(np.repeat(lab, 4, axis=0), 4, axis=1)[:h, :w]


def heat_over_image(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Blend ``heat (H, W)`` in [0, 1] (jet colours) over a dimmed grey ``image (H, W, 3) uint8``."""
    grey = image.astype(np.float32).mean(axis=-1, keepdims=True) / 255.0 * 0.6
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)[..., None]
    jet = matplotlib.colormaps["jet"](heat[..., 0])[..., :3].astype(np.float32)
    out = grey * (1 - heat) + jet * heat
    return np.round(out * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- scales
def shared_limits(*arrays: np.ndarray | None, percentile: float = 99.0) -> tuple[float, float]:
    """One ``(vmin, vmax)`` colour scale for several maps, so equal colours mean equal values (e.g. the
    ground truth's and the base network's box offsets): ``vmin`` the smallest value (at most 0), ``vmax``
    the ``percentile`` (linear interpolation) of the non-zero values of all maps together — not the
    maximum, so one huge segment does not wash out all others — and always above ``vmin`` (``(0, 1)`` for
    maps with no non-zero value). ``None`` maps and non-finite values are skipped."""
    vals = [np.asarray(a, dtype=np.float64).ravel() for a in arrays if a is not None]
    allv = np.concatenate(vals) if vals else np.zeros(0)
    allv = allv[np.isfinite(allv)]
    lo = min(0.0, float(allv.min())) if allv.size else 0.0
    nz = allv[allv != 0]
    hi = float(np.percentile(nz, percentile)) if nz.size else 1.0
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def segment_labels(panoptic: np.ndarray, segments: Sequence[Any], categories: CategorySet | None,
                   min_fraction: float = 0.005) -> list[tuple[float, float, str]]:
    """Text labels of a panoptic map: ``(y, x, class name)`` for every segment covering at least
    ``min_fraction`` of the image, placed on the segment's pixel nearest its centroid (so the label sits
    on the segment even for a ring or an L shape). ``segments``: dicts (``id``, ``category_id``) or
    :class:`~prn_data.records.Segment`; names from ``categories`` (else ``class <id>``)."""
    pan = np.asarray(panoptic)
    names = {c.id: c.name for c in categories} if categories is not None else {}
    out = []
    for seg in segments:
        sid = int(seg["id"] if isinstance(seg, Mapping) else seg.id)
        cid = int(seg["category_id"] if isinstance(seg, Mapping) else seg.category_id)
        ys, xs = np.nonzero(pan == sid)
        if ys.size == 0 or ys.size < min_fraction * pan.size:
            continue
        cy, cx = ys.mean(), xs.mean()
        k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
        out.append((float(ys[k]), float(xs[k]), names.get(cid, f"class {cid}")))
    return out


# ---------------------------------------------------------------------------------------------- figure
#: What a panel shows: an RGB image; ``("map", array[, options])`` a scalar map with a colour bar
#: (options: ``vmin``, ``vmax``, ``cmap``); ``("labels", rgb, [(y, x, text)])`` an RGB image with text
#: labels; ``("legend", [(name, rgb)])``; or ``("text", str)``.
PanelContent = Union[np.ndarray, tuple]

TITLE_INCHES = 0.3  # a panel's title line
ASPECT_RANGE = (0.25, 4.0)  # height / width of a panel, clamped (a 1×1000 image still gets a usable cell)


def _hw(x: np.ndarray) -> np.ndarray:
    """Drop a leading channel axis of length 1: ``(1, H, W)`` or ``(H, W)`` → ``(H, W)``."""
    x = np.asarray(x)
    return x[0] if x.ndim == 3 and x.shape[0] == 1 else x


def figure_inches(size: tuple[int, int], rows: int = GRID_ROWS, cols: int = GRID_COLS) -> tuple[float, float]:
    """``(width, height)`` in inches of a ``rows × cols`` grid of panels showing an image of ``size (h, w)``:
    each panel :data:`PANEL_INCHES` wide and as high as the image's aspect makes it (clamped to
    :data:`ASPECT_RANGE`), plus a title line — so a wide image gets a wide figure, not empty bands."""
    h, w = size
    aspect = min(max(h / max(w, 1), ASPECT_RANGE[0]), ASPECT_RANGE[1])
    return cols * PANEL_INCHES, rows * (PANEL_INCHES * aspect + TITLE_INCHES)


def figure_size_px(size: tuple[int, int], dpi: int = DEFAULT_DPI, rows: int = GRID_ROWS,
                   cols: int = GRID_COLS) -> tuple[int, int]:
    """``(width, height)`` in pixels of the PNG :func:`draw_sample` (``rows × cols`` panels) writes for an
    image of ``size (h, w)``."""
    w, h = figure_inches(size, rows, cols)
    return (int(w * dpi), int(h * dpi))


def panel_boxes(size: tuple[int, int], dpi: int = DEFAULT_DPI, rows: int = GRID_ROWS,
                cols: int = GRID_COLS) -> list[tuple[int, int, int, int]]:
    """Pixel boxes ``(x0, y0, x1, y1)`` of the grid's cells, row-major: the figure cut evenly (matplotlib
    lays the panels out inside, so a box holds its panel and at most a sliver of its neighbours')."""
    w, h = figure_size_px(size, dpi, rows, cols)
    cw, ch = w / cols, h / rows
    return [
        (round(c * cw), round(r * ch), round((c + 1) * cw), round((r + 1) * ch))
        for r in range(rows)
        for c in range(cols)
    ]


def _panels(sample: Mapping[str, Any], categories: CategorySet | None) -> list[tuple[str, PanelContent]]:
    """The 20 panels, row-major: ``(title, content)`` (:data:`PanelContent`)."""
    image = np.asarray(sample["image"])
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"sample image must be (3, h, w), got {image.shape}")
    img = np.moveaxis(image, 0, -1)
    h, w = img.shape[:2]
    n_cl = len(categories) if categories is not None else 256
    pal = category_palette(categories, n_cl)
    missing = ("text", "no base network\nin this store")

    gt_sem = _hw(sample["gt/semantic"]) if "gt/semantic" in sample else None
    base_sem = (
        base_semantic_labels(np.asarray(sample["base/semantic"]), (h, w)) if "base/semantic" in sample else None
    )
    inst = np.asarray(sample["base/instance"]) if "base/instance" in sample else None
    legend = semantic_legend([gt_sem, base_sem], categories, pal)

    panels: list[tuple[str, PanelContent]] = [
        ("image", img),
        ("GT semantic", colorize_semantic(gt_sem, pal) if gt_sem is not None else ("text", "no GT")),
        ("base semantic (arg-max, 1/4 res.)", colorize_semantic(base_sem, pal) if base_sem is not None else missing),
        ("categories present", ("legend", legend)),
        ("GT panoptic (by instance)", colorize_ids(_hw(sample["gt/panoptic"]))),
        ("base panoptic (by instance)", colorize_ids(_hw(sample["base/panoptic"])) if "base/panoptic" in sample else missing),
        ("GT center heatmap", heat_over_image(img, _hw(sample["gt/center"]))),
        ("base center heatmap", heat_over_image(img, inst[0]) if inst is not None else missing),
    ]
    gt_off = np.asarray(sample["gt/center_offset"], dtype=np.float32)
    base_off = inst[1:3] if inst is not None else None
    # One scale for both offset panels, so equal colours mean equal offsets (see shared_limits).
    r = shared_limits(*(np.hypot(*o) for o in (gt_off, base_off) if o is not None))[1]
    panels += [
        (f"GT center offsets (saturates at {r:.0f} px)", flow_to_rgb(gt_off, r)),
        ("base center offsets", flow_to_rgb(base_off, r) if base_off is not None else missing),
        ("GT foreground", ("map", _hw(sample["gt/foreground"]).astype(np.float32), {"vmin": 0.0, "vmax": 1.0})),
        ("offset colour wheel", flow_wheel()),
    ]
    gt_box = np.asarray(sample["gt/box_offset"], dtype=np.float32)
    base_box = inst[3:7] if inst is not None else None
    # One colour scale for all eight box-offset panels (px), so GT and base compare channel by channel.
    lo, hi = shared_limits(gt_box, base_box)
    box_opts = {"vmin": lo, "vmax": hi}
    panels += [(f"GT box offset: {n} (px)", ("map", gt_box[k], box_opts)) for k, n in enumerate(BOX_CHANNELS)]
    if base_box is not None:
        panels += [(f"base box offset: {n} (px)", ("map", base_box[k], box_opts)) for k, n in enumerate(BOX_CHANNELS)]
    else:
        panels += [(f"base box offset: {n}", missing) for n in BOX_CHANNELS]
    return panels


def semantic_legend(label_maps: Sequence[np.ndarray | None], categories: CategorySet | None, pal: np.ndarray,
                    limit: int = LEGEND_MAX) -> list[tuple[str, np.ndarray]]:
    """Legend entries ``(name, rgb)`` of the classes covering at least 0.1 % of the image in any of the
    ``(h, w)`` train-id maps, largest first, at most ``limit`` (then a "+N more" entry)."""
    area = np.zeros(256, dtype=np.int64)
    hw = 1
    for lab in label_maps:
        if lab is not None:
            area = np.maximum(area, np.bincount(np.asarray(lab, dtype=np.uint8).ravel(), minlength=256))
            hw = max(hw, lab.size)
    area[IGNORE_LABEL] = 0
    present = [int(t) for t in np.argsort(-area, kind="stable") if area[t] > 0 and area[t] >= 1e-3 * hw]
    legend = []
    for t in present[:limit]:
        name = categories[t].name if categories is not None and t < len(categories) else f"class {t}"
        legend.append((name, pal[t]))
    if len(present) > limit:
        legend.append((f"+{len(present) - limit} more", np.array([255, 255, 255])))
    return legend


def _check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.is_dir():
        raise PrnError(f"{out}: is a folder; give the PNG's file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PrnError(f"{out}: cannot make its folder ({exc.strerror or exc})") from None
    return out


def _draw(ax: Any, fig: Figure, name: str, content: PanelContent) -> None:
    ax.set_axis_off()
    ax.set_title(name, fontsize=8, pad=2)
    kind = content[0] if isinstance(content, tuple) else None
    if kind == "map":
        opts = dict(content[2]) if len(content) > 2 else {}
        im = ax.imshow(content[1], cmap=opts.get("cmap", "viridis"), vmin=opts.get("vmin"), vmax=opts.get("vmax"),
                       interpolation="nearest")
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, shrink=0.9)
        cb.ax.tick_params(labelsize=6)
    elif kind == "labels":
        ax.imshow(content[1], interpolation="nearest")
        for y, x, text in content[2]:
            ax.text(x, y, text, fontsize=6, ha="center", va="center", color="black",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75})
    elif kind == "legend":
        handles = [Patch(facecolor=np.asarray(rgb) / 255.0, edgecolor="k", label=n) for n, rgb in content[1]]
        if handles:
            ax.legend(handles=handles, loc="center", fontsize=6, ncol=1 + (len(handles) - 1) // 13, frameon=False)
        else:
            ax.text(0.5, 0.5, "no labelled pixels", ha="center", va="center", fontsize=8)
    elif kind == "text":
        ax.text(0.5, 0.5, content[1], ha="center", va="center", fontsize=8, color="0.4")
    else:
        ax.imshow(content, interpolation="nearest")


def draw_panels(panels: Sequence[tuple[str, PanelContent]], out: str | Path, size: tuple[int, int], *,
                cols: int, title: str | None = None, dpi: int = DEFAULT_DPI) -> Path:
    """Draw ``(title, content)`` panels (:data:`PanelContent`) row-major on a grid of ``cols`` columns into
    the PNG ``out``, sized from the image's ``size (h, w)`` (:func:`figure_inches`) and laid out by
    matplotlib (constrained layout: titles and colour bars get their room, no fixed margins). Missing
    parent folders are made; an ``out`` that is a folder, or that cannot be written, raises
    :class:`~prn_data.errors.PrnError` naming it."""
    out = _check_out(out)
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=figure_inches(size, rows, cols), dpi=dpi, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.01, hspace=0.01)
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title, fontsize=9)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k < len(panels):
            _draw(ax, fig, *panels[k])
        else:
            ax.set_axis_off()
    try:
        fig.savefig(out, dpi=dpi, format="png")
    except OSError as exc:
        raise PrnError(f"{out}: cannot write ({exc.strerror or exc})") from None
    return out


def draw_sample(
    sample: Mapping[str, Any],
    out: str | Path,
    categories: CategorySet | None = None,
    *,
    title: str | None = None,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Draw ``sample`` (keys as ``Store.read_sample`` returns them; ``base/*`` optional) into the PNG
    ``out``: a 5×4 grid of panels :data:`PANEL_INCHES` wide, as high as the image's aspect makes them
    (:func:`figure_size_px`). Box offsets of GT and base share one colour scale, the foreground's is 0–1.
    Errors as :func:`draw_panels`."""
    panels = _panels(sample, categories)
    h, w = np.asarray(sample["image"]).shape[1:]
    return draw_panels(panels, out, (h, w), cols=GRID_COLS, title=title, dpi=dpi)


__all__: Sequence[str] = [
    "flow_to_rgb",
    "flow_wheel",
    "id_colors",
    "colorize_ids",
    "category_palette",
    "colorize_semantic",
    "base_semantic_labels",
    "heat_over_image",
    "shared_limits",
    "segment_labels",
    "semantic_legend",
    "figure_inches",
    "figure_size_px",
    "panel_boxes",
    "draw_panels",
    "draw_sample",
]
