"""Benchmark: vectorised ground-truth targets vs a per-segment generator (one ``np.where`` per segment, the
way Panoptic-DeepLab's reference target generator works), on 640×800 maps, in the same process.

    .venv/bin/python benchmarks/targets.py [--repeat 20]

Prints ms per image (median wall, min wall and median CPU time of this process, one thread; the two
generators run alternately so both see the same machine load) for each scene: the shipped COCO samples
resized by the paper's §4.2 policy (534×800 and 450×800), the same padded with VOID to 640×800, and seeded
synthetic 640×800 scenes with exactly 30 and 100 segments; and the speed-up ratio (median of the
per-run CPU-time ratios, the steadier figure on a machine shared with other work).
Goals: ≥ 3× the per-segment way; ≤ 10 ms per 640×800 image with 30 segments on one core.
Not run by CI. :func:`reference_targets` is also the reference the real-data tests compare against.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

if __name__ == "__main__":
    # One core, as the goal is stated: keep BLAS (two tiny dot products) single-threaded. Only when run
    # as a script, since the tests import this module for its reference generator.
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def reference_targets(
    panoptic: np.ndarray,
    segments: Sequence,
    sigma: float = 8.0,
    small_instance_area: int = 4096,
    small_instance_weight: float = 3.0,
    scores: Mapping[int, float] | None = None,
) -> dict[str, np.ndarray]:
    """Straightforward per-segment targets (same keys and dtypes as ``prn_data.targets.compute_targets``),
    written independently of it: one ``np.where`` per segment and a Gaussian evaluated per instance."""
    h, w = panoptic.shape
    semantic = np.full((h, w), 255, dtype=np.uint8)
    foreground = np.zeros((h, w), dtype=np.uint8)
    center = np.zeros((1, h, w), dtype=np.float32)
    center_offset = np.zeros((2, h, w), dtype=np.float32)
    box_offset = np.zeros((4, h, w), dtype=np.float32)
    semantic_weight = np.zeros((h, w), dtype=np.float32)
    center_weight = np.zeros((h, w), dtype=np.float32)
    offset_weight = np.zeros((h, w), dtype=np.float32)
    half = int(np.floor(3 * sigma + 0.5)) + 1
    for seg in segments:
        ys, xs = np.where(panoptic == seg.id)
        if len(ys) == 0:
            continue
        semantic[ys, xs] = seg.train_id
        semantic_weight[ys, xs] = 1.0
        if not seg.iscrowd:
            center_weight[ys, xs] = 1.0
        if not seg.isthing:
            continue
        foreground[ys, xs] = 1
        if len(ys) < small_instance_area:
            semantic_weight[ys, xs] = small_instance_weight
        if seg.iscrowd:
            continue
        offset_weight[ys, xs] = 1.0
        cy, cx = ys.mean(), xs.mean()
        center_offset[0, ys, xs] = cy - ys
        center_offset[1, ys, xs] = cx - xs
        box_offset[0, ys, xs] = ys - ys.min()
        box_offset[1, ys, xs] = ys.max() - ys
        box_offset[2, ys, xs] = xs - xs.min()
        box_offset[3, ys, xs] = xs.max() - xs
        py, px = int(np.floor(cy + 0.5)), int(np.floor(cx + 0.5))
        ya, yb = max(py - half, 0), min(py + half + 1, h)
        xa, xb = max(px - half, 0), min(px + half + 1, w)
        gy = np.arange(ya, yb)[:, None] - py
        gx = np.arange(xa, xb)[None, :] - px
        g = np.exp(-(gy**2 + gx**2) / (2 * sigma**2))
        if scores is not None:
            g = g * scores.get(seg.id, 1.0)
        center[0, ya:yb, xa:xb] = np.maximum(center[0, ya:yb, xa:xb], g.astype(np.float32))
    return {
        "semantic": semantic,
        "center": center,
        "center_offset": center_offset,
        "box_offset": box_offset,
        "foreground": foreground,
        "semantic_weight": semantic_weight,
        "center_weight": center_weight,
        "offset_weight": offset_weight,
        "panoptic": panoptic.astype(np.int32, copy=True),
    }


def synthetic_scene(n_segments: int, size: tuple[int, int] = (640, 800), seed: int = 0):
    """A seeded scene with exactly ``n_segments`` segments present: ~1/6 horizontal stuff bands
    (categories 100+), then things painted over them (rectangles and ellipses of 3 classes, 6..70 px radii,
    overlapping at random, the first one crowd), and a VOID strip on the left.
    Returns ``(panoptic (H, W) int32, segments)``."""
    from prn_data.records import Segment

    rng = np.random.default_rng(seed)
    h, w = size
    n_stuff = max(1, n_segments // 6)
    pan = np.full((h, w), -1, dtype=np.int32)
    bounds = np.linspace(0, h, n_stuff + 1).astype(int)
    for k in range(n_stuff):
        pan[bounds[k] : bounds[k + 1], :] = (100 + k) * 1000
    pan[:, :6] = -1
    yy, xx = np.mgrid[0:h, 0:w]
    counters: dict[int, int] = {}
    first = None

    def paint(k: int) -> None:
        nonlocal first
        cat = 1 + k % 3
        counters[cat] = counters.get(cat, 0) + 1
        sid = cat * 1000 + counters[cat]
        first = sid if first is None else first
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(6, 70, size=2)
        if k % 2:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        pan[mask] = sid

    k = 0
    for k in range(n_segments - n_stuff):
        paint(k)
    # Painting adds at most one id and may hide others: top up one at a time to the exact count.
    while (n_present := len(np.unique(pan)) - 1) < n_segments:
        k += 1
        paint(k)
    assert n_present == n_segments
    segs = []
    for sid in np.unique(pan).tolist():
        if sid < 0:
            continue
        cat = sid // 1000
        thing = cat < 100
        segs.append(Segment(sid, cat, cat - 1 if thing else 3 + cat - 100, thing, sid == first))
    return pan, segs


def coco_scenes(canvas: tuple[int, int] = (640, 800)):
    """The shipped COCO samples resized by the paper's §4.2 policy (via ``open_dataset`` and
    ``prn_data.resize``), each as resized and placed on a VOID-padded 640×800 canvas, as
    ``(name, panoptic, segments)``."""
    from prn_data.datasets import open_dataset
    from prn_data.records import VOID
    from prn_data.resize import ResizePolicy, resize_sample

    ds = open_dataset(f"coco:{REPO / 'prn_data' / 'samples' / 'coco'}", "val2017")
    out = []
    for i in range(len(ds)):
        s = resize_sample(ds.load(i), ResizePolicy())
        out.append((f"coco {s.image_id}", s.panoptic, s.segments))
        pad = np.full(canvas, VOID, dtype=np.int32)
        hh, ww = min(canvas[0], s.size[0]), min(canvas[1], s.size[1])
        pad[:hh, :ww] = s.panoptic[:hh, :ww]
        out.append((f"coco {s.image_id} padded", pad, [g for g in s.segments if (pad == g.id).any()]))
    return out


def _time_pair(fast, slow, repeat: int) -> tuple[list[float], list[float], list[float], list[float]]:
    """Run ``fast`` and ``slow`` alternately ``repeat`` times (after a warm-up of each), so that both see
    the same machine load; returns their wall and CPU (this process) times in ms."""
    fast(), slow()
    out: tuple[list[float], ...] = ([], [], [], [])
    for _ in range(repeat):
        for fn, wall, cpu in ((fast, out[0], out[1]), (slow, out[2], out[3])):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall.append(1000 * (time.perf_counter() - t0))
            cpu.append(1000 * (time.process_time() - c0))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args(argv)
    from prn_data.targets import TargetParams, compute_targets

    scenes = coco_scenes()
    for n in (30, 100):
        pan, segs = synthetic_scene(n, seed=n)
        scenes.append((f"synthetic {n}", pan, segs))
    params = TargetParams()
    print(f"numpy {np.__version__}; one thread; {args.repeat} alternating runs of each; ms per image as "
          "median wall / min wall / median CPU; ratio = median over runs of per-segment / vectorised CPU time")
    print(f"{'scene':<22} {'size':>8} {'segs':>4} | {'vectorised':^20} | {'per-segment':^20} | ratio")
    med = lambda v: float(np.median(v))  # noqa: E731
    for name, pan, segs in scenes:
        a = compute_targets(pan, segs, params)
        b = reference_targets(pan, segs)
        for k in a:  # a benchmark of a wrong result is worthless
            if not np.array_equal(a[k], b[k]):
                sys.exit(f"{name}: {k} differs between the generators")
        vw, vc, rw, rc = _time_pair(
            lambda: compute_targets(pan, segs, params), lambda: reference_targets(pan, segs), args.repeat
        )
        ratio = med(np.array(rc) / np.array(vc))
        size = f"{pan.shape[0]}x{pan.shape[1]}"
        print(
            f"{name:<22} {size:>8} {len(segs):>4} | {med(vw):6.2f} {min(vw):6.2f} {med(vc):6.2f} |"
            f" {med(rw):6.1f} {min(rw):6.1f} {med(rc):6.1f} | {ratio:4.1f}x"
        )

if __name__ == "__main__":
    main()
