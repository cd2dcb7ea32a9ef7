"""Training augmentations on one sample, applied identically to the image, PRN's inputs and the targets
(paper §4.2 "PRN Training": random horizontal flip and GridMask).

A *sample* here is the per-sample form of :mod:`prn_model.data`'s Batch, as NumPy arrays on the store's
padded canvas ``(H, W)`` whose valid region is the top-left ``size = (h, w)``:

- ``image (3, H, W) uint8``; ``instance (7, H, W) float32`` = center heatmap, center offsets (dy, dx),
  box offsets (top, bottom, left, right) in pixels; ``base_semantic (N_cl, H/4, W/4) float32``;
- targets ``semantic (H, W) uint8``, ``center (1, H, W)``, ``center_offset (2, H, W)`` (dy, dx),
  ``box_offset (4, H, W)`` (top, bottom, left, right), ``foreground (H, W) uint8``;
- weights ``semantic_weight``, ``center_weight``, ``offset_weight``, ``foreground_weight`` ``(H, W) float32``;
- ``valid (H, W) bool``, ``size (2,) int64``.

Nothing is recomputed from labels: a flip mirrors every map inside the valid region and fixes the signs and
order of the offset channels, a crop slices every map at the same place (quarter-resolution maps at the
matching quarter-resolution place). Randomness comes from an explicit ``numpy.random.Generator``, so the
data loader can key it by (seed, epoch, sample) and a resumed run sees the same augmentations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Keys holding full-resolution maps whose last two axes are (H, W).
FULL_RES_KEYS = (
    "image",
    "instance",
    "semantic",
    "center",
    "center_offset",
    "box_offset",
    "foreground",
    "semantic_weight",
    "center_weight",
    "offset_weight",
    "foreground_weight",
    "valid",
)
#: Keys holding quarter-resolution maps (H/4, W/4).
QUARTER_RES_KEYS = ("base_semantic",)

# Channel layout of the 7-channel instance input (paper §3.2; README "Conventions"): heatmap, dy, dx, top,
# bottom, left, right.
_INSTANCE_DX, _INSTANCE_LEFT, _INSTANCE_RIGHT = 2, 5, 6

#: How a horizontal flip reorders and negates channels, per key: ``(channels, negate)`` — channel ``k`` of
#: the flipped map is channel ``channels[k]`` mirrored, negated for ``k`` in ``negate``. Other keys mirror
#: every channel in place. The dx channels change sign; the left and right box offsets swap.
FLIP_CHANNELS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "center_offset": ((0, 1), (1,)),  # dy, dx
    "box_offset": ((0, 1, 3, 2), ()),  # top, bottom, left ↔ right
    "instance": ((0, 1, 2, 3, 4, _INSTANCE_RIGHT, _INSTANCE_LEFT), (_INSTANCE_DX,)),
}


@dataclass
class GridMaskConfig:
    """GridMask (Chen 2020, arXiv:2001.04086), as PRN uses it on the RGB image (§4.2).

    With probability ``prob`` a grid of square holes is dropped from the image: a unit ``d`` is drawn
    uniformly from ``[d_min, d_max]`` pixels, each unit cell loses a ``round(ratio · d)``-pixel square
    (set to ``fill``, 0..255) at a random phase ``(δy, δx) ∈ [0, d)²`` common to the whole grid. The paper
    does not give its values; these defaults follow GridMask's COCO detection setting scaled to PRN's
    640-pixel images (units of 1/20 to 1/3 of the shorter side, half of each unit's side dropped, i.e.
    a quarter of the area). No rotation. Only the image changes; targets and base inputs are untouched.
    """

    prob: float = 0.5
    d_min: int = 32
    d_max: int = 224
    ratio: float = 0.5
    fill: int = 0


@dataclass
class AugmentConfig:
    """Which augmentations run. ``crop = (h, w)`` (multiples of 32, the network's stride) takes a
    random crop of that size from the valid region (origin on a multiple of 4 so the quarter-resolution
    maps crop exactly); ``None`` keeps the whole canvas."""

    flip: bool = True
    flip_prob: float = 0.5
    gridmask: GridMaskConfig | None = field(default_factory=GridMaskConfig)
    crop: tuple[int, int] | None = None


def flip_width(key: str, w: int) -> int:
    """The columns of map ``key`` that a flip of a sample of valid width ``w`` mirrors: ``w``, or ``⌈w/4⌉``
    for a quarter-resolution map."""
    return -(-w // 4) if key in QUARTER_RES_KEYS else w


def _mirror(a: np.ndarray, w: int, channels: tuple[int, ...] | None = None, negate: tuple[int, ...] = ()
            ) -> np.ndarray:
    """A new array: columns ``[0, w)`` of ``a`` mirrored (channel ``k`` of the result taken from channel
    ``channels[k]``, negated for ``k`` in ``negate``), columns ``[w, W)`` copied. One pass over the data."""
    out = np.empty_like(a)
    out[..., w:] = a[..., w:]
    if channels is None:
        out[..., :w] = a[..., w - 1 :: -1] if w > 0 else a[..., :0]
        return out
    for k, src in enumerate(channels):
        if w == 0:
            break
        if k in negate:
            np.negative(a[src, ..., w - 1 :: -1], out=out[k, ..., :w])
        else:
            out[k, ..., :w] = a[src, ..., w - 1 :: -1]
    return out


def hflip(sample: dict) -> dict:
    """Mirror a sample horizontally inside its valid region (x → w-1-x; padding stays on the right).

    The center offsets' dx and the instance input's dx are negated; left and right box offsets swap
    (left' = x' - x0' = x1 - x = right). Quarter-resolution maps mirror their first ⌈w/4⌉ columns, exact
    when ``w`` is a multiple of 4 and within 3 pixels otherwise. Returns the dict with new arrays.
    """
    w = int(sample["size"][1])
    for key in FULL_RES_KEYS + QUARTER_RES_KEYS:
        if key in sample:
            channels, negate = FLIP_CHANNELS.get(key, (None, ()))
            sample[key] = _mirror(sample[key], flip_width(key, w), channels, negate)
    return sample


def gridmask_keep(shape: tuple[int, int], d: int, hole: int, phase: tuple[int, int]) -> np.ndarray:
    """``(h, w) bool`` keep-mask: False on the squares ``(δy + i·d … +hole, δx + j·d … +hole)``."""
    h, w = shape
    ys = (np.arange(h) - phase[0]) % d < hole
    xs = (np.arange(w) - phase[1]) % d < hole
    return ~(ys[:, None] & xs[None, :])


def gridmask(sample: dict, cfg: GridMaskConfig, rng: np.random.Generator) -> dict:
    """Apply GridMask to ``sample["image"]`` inside the valid region with probability ``cfg.prob``."""
    if rng.random() >= cfg.prob:
        return sample
    h, w = (int(v) for v in sample["size"])
    d = int(rng.integers(cfg.d_min, cfg.d_max + 1))
    hole = int(round(cfg.ratio * d))
    phase = (int(rng.integers(0, d)), int(rng.integers(0, d)))
    if hole <= 0:
        return sample
    keep = gridmask_keep((h, w), d, hole, phase)
    region = sample["image"][:, :h, :w]
    region[:, ~keep] = cfg.fill
    return sample


def crop(sample: dict, origin: tuple[int, int], size: tuple[int, int]) -> dict:
    """Crop every map to ``size = (ch, cw)`` at ``origin = (y0, x0)`` (multiples of 4); returns a new dict.

    The valid size shrinks to what of the old valid region lies inside the crop.
    """
    y0, x0 = origin
    ch, cw = size
    if y0 % 4 or x0 % 4 or ch % 4 or cw % 4:
        raise ValueError(f"crop origin {origin} and size {size} must be multiples of 4")
    out = dict(sample)
    for key in FULL_RES_KEYS:
        if key in sample:
            out[key] = np.ascontiguousarray(sample[key][..., y0 : y0 + ch, x0 : x0 + cw])
    for key in QUARTER_RES_KEYS:
        if key in sample:
            out[key] = np.ascontiguousarray(
                sample[key][..., y0 // 4 : (y0 + ch) // 4, x0 // 4 : (x0 + cw) // 4]
            )
    h, w = (int(v) for v in sample["size"])
    out["size"] = np.array([max(0, min(h - y0, ch)), max(0, min(w - x0, cw))], dtype=np.int64)
    return out


def random_crop(sample: dict, size: tuple[int, int], rng: np.random.Generator) -> dict:
    """A uniformly placed ``size`` crop whose origin keeps it inside the valid region where it fits."""
    H, W = sample["valid"].shape
    ch, cw = size
    if ch > H or cw > W:
        raise ValueError(f"crop {size} is larger than the canvas {(H, W)}")
    h, w = (int(v) for v in sample["size"])
    y0 = int(rng.integers(0, max(0, h - ch) // 4 + 1)) * 4
    x0 = int(rng.integers(0, max(0, w - cw) // 4 + 1)) * 4
    return crop(sample, (y0, x0), size)


def augment(sample: dict, cfg: AugmentConfig, rng: np.random.Generator) -> dict:
    """Crop (if configured), then flip, then GridMask, drawing from ``rng`` in that fixed order."""
    if cfg.crop is not None:
        sample = random_crop(sample, tuple(cfg.crop), rng)
    if cfg.flip and rng.random() < cfg.flip_prob:
        sample = hflip(sample)
    if cfg.gridmask is not None:
        sample = gridmask(sample, cfg.gridmask, rng)
    return sample
