"""A *simulator* of a two-stage base panoptic network, made from the ground truth (paper §1, §4.1; README
"`simulated` — a simulator of a two-stage base network").

This is not a trained network. It imitates the typical errors of Panoptic FPN-style networks that the PRN
paper sets out to fix (§1: low-resolution RoI masks, heuristic merging of instance and stuff outputs), with
the semantic and instance branches' errors *coupled* as in a real network that shares one backbone:

- each ground-truth instance is missed with probability ``miss``; a missed instance is painted in the
  semantic branch as the class around it (the majority label of a ``ring``-px band outside it), so nothing
  in the base's inputs points at it;
- ``Binomial(n_instances, spurious)`` spurious instances (RoI-resampled ellipses of a random thing class,
  sized like the image's instances) are added and painted into the semantic branch in their class;
- each instance and each stuff segment has its class replaced by another class of the same kind with
  probability ``confuse`` (in both branches);
- ground-truth VOID pixels get a prediction like any other pixel: the label of the nearest labelled pixel
  (a network predicts everywhere; no ground-truth VOID reaches the probabilities);
- the semantic map is taken at 1/``stride`` (1/4) resolution by nearest sampling and upsampled, so stuff and
  thing-class boundaries are blocky; each non-crowd thing mask is resampled through a ``mask × mask`` grid
  in a jittered box, pasted back bilinearly and thresholded at 0.5, as Mask R-CNN's RoI masks are;
- scores: real instances ~ Beta(``score_a``, ``score_b``) (default Beta(5, 2): 89 % above 0.5), spurious
  ones ~ Beta(``spurious_a``, ``spurious_b``) (default Beta(2, 3): 31 % above 0.5), so a threshold alone
  cannot separate them; instances scoring below ``threshold`` (0.5, as detectron2's merge) are dropped —
  their semantic pixels stay thing-class and are left VOID by the merge;
- panoptic merging like Kirillov et al.'s heuristic: instances by decreasing score, an instance more than
  ``overlap`` covered by earlier ones is dropped; stuff from the semantic map elsewhere; thing-class semantic
  pixels not covered by an instance are VOID;
- probabilities: a softened one-hot of the 1/4-resolution semantic map: the one-hot blurred by a Gaussian of
  ``blur`` (1) quarter-resolution pixels, times a gain that gives the predicted class probability
  ``confidence`` (0.9) inside regions, through a softmax.

Randomness comes only from ``(seed, image_id)`` (a SeedSequence over a BLAKE2 hash of the image id), so a
sample's prediction never depends on which other samples are built, or in what order.

Spec (defaults shown): ``simulated:miss=0.1,spurious=0.15,confuse=0.05,seed=0,mask=28,stride=4,``
``jitter=0.08,confidence=0.9,blur=1,overlap=0.5,threshold=0.5,score_a=5,score_b=2,spurious_a=2,``
``spurious_b=3,ring=3``; any subset may be given, ``simulated`` alone uses the defaults.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage

from ..errors import BaseNetworkError
from ..panoptic_io import refresh_segments, segment_stats
from ..records import IGNORE_LABEL, VOID, CategorySet, IdAllocator, Sample, Segment
from ..resize import resize_labels
from .prediction import BasePrediction
from .spec import parse_options


@dataclass(frozen=True)
class SimParams:
    """Simulator parameters (README "`simulated`"): ``miss``, ``spurious``, ``confuse`` rates in [0, 1];
    ``seed``; ``mask`` the RoI mask side (28); ``stride`` the semantic map's downsampling (4); ``jitter`` the
    standard deviation of each box edge as a fraction of the box side; ``confidence`` and ``blur`` shape the
    probabilities; ``overlap`` the merge heuristic's threshold; ``threshold`` the score below which an
    instance is dropped; ``score_a``/``score_b`` and ``spurious_a``/``spurious_b`` the Beta parameters of
    real and spurious instances' scores; ``ring`` the width (px) of the band whose majority label paints a
    missed instance."""

    miss: float = 0.1
    spurious: float = 0.15
    confuse: float = 0.05
    seed: int = 0
    mask: int = 28
    stride: int = 4
    jitter: float = 0.08
    confidence: float = 0.9
    blur: float = 1.0
    overlap: float = 0.5
    threshold: float = 0.5
    score_a: float = 5.0
    score_b: float = 2.0
    spurious_a: float = 2.0
    spurious_b: float = 3.0
    ring: int = 3

    def __post_init__(self) -> None:
        for name in ("miss", "spurious", "confuse", "overlap", "threshold"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise BaseNetworkError(f"simulated: {name}={v} must lie in [0, 1]")
        if self.mask < 2 or self.stride < 1 or self.jitter < 0 or self.seed < 0 or self.ring < 1:
            raise BaseNetworkError("simulated: need mask ≥ 2, stride ≥ 1, jitter ≥ 0, seed ≥ 0, ring ≥ 1")
        if not 0.0 < self.confidence < 1.0 or self.blur < 0:
            raise BaseNetworkError("simulated: need 0 < confidence < 1 and blur ≥ 0")
        for name in ("score_a", "score_b", "spurious_a", "spurious_b"):
            if not getattr(self, name) > 0:
                raise BaseNetworkError(f"simulated: {name}={getattr(self, name)} must be > 0 (a Beta parameter)")


_INT_PARAMS = frozenset(f.name for f in fields(SimParams) if f.type in (int, "int"))


def image_rng(seed: int, image_id: str) -> np.random.Generator:
    """The generator for one image: a function of ``(seed, image_id)`` only."""
    digest = hashlib.blake2b(str(image_id).encode("utf-8"), digest_size=8).digest()
    return np.random.default_rng(np.random.SeedSequence([int(seed), int.from_bytes(digest, "little")]))


def roi_resample(mask: np.ndarray, box: tuple[float, float, float, float], res: int) -> np.ndarray:
    """Sample ``mask (H, W) bool`` inside ``box = (y0, x0, y1, x1)`` (continuous pixel-edge coordinates) on a
    ``res × res`` grid, averaging 2×2 bilinear samples per bin like RoIAlign. Returns ``(res, res) float32``."""
    y0, x0, y1, x1 = box
    sub = (np.arange(2 * res) + 0.5) / (2 * res)
    ys = y0 + sub * (y1 - y0) - 0.5  # continuous → index coordinates (pixel p spans [p, p+1))
    xs = x0 + sub * (x1 - x0) - 0.5
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    vals = ndimage.map_coordinates(mask.astype(np.float32), [gy, gx], order=1, mode="constant", cval=0.0)
    return vals.reshape(res, 2, res, 2).mean(axis=(1, 3)).astype(np.float32)


def roi_paste(roi: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """Paste a ``(res, res)`` soft mask into an image of ``size`` over ``box`` by bilinear interpolation
    (zero outside the grid) and threshold at 0.5, as Mask R-CNN does. Returns ``(H, W) bool``."""
    res = roi.shape[0]
    y0, x0, y1, x1 = box
    H, W = size
    r0, r1 = max(0, int(np.floor(y0))), min(H, int(np.ceil(y1)))
    c0, c1 = max(0, int(np.floor(x0))), min(W, int(np.ceil(x1)))
    out = np.zeros(size, dtype=bool)
    if r1 <= r0 or c1 <= c0:
        return out
    gy = ((np.arange(r0, r1) + 0.5) - y0) / max(y1 - y0, 1e-6) * res - 0.5
    gx = ((np.arange(c0, c1) + 0.5) - x0) / max(x1 - x0, 1e-6) * res - 0.5
    yy, xx = np.meshgrid(gy, gx, indexing="ij")
    vals = ndimage.map_coordinates(np.pad(roi, 1), [yy + 1, xx + 1], order=1, mode="constant", cval=0.0)
    out[r0:r1, c0:c1] = vals >= 0.5
    return out


class SimulatedBase:
    """The ``simulated`` adapter. ``predict`` needs the samples' ground truth (original size)."""

    def __init__(self, categories: CategorySet, params: SimParams | None = None):
        self.categories = categories
        self.params = params or SimParams()
        p = self.params
        self.spec = "simulated:" + ",".join(f"{k}={v}" for k, v in asdict(p).items())
        self._things = np.array([c.train_id for c in categories if c.isthing], dtype=np.int64)
        self._stuff = np.array([c.train_id for c in categories if not c.isthing], dtype=np.int64)

    @staticmethod
    def from_spec(spec: str, rest: str, categories: CategorySet) -> "SimulatedBase":
        opts = parse_options(rest, spec)
        known = {f.name: f.type for f in fields(SimParams)}
        kwargs = {}
        for key, value in opts.items():
            if key not in known:
                raise BaseNetworkError(f"base spec {spec!r}: unknown simulated parameter {key!r} "
                                       f"(known: {', '.join(known)})")
            try:
                kwargs[key] = int(value) if key in _INT_PARAMS else float(value)
            except ValueError:
                raise BaseNetworkError(f"base spec {spec!r}: {key}={value!r} is not a number") from None
        return SimulatedBase(categories, SimParams(**kwargs))

    def predict(self, samples: list[Sample]) -> list[BasePrediction]:
        """One simulated prediction per sample (original size), each from its own ``(seed, image_id)``."""
        return [self.predict_one(s) for s in samples]

    def _other(self, rng: np.random.Generator, train_id: int, isthing: bool) -> int:
        pool = self._things if isthing else self._stuff
        pool = pool[pool != train_id]
        # The draw is made even when it is not used so the stream does not depend on the outcome.
        j = rng.integers(0, max(len(pool), 1))
        return int(pool[j]) if len(pool) else train_id

    def predict_one(self, sample: Sample) -> BasePrediction:
        p = self.params
        rng = image_rng(p.seed, sample.image_id)
        H, W = sample.panoptic.shape
        cats = self.categories
        stats = segment_stats(sample.panoptic)

        # Class confusion per segment, applied to the semantic branch (stuff) and to the instances.
        confused: dict[int, bool] = {}
        new_train: dict[int, int] = {}
        for s in sample.segments:
            u = rng.random()
            other = self._other(rng, s.train_id, s.isthing)
            t = other if (u < p.confuse and not s.iscrowd) else s.train_id
            confused[s.id] = t != s.train_id
            new_train[s.id] = t
        sem = self._labels(sample.panoptic, new_train)
        sem = fill_void(sem)  # a network predicts every pixel, VOID ones included

        # Instance branch: misses, scores and boxes of the real instances (draws made for each instance,
        # used or not, so the stream does not depend on the outcomes).
        inst: list[tuple[float, int, np.ndarray, bool]] = []  # (score, train_id, mask, spurious)
        gt_things = [s for s in sample.segments if s.isthing and not s.iscrowd and s.id in stats]
        missed: list[int] = []
        sides = []
        for s in gt_things:
            u_miss = rng.random()
            noise = rng.normal(0.0, 1.0, size=4)
            score = float(rng.beta(p.score_a, p.score_b))
            x, y, w, h = stats[s.id][1]
            sides.append((h, w))
            if u_miss < p.miss:
                missed.append(s.id)
                continue
            box = (y + noise[0] * p.jitter * h, x + noise[1] * p.jitter * w,
                   y + h + noise[2] * p.jitter * h, x + w + noise[3] * p.jitter * w)
            mask = self._roi_mask(sample.panoptic, s.id, box)
            inst.append((score, new_train[s.id], mask, False))
        # A missed instance is missed by the semantic branch too: painted as what surrounds it.
        for sid in missed:
            paint_as_surroundings(sem, sample.panoptic == sid, p.ring)

        n_spurious = int(rng.binomial(len(gt_things), p.spurious)) if len(self._things) else 0
        for _ in range(n_spurious):
            h, w = sides[rng.integers(0, len(sides))] if sides else (max(2, H // 8), max(2, W // 8))
            h, w = min(h, H), min(w, W)
            y0 = rng.uniform(0, H - h) if H > h else 0.0
            x0 = rng.uniform(0, W - w) if W > w else 0.0
            t = int(self._things[rng.integers(0, len(self._things))])
            score = float(rng.beta(p.spurious_a, p.spurious_b))
            yy = (np.arange(p.mask) + 0.5) / p.mask - 0.5
            ellipse = ((yy[:, None] ** 2 + yy[None, :] ** 2) <= 0.25).astype(np.float32)
            mask = roi_paste(ellipse, (y0, x0, y0 + h, x0 + w), (H, W))
            sem[mask] = t  # the semantic branch believes in it too
            inst.append((score, t, mask, True))

        # Semantic branch at 1/stride: nearest sampling down then up gives blocky boundaries.
        qsize = (-(-H // p.stride), -(-W // p.stride))
        sem_q = resize_labels(sem, qsize)
        sem_up = resize_labels(sem_q, (H, W))

        # Heuristic merge (Kirillov et al.): instances above the score threshold by decreasing score, then
        # stuff; thing-class semantic pixels no kept instance covers stay VOID.
        pan = np.full((H, W), VOID, dtype=np.int32)
        ids = IdAllocator()
        stuff_lut = np.full(256, VOID, dtype=np.int32)
        for c in cats:
            if not c.isthing:
                stuff_lut[c.train_id] = ids.stuff(c.id)
        pan[:] = stuff_lut[sem_up]
        claimed = np.zeros((H, W), dtype=bool)
        segments: list[Segment] = []
        n_overlap = n_low = 0
        spurious_ids = []
        for k in sorted(range(len(inst)), key=lambda i: -inst[i][0]):
            score, t, mask, spur = inst[k]
            if score < p.threshold:
                n_low += 1
                continue
            area = int(mask.sum())
            if area == 0:
                continue
            free = mask & ~claimed
            if area - int(free.sum()) > p.overlap * area:
                n_overlap += 1
                continue
            cat = cats[t]
            sid = ids.thing(cat.id)
            pan[free] = sid
            claimed |= free
            segments.append(Segment(sid, cat.id, cat.train_id, True, score=score))
            if spur:
                spurious_ids.append(sid)
        for c in cats:
            if not c.isthing:
                segments.append(Segment(ids.stuff(c.id), c.id, c.train_id, False))
        segments = refresh_segments(pan, segments)

        probs = self._probs(sem_q)
        meta = {"gt_instances": len(gt_things), "missed": len(missed), "spurious": n_spurious,
                "below_threshold": n_low, "dropped_overlap": n_overlap, "spurious_ids": spurious_ids,
                "missed_ids": missed, "confused": sorted(k for k, v in confused.items() if v)}
        return BasePrediction(pan, segments, probs, str(sample.image_id), meta)

    @staticmethod
    def _labels(panoptic: np.ndarray, train_of: dict[int, int]) -> np.ndarray:
        """``(H, W) uint8`` train ids of each segment's (possibly confused) class; 255 where VOID."""
        if not train_of:
            return np.full(panoptic.shape, IGNORE_LABEL, dtype=np.uint8)
        lut_ids = np.array(sorted(train_of), dtype=np.int64)
        lut_val = np.array([train_of[i] for i in lut_ids.tolist()], dtype=np.uint8)
        pos = np.clip(np.searchsorted(lut_ids, panoptic), 0, len(lut_ids) - 1)
        hit = lut_ids[pos] == panoptic
        return np.where(hit, lut_val[pos], IGNORE_LABEL).astype(np.uint8)

    def _probs(self, sem_q: np.ndarray) -> np.ndarray:
        """Softened one-hot ``(N_cl, h/stride, w/stride) float32`` of the 1/stride labels: blurred so
        boundaries are uncertain, scaled so the interior probability of the predicted class is
        ``confidence`` whatever the class count."""
        p = self.params
        n = len(self.categories)
        gain = np.float32(np.log(p.confidence * max(n - 1, 1) / (1.0 - p.confidence)) if n > 1 else 0.0)
        present = np.unique(sem_q[sem_q != IGNORE_LABEL]).astype(np.int64)
        # Only present classes have a nonzero (blurred) one-hot; every other class has logit 0, so it
        # shares the value 1 / Z and is filled without being blurred or exponentiated.
        hot = (sem_q[None] == present[:, None, None]).astype(np.float32)
        if p.blur > 0 and len(present):
            hot = ndimage.gaussian_filter(hot, sigma=(0, p.blur, p.blur), mode="nearest")
        e = np.exp(gain * hot)
        z = e.sum(axis=0) + np.float32(n - len(present))
        probs = np.empty((n,) + sem_q.shape, dtype=np.float32)
        probs[:] = 1.0 / z
        probs[present] = e / z
        return probs

    def _roi_mask(self, panoptic: np.ndarray, seg_id: int, box: tuple[float, float, float, float]) -> np.ndarray:
        # Work on a crop around the box so the cost scales with the instance, not the image.
        size = panoptic.shape
        y0, x0, y1, x1 = box
        r0 = max(0, int(np.floor(min(y0, y1))) - 2)
        c0 = max(0, int(np.floor(min(x0, x1))) - 2)
        r1 = min(size[0], int(np.ceil(max(y0, y1))) + 2)
        c1 = min(size[1], int(np.ceil(max(x0, x1))) + 2)
        if y1 - y0 < 1 or x1 - x0 < 1 or r1 <= r0 or c1 <= c0:
            return np.zeros(size, dtype=bool)
        crop = panoptic[r0:r1, c0:c1] == seg_id
        local = (y0 - r0, x0 - c0, y1 - r0, x1 - c0)
        roi = roi_resample(crop, local, self.params.mask)
        out = np.zeros(size, dtype=bool)
        out[r0:r1, c0:c1] = roi_paste(roi, local, crop.shape)
        return out


def fill_void(labels: np.ndarray) -> np.ndarray:
    """``(H, W) uint8`` train ids with every 255 (VOID) pixel given the label of its nearest labelled pixel
    (Euclidean; ties as SciPy breaks them). All-VOID maps are returned unchanged."""
    void = labels == IGNORE_LABEL
    if not void.any() or void.all():
        return labels
    _, (iy, ix) = ndimage.distance_transform_edt(void, return_indices=True)
    return labels[iy, ix]


def paint_as_surroundings(labels: np.ndarray, mask: np.ndarray, ring: int) -> None:
    """Paint ``mask`` in ``labels (H, W) uint8`` (in place) with the most frequent label of the ``ring``-px
    band around it (ties: the smaller train id); nothing when the band holds no label."""
    if not mask.any():
        return
    rows, cols = np.nonzero(mask)
    r0, r1 = max(0, rows.min() - ring), min(mask.shape[0], rows.max() + ring + 1)
    c0, c1 = max(0, cols.min() - ring), min(mask.shape[1], cols.max() + ring + 1)
    m = mask[r0:r1, c0:c1]
    band = ndimage.binary_dilation(m, iterations=ring) & ~m
    around = labels[r0:r1, c0:c1][band]
    around = around[around != IGNORE_LABEL]
    if around.size == 0:
        return
    labels[r0:r1, c0:c1][m] = np.bincount(around).argmax()


__all__ = ["SimulatedBase", "SimParams", "fill_void", "image_rng", "paint_as_surroundings", "roi_resample",
           "roi_paste"]
