"""Ground-truth targets of PRN (DESIGN §3; paper §3.2 "Instance Maps", §3.4 "Prediction Branches").

Everything here works on maps already at the store resolution (targets are computed *after* resizing) and
is pure NumPy. One pass over the label map serves all segments: the panoptic ids are turned into a dense
segment index by a lookup table (``np.unique(..., return_inverse=True)`` when the ids are too sparse for
one), and two ``np.bincount`` calls over (row, segment) and (column, segment) keys give every segment's
area, center of mass and tight box at once. Every per-pixel map depends only on the segment, or on
(row, segment) / (column, segment), so each is one gather (``np.take``) from a small table through those
keys: no ``np.where`` per segment, no per-pixel arithmetic. The Gaussians are pasted per instance into
slices (each patch is small).

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

# Above this many table entries per pixel the dense id → index lookup table costs more than sorting.
_MAX_LUT_PER_PIXEL = 8
_MIN_LUT = 1 << 20


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
class _Index:
    """The one pass over a label map: ``inv (H, W) intp`` segment index per pixel (0 = VOID, i + 1 =
    ``segments[i]``); ``row_key = y·B + inv`` and ``col_key = x·B + inv`` ``(H, W) intp`` (B = S + 2 bins),
    which index (row, segment) and (column, segment) tables; per-segment ``area``, float64 center of mass
    ``cy, cx`` and inclusive box ``y0, y1, x0, x1`` (all ``(S + 1,)``, entry 0 for VOID; absent segments
    have area 0)."""

    inv: np.ndarray
    row_key: np.ndarray
    col_key: np.ndarray
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


def _index(panoptic: np.ndarray, segments: Sequence[Segment], source: str | None) -> _Index:
    h, w = panoptic.shape
    n = len(segments)
    ids = np.fromiter((int(s.id) for s in segments), dtype=np.int64, count=n)
    if n and ids.min() < 0:
        raise _bad(source, f"segment id {int(ids.min())} is negative (only VOID = -1 may be, and it is no segment)")
    if len(np.unique(ids)) != n:
        dup = sorted({int(i) for i in ids if (ids == i).sum() > 1})
        raise _bad(source, f"segment ids listed more than once: {dup}")
    lo, hi = int(panoptic.min()), int(panoptic.max())
    if lo < VOID:
        raise _bad(source, f"panoptic map holds id {lo}; ids must be >= 0, or -1 for VOID")
    if hi > np.iinfo(np.int32).max:
        raise _bad(source, f"panoptic map holds id {hi}, beyond the int32 range")
    unknown = n + 1  # index of an extra bin that collects ids no segment lists
    top = max(hi, int(ids.max()) if n else 0)
    if top + 2 <= max(_MIN_LUT, _MAX_LUT_PER_PIXEL * h * w):
        # Dense lookup id → index.
        lut = np.full(top + 2, unknown, dtype=np.intp)
        lut[-1] = 0
        lut[ids] = np.arange(1, n + 1)
        # mode="wrap" maps VOID (-1) to the last entry; every other id is in range (checked above).
        inv = np.take(lut, panoptic, mode="wrap")
    else:
        uniq, uinv = np.unique(panoptic, return_inverse=True)
        pos = {int(i): k + 1 for k, i in enumerate(ids.tolist())}
        table = np.array([0 if u == VOID else pos.get(u, unknown) for u in uniq.tolist()], dtype=np.intp)
        inv = table[uinv.reshape(h, w)]
    nb = n + 2
    # (row, segment) and (column, segment) histograms: areas, centers of mass and boxes in one pass each.
    row_key = np.add(inv, (np.arange(h, dtype=np.intp) * nb)[:, None])
    rows = np.bincount(row_key.ravel(), minlength=h * nb).reshape(h, nb)
    col_key = np.add(inv, (np.arange(w, dtype=np.intp) * nb)[None, :])
    cols = np.bincount(col_key.ravel(), minlength=w * nb).reshape(w, nb)
    if rows[:, unknown].any():
        missing = np.unique(panoptic[inv == unknown])
        raise _bad(source, f"panoptic ids {missing[:20].tolist()} have no segment in the segment list")
    rows, cols = rows[:, :unknown], cols[:, :unknown]
    area = rows.sum(axis=0)
    safe = np.maximum(area, 1).astype(np.float64)
    # Integer coordinate sums are exact in float64, so the mean equals np.mean over the pixel list.
    cy = (np.arange(h, dtype=np.float64) @ rows) / safe
    cx = (np.arange(w, dtype=np.float64) @ cols) / safe
    rnz, cnz = rows > 0, cols > 0
    y0 = rnz.argmax(axis=0)
    y1 = h - 1 - rnz[::-1].argmax(axis=0)
    x0 = cnz.argmax(axis=0)
    x1 = w - 1 - cnz[::-1].argmax(axis=0)
    return _Index(inv, row_key, col_key, area, cy, cx, y0, y1, x0, x1)


def _arena(h: int, w: int, n_float: int, n_int32: int = 0, n_uint8: int = 0):
    """One allocation carved into ``(n_float, H, W) float32``, ``(n_int32, H, W) int32`` and
    ``(n_uint8, H, W) uint8`` views.

    Why: a 640×800 map is 2 MB, just under the size at which NumPy asks the kernel for huge pages, so ten
    separate fresh maps cost ~5000 page faults (~6 ms here, more than the arithmetic); one buffer of
    the same total size costs a handful.
    """
    hw = h * w
    buf = np.empty(4 * hw * (n_float + n_int32) + hw * n_uint8, dtype=np.uint8)
    f = buf[: 4 * hw * n_float].view(np.float32).reshape(n_float, h, w)
    i = buf[4 * hw * n_float : 4 * hw * (n_float + n_int32)].view(np.int32).reshape(n_int32, h, w)
    u = buf[4 * hw * (n_float + n_int32) :].reshape(n_uint8, h, w)
    return f, i, u


def _encode(idx: _Index, instance: np.ndarray, sigma: float, scores: np.ndarray | None, out: np.ndarray) -> None:
    """Write the instance maps into ``out (8, H, W) float32``: center (1), center offsets (2), box offsets
    (4), offset weight (1). ``instance (S + 1,) bool`` marks the segments that get a Gaussian and offsets
    (non-crowd things), ``scores (S + 1,) float64`` scales their Gaussians."""
    inv = idx.inv
    h, w = inv.shape
    inst = instance & (idx.area > 0)

    heat = out[0]
    heat.fill(0.0)
    patch64 = gaussian_patch(sigma)
    half = patch64.shape[0] // 2
    patch32 = patch64.astype(np.float32)
    # Round half up, as DESIGN §3 fixes (np.round would round half to even).
    py = np.floor(idx.cy + 0.5).astype(np.intp)
    px = np.floor(idx.cx + 0.5).astype(np.intp)
    for i in np.flatnonzero(inst):
        ya, yb = max(py[i] - half, 0), min(py[i] + half + 1, h)
        xa, xb = max(px[i] - half, 0), min(px[i] + half + 1, w)
        sl = (slice(ya - py[i] + half, yb - py[i] + half), slice(xa - px[i] + half, xb - px[i] + half))
        g = patch32[sl] if scores is None else (patch64[sl] * scores[i]).astype(np.float32)
        np.maximum(heat[ya:yb, xa:xb], g, out=heat[ya:yb, xa:xb])

    # Every offset depends only on (row, segment) or (column, segment): evaluate it on those small tables
    # (exactly as a per-pixel formula would, float64 then rounded once to float32) and gather each
    # channel in one pass through the keys. Non-instance segments' entries are +0.0.
    # Per-segment values gain one entry for the keys' unknown-id bin (never addressed once validated).
    # mode="clip" (the keys are in range by construction) lets np.take write straight into `out`; the
    # default mode="raise" would go through a temporary copy.
    on = np.append(inst, False)
    per_segment = (idx.cy, idx.cx, idx.y0, idx.y1, idx.x0, idx.x1)
    cy, cx, y0, y1, x0, x1 = (np.append(v, 0).astype(np.float64) for v in per_segment)
    yy = np.arange(h, dtype=np.float64)[:, None]
    xx = np.arange(w, dtype=np.float64)[:, None]
    for c, key, values in (
        (1, idx.row_key, cy - yy),
        (2, idx.col_key, cx - xx),
        (3, idx.row_key, yy - y0),
        (4, idx.row_key, y1 - yy),
        (5, idx.col_key, xx - x0),
        (6, idx.col_key, x1 - xx),
    ):
        table = np.where(on, values, 0.0).astype(np.float32).ravel()
        np.take(table, key, out=out[c], mode="clip")
    np.take(inst.astype(np.float32), inv, out=out[7], mode="clip")


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
    idx = _index(panoptic, segments, source)
    inst = np.array([False] + [bool(s.isthing) and not bool(s.iscrowd) for s in segments])
    h, w = panoptic.shape
    maps, _, _ = _arena(h, w, 8)
    _encode(idx, inst, float(sigma), _score_table(segments, scores, source), maps)
    return maps[0:1], maps[1:3], maps[3:7], maps[7]


def compute_targets(
    panoptic: np.ndarray,
    segments: Sequence[Segment],
    params: TargetParams = TargetParams(),
    *,
    source: str | None = None,
) -> dict[str, np.ndarray]:
    """PRN's ground-truth targets for one sample at store resolution (DESIGN §3; paper §3.2, §3.4).

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
        The foreground loss weight is ``panoptic != -1`` and is not returned. The maps are views of one
        allocation (see :func:`_arena` for why).

    Raises:
        DatasetError: malformed map, bad train ids, negative or duplicate segment ids, ids without a
            segment.
    """
    panoptic = _check_panoptic(panoptic, source)
    for s in segments:
        if not 0 <= int(s.train_id) < IGNORE_LABEL:
            raise _bad(source, f"segment {s.id} has train id {s.train_id}, outside 0..{IGNORE_LABEL - 1}")
    idx = _index(panoptic, segments, source)
    thing = np.array([False] + [bool(s.isthing) for s in segments])
    crowd = np.array([False] + [bool(s.iscrowd) for s in segments])
    inst = thing & ~crowd
    h, w = panoptic.shape
    maps, ints, bytes_ = _arena(h, w, 10, 1, 2)
    _encode(idx, inst, params.sigma, None, maps[:8])

    inv = idx.inv
    train = np.array([IGNORE_LABEL] + [int(s.train_id) for s in segments], dtype=np.uint8)
    sem_w = np.where(thing & (idx.area < params.small_instance_area), params.small_instance_weight, 1.0)
    sem_w[0] = 0.0
    ctr_w = (~crowd).astype(np.float32)
    ctr_w[0] = 0.0
    np.take(train, inv, out=bytes_[0], mode="clip")
    np.take(thing.astype(np.uint8), inv, out=bytes_[1], mode="clip")
    np.take(sem_w.astype(np.float32), inv, out=maps[8], mode="clip")
    np.take(ctr_w, inv, out=maps[9], mode="clip")
    np.copyto(ints[0], panoptic, casting="unsafe")
    return {
        "semantic": bytes_[0],
        "center": maps[0:1],
        "center_offset": maps[1:3],
        "box_offset": maps[3:7],
        "foreground": bytes_[1],
        "semantic_weight": maps[8],
        "center_weight": maps[9],
        "offset_weight": maps[7],
        "panoptic": ints[0],
    }


__all__ = ["TargetParams", "compute_targets", "encode_instances", "gaussian_patch"]
