"""Ground-truth targets of PRN (paper §3.2 "Instance Maps", §3.4 "Prediction Branches"; README "Conventions").

Everything here works on maps already at the store resolution (targets are computed *after* resizing) and
is pure NumPy. One pass over the label map serves all segments: it is cut into runs (maximal stretches of
one id along a row; a few thousand for a real 640×800 map), each run's id is mapped to its segment, and
``np.bincount`` / ``ufunc.at`` over the runs give every segment's area, center of mass and tight box at
once. Every per-pixel map is constant along a run, or (dx, left, right) a run constant combined with the
column, so all of them come from one small per-run table expanded by a single ``np.repeat`` plus three
elementwise passes: no ``np.where`` per segment, no per-pixel gather. The Gaussians are pasted per
instance into slices (each patch is small). Maps of many one-pixel runs (noise) are correct but slower
than maps of real scenes.

Conventions (pinned by tests):

- Coordinates are (y, x), arrays channel-first.
- ``center``: per non-crowd thing segment, a Gaussian of standard deviation σ (pixels) and peak 1.0
  (times the segment's score, for a base network's prediction) on a square patch of side
  2·⌊3σ + ½⌋ + 3 pixels (= 6σ + 3 for integer σ: 51 px for σ = 8) whose central pixel is
  (⌊cy + ½⌋, ⌊cx + ½⌋), (cy, cx) the float center of mass; clipped at the border; merged by per-pixel max.
- ``center_offset`` (dy, dx) = (cy − y, cx − x) on non-crowd thing pixels, 0 elsewhere.
- ``box_offset`` (top, bottom, left, right) = (y − y0, y1 − y, x − x0, x1 − x) with the tight *inclusive*
  pixel box (y0, x0, y1, x1), on non-crowd thing pixels, 0 elsewhere (§3.2, Fig. 3).
- ``foreground``: the OR of all thing masks, crowd included (§3.4).
- Crowd segments keep their semantic label and are foreground, but get no Gaussian, zero offsets and zero
  center / offset weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np

from .errors import DatasetError, StoreError
from .records import IGNORE_LABEL, LABEL_DIVISOR, VOID, Segment

# Above this many table entries per run a dense id → index lookup table costs more than a binary search.
_MAX_LUT_PER_RUN = 4


@dataclass(frozen=True)
class TargetParams:
    """Parameters of the ground-truth targets, recorded in every store.

    - ``sigma``: standard deviation of the center Gaussians, pixels at store resolution.
    - ``small_instance_area``: thing segments with fewer pixels than this (at store resolution) get
      ``small_instance_weight`` in the semantic loss weight (Panoptic-DeepLab's convention).
    - ``label_divisor``: panoptic ids are ``category_id * label_divisor + k``; recorded, not used to
      compute the targets (segments carry their category).
    """

    sigma: float = 8.0
    small_instance_area: int = 4096
    small_instance_weight: float = 3.0
    label_divisor: int = LABEL_DIVISOR

    def __post_init__(self) -> None:
        if not (self.sigma > 0 and np.isfinite(self.sigma)):
            raise ValueError(f"sigma must be a positive number, got {self.sigma!r}")
        if self.small_instance_area < 0:
            raise ValueError(f"small_instance_area must be >= 0, got {self.small_instance_area!r}")
        if not self.small_instance_weight >= 0:
            raise ValueError(f"small_instance_weight must be >= 0, got {self.small_instance_weight!r}")
        if self.label_divisor < 1:
            raise ValueError(f"label_divisor must be >= 1, got {self.label_divisor!r}")

    @property
    def patch_size(self) -> int:
        """Side of the square Gaussian patch in pixels (6σ + 3 for integer σ)."""
        return gaussian_patch(self.sigma).shape[0]

    def to_json(self) -> dict:
        """JSON-able dict of the parameters (plus the derived ``patch_size``, for readers of a store)."""
        return asdict(self) | {"patch_size": self.patch_size}

    @staticmethod
    def from_json(d: Mapping) -> "TargetParams":
        """Inverse of :meth:`to_json`; derived keys are ignored. Missing or malformed keys raise
        :class:`~prn_data.errors.StoreError`."""
        try:
            return TargetParams(
                sigma=float(d["sigma"]),
                small_instance_area=int(d["small_instance_area"]),
                small_instance_weight=float(d["small_instance_weight"]),
                label_divisor=int(d["label_divisor"]),
            )
        except KeyError as exc:
            raise StoreError(f"target parameters lack {exc.args[0]!r}: {json.dumps(dict(d))}") from None
        except (TypeError, ValueError) as exc:
            raise StoreError(f"malformed target parameters {json.dumps(dict(d), default=str)}: {exc}") from None


@lru_cache(maxsize=16)
def _gaussian_patch64(sigma: float) -> np.ndarray:
    half = int(np.floor(3 * sigma + 0.5)) + 1
    d = np.arange(-half, half + 1, dtype=np.float64)
    patch = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma**2))
    patch.setflags(write=False)
    return patch


def gaussian_patch(sigma: float) -> np.ndarray:
    """``(P, P) float64`` unnormalised Gaussian ``exp(-(dy² + dx²) / 2σ²)``, dy, dx integer pixel offsets
    from the central pixel (peak 1.0), with P = 2·⌊3σ + ½⌋ + 3 (= 6σ + 3 for integer σ). Read-only, cached."""
    return _gaussian_patch64(float(sigma))


@dataclass
class _Runs:
    """The one pass over a label map, as runs: maximal stretches of one id along a row, in raster order.

    Per run (``(R,)`` arrays): ``length`` in pixels (intp), ``seg`` segment index (intp; 0 = VOID, i + 1
    = ``segments[i]``), row ``y`` and first column ``x`` (intp), and the panoptic id ``pid`` (int32).
    Per segment (``(S + 1,)``, entry 0 for VOID; absent segments have area 0 and meaningless boxes):
    ``area`` (int64), float64 center of mass ``cy, cx`` and inclusive box ``y0, y1, x0, x1`` (int64).
    """

    length: np.ndarray
    seg: np.ndarray
    y: np.ndarray
    x: np.ndarray
    pid: np.ndarray
    area: np.ndarray
    cy: np.ndarray
    cx: np.ndarray
    y0: np.ndarray
    y1: np.ndarray
    x0: np.ndarray
    x1: np.ndarray


def _bad(source: str | None, problem: str) -> DatasetError:
    return DatasetError(source, problem)


def _check_panoptic(panoptic: np.ndarray, source: str | None) -> np.ndarray:
    panoptic = np.asarray(panoptic)
    if panoptic.ndim != 2 or panoptic.size == 0:
        raise _bad(source, f"panoptic map must be a non-empty (H, W) array, got shape {panoptic.shape}")
    if not np.issubdtype(panoptic.dtype, np.integer):
        raise _bad(source, f"panoptic map must hold integer ids, got dtype {panoptic.dtype}")
    return panoptic


def _runs(panoptic: np.ndarray, segments: Sequence[Segment], source: str | None) -> _Runs:
    h, w = panoptic.shape
    n = len(segments)
    ids = np.fromiter((int(s.id) for s in segments), dtype=np.int64, count=n)
    if n and ids.min() < 0:
        raise _bad(source, f"segment id {int(ids.min())} is negative (only VOID = -1 may be, and it is no segment)")
    if len(np.unique(ids)) != n:
        dup = sorted({int(i) for i in ids if (ids == i).sum() > 1})
        raise _bad(source, f"segment ids listed more than once: {dup}")
    # The only full-image passes: a comparison of each pixel with its left neighbour, and its nonzero
    # scan. A run also starts at every column 0, so that no run spans two rows.
    flat = np.ascontiguousarray(panoptic).reshape(-1)
    starts = np.empty(flat.size, dtype=bool)
    np.not_equal(flat[1:], flat[:-1], out=starts[1:])
    starts[::w] = True
    first = np.flatnonzero(starts)
    length = np.diff(first, append=flat.size)
    y, x = np.divmod(first, w)
    pid = flat[first]
    # Every id of the map starts at least one run, so the runs' extremes are the map's.
    lo, hi = int(pid.min()), int(pid.max())
    if lo < VOID:
        raise _bad(source, f"panoptic map holds id {lo}; ids must be >= 0, or -1 for VOID")
    if hi > np.iinfo(np.int32).max:
        raise _bad(source, f"panoptic map holds id {hi}, beyond the int32 range")
    pid = pid.astype(np.int32, copy=False)
    # id → segment index per run: a lookup table where it is no larger than a few entries per run (many
    # short runs: noisy maps), else a binary search in the sorted ids (any id range, no big table).
    top = max(hi, int(ids.max()) if n else 0)
    if top + 2 <= _MAX_LUT_PER_RUN * len(first):
        lut = np.full(top + 2, n + 1, dtype=np.intp)  # n + 1: an id no segment lists
        lut[ids] = np.arange(1, n + 1)
        seg = lut[pid]  # VOID (-1) reads the last entry
    else:
        seg = np.full(len(first), n + 1, dtype=np.intp)
        if n:
            order = np.argsort(ids)
            pos = np.minimum(np.searchsorted(ids[order], pid), n - 1)
            hit = ids[order][pos] == pid
            seg[hit] = order[pos[hit]] + 1
    seg[pid == VOID] = 0
    if (unknown := seg > n).any():
        missing = np.unique(pid[unknown])
        raise _bad(source, f"panoptic ids {missing[:20].tolist()} have no segment in the segment list")
    # Areas, coordinate sums and boxes from the runs. The sums are integers far below 2**53, so these
    # float64 bincounts are exact and the centers equal np.mean over each segment's pixel list.
    nb = n + 1
    area = np.bincount(seg, weights=length, minlength=nb).astype(np.int64)
    safe = np.maximum(area, 1).astype(np.float64)
    cy = np.bincount(seg, weights=y * length, minlength=nb) / safe
    # Sum of the columns x .. x + L - 1 of a run: L·(2x + L − 1)/2, an integer.
    cx = np.bincount(seg, weights=(length * (2 * x + length - 1)) // 2, minlength=nb) / safe
    y0 = np.full(nb, h - 1, dtype=np.int64)
    y1 = np.zeros(nb, dtype=np.int64)
    x0 = np.full(nb, w - 1, dtype=np.int64)
    x1 = np.zeros(nb, dtype=np.int64)
    np.minimum.at(y0, seg, y)
    np.maximum.at(y1, seg, y)
    np.minimum.at(x0, seg, x)
    np.maximum.at(x1, seg, x + length - 1)
    return _Runs(length, seg, y, x, pid, area, cy, cx, y0, y1, x0, x1)


# Rows of the per-run table that `_expand` turns into per-pixel maps (channel-first, as returned).
_N_INSTANCE = 8  # center, center offset (dy, dx), box offset (top, bottom, left, right), offset weight
_BAND_PIXELS = 1 << 15  # pixels per band of rows in _finish_instances (its float64 temporary: 256 KiB)


def _instance_rows(r: _Runs, inst: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Fill ``table[:8] (8, R) float32`` with each run's value of the instance maps, as far as a run has
    one value: center 0 (pasted later), dy = cy − y, dx 0 (needs x), top = y − y0, bottom = y1 − y, the
    box's x0 and x1 (combined with x later) and the offset weight. Runs outside the instance segments
    ``inst (S + 1,) bool`` are +0.0 everywhere. Returns their ``(R,) float64`` cx (0 elsewhere) for dx.

    Values are computed in float64 and rounded once to float32, as a per-pixel formula would be."""
    s = r.seg
    on = inst[s]
    yf = r.y.astype(np.float64)
    table[0] = 0.0
    table[1] = np.where(on, r.cy[s] - yf, 0.0)
    table[2] = 0.0
    table[3] = np.where(on, yf - r.y0[s], 0.0)
    table[4] = np.where(on, r.y1[s] - yf, 0.0)
    table[5] = np.where(on, r.x0[s], 0)
    table[6] = np.where(on, r.x1[s], 0)
    table[7] = on
    return np.where(on, r.cx[s], 0.0)


def _expand(r: _Runs, table: np.ndarray, h: int, w: int) -> np.ndarray:
    """Per-pixel maps ``(C, H, W)`` of a per-run ``table (C, R)``: each run's value repeated along it.

    One ``np.repeat`` writes all channels at about memory speed (no per-pixel index, no gather) into a
    single allocation: one large block rather than C fresh 2 MB maps, which cost page faults."""
    return np.repeat(table, r.length, axis=1).reshape(len(table), h, w)


def _finish_instances(
    r: _Runs, inst: np.ndarray, cx: np.ndarray, *, sigma: float, scores: np.ndarray | None, out: np.ndarray
) -> None:
    """Complete the instance maps in ``out (8, H, W) float32`` expanded from :func:`_instance_rows`: the
    column-dependent channels dx = cx − x, left = x − x0, right = x1 − x, and the Gaussians in channel 0.
    ``cx (R,) float64`` per run; ``scores (S + 1,) float64`` scales the Gaussians (None: peak 1)."""
    h, w = out.shape[1:]
    # x on instance pixels, +0.0 elsewhere (the weight is 0 or 1 and x >= 0): every difference below is
    # then +0.0 off the instances, where the table holds 0, and exact on them (small integers in float32;
    # cx − x is exact in float64 and rounded once by the cast). Done in bands of rows so that the
    # temporaries (x·weight, the float64 cx) stay in cache: ~1 ms less per 640×800 map than whole maps.
    xf = np.arange(w, dtype=np.float32)
    band = max(1, _BAND_PIXELS // w)
    xw = np.empty((band, w), dtype=np.float32)
    row_first = np.append(np.flatnonzero(r.x == 0), len(r.x))  # every row starts a run
    for ya in range(0, h, band):
        yb = min(ya + band, h)
        a, b = row_first[ya], row_first[yb]
        xb = np.multiply(out[7, ya:yb], xf, out=xw[: yb - ya])
        np.subtract(xb, out[5, ya:yb], out=out[5, ya:yb])
        np.subtract(out[6, ya:yb], xb, out=out[6, ya:yb])
        cxb = np.repeat(cx[a:b], r.length[a:b]).reshape(yb - ya, w)
        np.subtract(cxb, xb, out=out[2, ya:yb], casting="unsafe")

    heat = out[0]
    patch64 = gaussian_patch(sigma)
    half = patch64.shape[0] // 2
    patch32 = patch64.astype(np.float32)
    # Round half up, as the README's "Conventions" fix (np.round would round half to even).
    py = np.floor(r.cy + 0.5).astype(np.intp)
    px = np.floor(r.cx + 0.5).astype(np.intp)
    for i in np.flatnonzero(inst & (r.area > 0)):
        ya, yb = max(py[i] - half, 0), min(py[i] + half + 1, h)
        xa, xb = max(px[i] - half, 0), min(px[i] + half + 1, w)
        sl = (slice(ya - py[i] + half, yb - py[i] + half), slice(xa - px[i] + half, xb - px[i] + half))
        g = patch32[sl] if scores is None else (patch64[sl] * scores[i]).astype(np.float32)
        np.maximum(heat[ya:yb, xa:xb], g, out=heat[ya:yb, xa:xb])


def _score_table(
    segments: Sequence[Segment], scores: Mapping[int, float] | None, source: str | None
) -> np.ndarray | None:
    if scores is None:
        return None
    table = np.array([1.0] + [float(scores.get(int(s.id), 1.0)) for s in segments], dtype=np.float64)
    if not (np.isfinite(table).all() and (table >= 0).all()):
        bad = [s.id for s, v in zip(segments, table[1:]) if not (np.isfinite(v) and v >= 0)]
        raise _bad(source, f"segments {bad[:20]} have scores that are negative or not finite")
    return table


def encode_instances(
    panoptic: np.ndarray,
    segments: Sequence[Segment],
    sigma: float,
    scores: Mapping[int, float] | None = None,
    *,
    source: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Encode the non-crowd thing segments of a panoptic map as PRN's instance maps (§3.2 "Instance Maps").

    Used for the ground truth (:func:`compute_targets`) and for a base network's prediction (PRN's
    7-channel input, ``np.concatenate([center, center_offset, box_offset])``).

    Args:
        panoptic: ``(H, W)`` integer ids, VOID = -1; every other id must be listed in ``segments``.
        segments: the segments; ``isthing`` and ``iscrowd`` come from these objects. Listed segments absent
            from the map are skipped.
        sigma: Gaussian standard deviation in pixels.
        scores: optional ``{segment id: score}``; each Gaussian's peak is its score (1.0 for a segment the
            mapping lacks). ``None`` gives every Gaussian peak 1.0.
        source: a file or sample name put in error messages.

    Returns:
        ``center (1, H, W) float32`` (max-merged Gaussians), ``center_offset (2, H, W) float32`` (dy, dx)
        in pixels, ``box_offset (4, H, W) float32`` (top, bottom, left, right) in pixels, and
        ``offset_weight (H, W) float32`` (1 on non-crowd thing pixels, else 0). The four are views of
        one ``(8, H, W)`` allocation, in this channel order.

    Raises:
        DatasetError: malformed map, negative or duplicate segment ids, ids without a segment, a score
            that is negative or not finite.
        ValueError: ``sigma`` is not a positive number.
    """
    if not (sigma > 0 and np.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    panoptic = _check_panoptic(panoptic, source)
    r = _runs(panoptic, segments, source)
    inst = np.array([False] + [bool(s.isthing) and not bool(s.iscrowd) for s in segments])
    h, w = panoptic.shape
    table = np.empty((_N_INSTANCE, len(r.seg)), dtype=np.float32)
    cx = _instance_rows(r, inst, table)
    maps = _expand(r, table, h, w)
    _finish_instances(r, inst, cx, sigma=float(sigma), scores=_score_table(segments, scores, source), out=maps)
    return maps[0:1], maps[1:3], maps[3:7], maps[7]


def compute_targets(
    panoptic: np.ndarray,
    segments: Sequence[Segment],
    params: TargetParams = TargetParams(),
    *,
    source: str | None = None,
) -> dict[str, np.ndarray]:
    """PRN's ground-truth targets for one sample at store resolution (paper §3.2, §3.4; README "Conventions").

    Each segment's ``train_id``, ``isthing`` and ``iscrowd`` are read from the :class:`Segment` objects
    (not derived from the id); its area, center and box are measured on ``panoptic`` itself (``area`` and
    ``bbox`` of the objects are ignored, since they may describe another resolution).

    Args:
        panoptic: ``(H, W)`` integer ids, VOID = -1; every other id must be listed in ``segments``.
        segments: the sample's segments; ``train_id`` must be in 0..254.
        params: σ, small-instance area and weight.
        source: a file or sample name put in error messages.

    Returns a dict of:
        - ``semantic (H, W) uint8``: train ids, 255 on VOID.
        - ``center (1, H, W) float32``, ``center_offset (2, H, W) float32`` (dy, dx),
          ``box_offset (4, H, W) float32`` (top, bottom, left, right): see :func:`encode_instances`.
        - ``foreground (H, W) uint8``: 1 on every thing pixel, crowd included.
        - ``semantic_weight (H, W) float32``: ``small_instance_weight`` on thing segments (crowd included,
          as in Panoptic-DeepLab) with area < ``small_instance_area``, 1 elsewhere, 0 on VOID.
        - ``center_weight (H, W) float32``: 1 on every non-crowd, non-VOID pixel (stuff included).
        - ``offset_weight (H, W) float32``: 1 on non-crowd thing pixels.
        - ``panoptic (H, W) int32``: a copy of the input.
        The foreground loss weight is ``panoptic != -1`` and is not returned. The float32 maps and ``panoptic``
        are views of one allocation, the uint8 maps of another (see :func:`_expand` for why).

    Raises:
        DatasetError: malformed map, bad train ids, negative or duplicate segment ids, ids without a
            segment.
    """
    panoptic = _check_panoptic(panoptic, source)
    for s in segments:
        if not 0 <= int(s.train_id) < IGNORE_LABEL:
            raise _bad(source, f"segment {s.id} has train id {s.train_id}, outside 0..{IGNORE_LABEL - 1}")
    r = _runs(panoptic, segments, source)
    thing = np.array([False] + [bool(s.isthing) for s in segments])
    crowd = np.array([False] + [bool(s.iscrowd) for s in segments])
    inst = thing & ~crowd
    h, w = panoptic.shape
    # The ten float32 maps and the int32 panoptic copy are all 4-byte words: one uint32 table holds the
    # float rows' bits and the ids, so one np.repeat writes every one of them (see _expand).
    table = np.empty((11, len(r.seg)), dtype=np.uint32)
    rows = table[:10].view(np.float32)
    cx = _instance_rows(r, inst, rows)
    sem_w = np.where(thing & (r.area < params.small_instance_area), params.small_instance_weight, 1.0)
    sem_w[0] = 0.0
    ctr_w = ~crowd
    ctr_w[0] = False
    rows[8] = sem_w[r.seg]
    rows[9] = ctr_w[r.seg]
    table[10] = r.pid.view(np.uint32)
    words = _expand(r, table, h, w)
    maps = words[:10].view(np.float32)
    _finish_instances(r, inst, cx, sigma=params.sigma, scores=None, out=maps[:8])

    train = np.array([IGNORE_LABEL] + [int(s.train_id) for s in segments], dtype=np.uint8)
    bytes_ = _expand(r, np.stack([train[r.seg], thing.astype(np.uint8)[r.seg]]), h, w)
    return {
        "semantic": bytes_[0],
        "center": maps[0:1],
        "center_offset": maps[1:3],
        "box_offset": maps[3:7],
        "foreground": bytes_[1],
        "semantic_weight": maps[8],
        "center_weight": maps[9],
        "offset_weight": maps[7],
        "panoptic": words[10].view(np.int32),
    }


__all__ = ["TargetParams", "compute_targets", "encode_instances", "gaussian_patch"]
