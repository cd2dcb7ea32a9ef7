"""PPGBF + merge time per 640×800 image against Panoptic-DeepLab-style grouping, in one process.

A synthetic scene of N instances (random ellipses of 2 thing classes over 3 stuff classes) gives ideal
head outputs through :func:`prn_data.targets.compute_targets`; light noise is added to the offsets so the
box gate and the fallback search do real work. Timed on the same tensors:

- ``ppgbf+merge``: :func:`prn_model.merge.postprocess` (what ``prn evaluate`` runs);
- ``pdl+merge``: the same with ``grouping="panoptic_deeplab"``;
- ``baseline ...``: the same two with the implementation before the speed-up, read from git history
  (``--baseline-rev``, default commit cf89146) into a temporary package, so no copy of old code lives in the
  tree (every configuration's output is asserted identical to it: panoptic map and segments);
- ``pdl-reference grouping``: grouping as Panoptic-DeepLab's reference code does it, one ``K × HW``
  distance tensor over all pixels followed by an argmin (grouping only, no merge).

Usage: ``python benchmarks/postprocess.py [--centers 100] [--classes 133] [--device cpu|cuda]
[--threads 1] [--repeat 10] [--no-reference] [--busy N] [--no-oversubscription]``. Prints ms per image and
the ratios.

Then **thread oversubscription** (README "Parallelism"): ``ppgbf+merge`` wall ms per image at 1 and 2 torch
threads and at the default of ``prn evaluate`` / ``prn refine`` (:func:`prn_model.devices.resolve_threads`),
first on the machine as it is, then while ``--busy`` processes (default: one per core) spin on the CPU —
started by this script and killed at its end. Each is the median of ``--repeat`` interleaved rounds, with its
ratio to the one-thread figure under the same load. Goal: the default never worse than one thread.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prn_data.records import Category, CategorySet, Segment
from prn_data.targets import compute_targets
from prn_model.merge import postprocess
from prn_model.ppgbf import PostProcessConfig

BASELINE_REV = "cf89146"  # prn_model.ppgbf / merge before the speed-up


def load_baseline(rev: str):
    """``postprocess`` of ``prn_model/{ppgbf,merge}.py`` at git revision ``rev``, imported from a temporary
    package ``postprocess_baseline``."""
    repo = Path(__file__).resolve().parents[1]
    pkg = Path(tempfile.mkdtemp()) / "postprocess_baseline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("ppgbf", "merge"):
        src = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:prn_model/{name}.py"],
                             check=True, capture_output=True, text=True).stdout
        (pkg / f"{name}.py").write_text(src)
    sys.path.insert(0, str(pkg.parent))
    return importlib.import_module("postprocess_baseline.merge").postprocess


def synthetic_outputs(h: int, w: int, n: int, num_classes: int, seed: int = 0):
    """Ideal PRN outputs (with noisy offsets) of a random scene: returns ``(outputs, categories)``."""
    rng = np.random.default_rng(seed)
    cats = CategorySet([Category(i + 1, f"c{i}", i < num_classes // 2, i) for i in range(num_classes)])
    things = [c for c in cats if c.isthing]
    stuff = [c for c in cats if not c.isthing]
    pan = np.full((h, w), stuff[0].id * 1000, np.int32)
    pan[: h // 3] = stuff[1].id * 1000
    pan[h // 3 : h // 2, : w // 2] = stuff[2].id * 1000
    segs = {stuff[i].id * 1000: Segment(stuff[i].id * 1000, stuff[i].id, stuff[i].train_id, False) for i in range(3)}
    yy, xx = np.mgrid[0:h, 0:w]
    k = 0
    while k < n:
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(10, 45), rng.uniform(10, 45)
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        if m.sum() < 200:
            continue
        c = things[k % len(things)]
        sid = c.id * 1000 + k + 1
        pan[m] = sid
        segs[sid] = Segment(sid, c.id, c.train_id, True)
        k += 1
    present = set(np.unique(pan).tolist())
    t = compute_targets(pan, [s for i, s in segs.items() if i in present])
    sem = t["semantic"][::4, ::4].astype(np.int64)
    logits = rng.normal(0, 0.5, (num_classes,) + sem.shape).astype(np.float32)
    np.put_along_axis(logits, sem[None], 4.0, axis=0)
    noise = rng.normal(0, 1.0, (6, h, w)).astype(np.float32)
    outputs = {
        "semantic": torch.from_numpy(logits)[None],
        "center": torch.from_numpy(t["center"])[None],
        "center_offset": torch.from_numpy(t["center_offset"] + noise[:2])[None],
        "box_offset": torch.from_numpy(np.abs(t["box_offset"] + noise[2:]))[None],
        "foreground": torch.from_numpy(t["foreground"].astype(np.float32) * 8 - 4)[None, None],
    }
    return outputs, cats


def reference_grouping(center: torch.Tensor, offsets: torch.Tensor, thing: torch.Tensor, threshold=0.2, kernel=7, top_k=200):
    """Panoptic-DeepLab's reference grouping: max-pool NMS, then one ``(K, H·W)`` distance tensor over
    every pixel (its layout: centers (K, 1, 2) minus pixel targets (1, H·W, 2), norm over the last axis)."""
    heat = center[0, 0]
    pooled = F.max_pool2d(center, kernel, 1, kernel // 2)[0, 0]
    heat = torch.where(heat == pooled, heat, torch.full_like(heat, -1))
    heat = torch.where(heat > threshold, heat, torch.full_like(heat, -1))
    yx = torch.nonzero(heat > 0)
    if yx.shape[0] > top_k:
        kth = torch.topk(heat.flatten(), top_k).values[-1]
        yx = torch.nonzero(heat > kth)
    H, W = heat.shape
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    loc = (torch.stack([ys, xs]) + offsets[0]).reshape(2, -1).t()[None]
    dist = torch.norm(yx.float()[:, None, :] - loc, dim=-1)
    ids = dist.argmin(0).reshape(H, W) + 1
    return ids * thing


def timed(fn, repeat: int, sync) -> tuple[float, float]:
    """``(wall ms, CPU ms)`` per call. With one thread the CPU time is what one core spends, which stays
    meaningful on a machine shared with other work (wall time then also counts waiting for a core)."""
    fn()
    sync()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - w0) / repeat * 1000, (time.process_time() - c0) / repeat * 1000


def busy_processes(n: int) -> list[subprocess.Popen]:
    """``n`` processes that spin on the CPU until killed (the concurrent load of the oversubscription rows)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def oversubscription(outputs, cats, repeat: int, busy: int, sync) -> None:
    """Print ``ppgbf+merge`` wall ms per image at 1 and 2 threads and at prn's default, idle and under ``busy``
    spinning processes; rounds interleaved (one call per thread count per round), medians."""
    from prn_model.devices import resolve_threads

    default = resolve_threads()
    counts = sorted({1, 2, default})
    cfg = PostProcessConfig(stuff_area=2048, semantic_upsample="bilinear", grouping="ppgbf")
    before = torch.get_num_threads()
    print(f"\nthread oversubscription: ppgbf+merge (bilinear semantic), wall ms per image, median of {repeat} "
          f"interleaved rounds; prn's default = {default} thread(s)")
    for load in (0, busy):
        procs = busy_processes(load)
        try:
            times: dict[int, list[float]] = {n: [] for n in counts}
            for n in counts:  # warm-up: each count's thread pool and first-touch memory
                torch.set_num_threads(n)
                postprocess(outputs, cats, cfg)
            for _ in range(repeat):
                for n in counts:
                    torch.set_num_threads(n)
                    t0 = time.perf_counter()
                    postprocess(outputs, cats, cfg)
                    sync()
                    times[n].append(1000 * (time.perf_counter() - t0))
        finally:
            for p in procs:
                p.kill()
                p.wait()
        med = {n: float(np.median(v)) for n, v in times.items()}
        where = "no added load" if load == 0 else f"+{load} busy process(es)"
        cells = "   ".join(f"{n} thread(s) {med[n]:7.1f} ms (×{med[n] / med[1]:.2f})" for n in counts)
        print(f"  {where:28s} {cells}   load average {os.getloadavg()[0]:.1f}")
        print(f"  {'':28s} default ({default}) / one thread = {med[default] / med[1]:.2f}")
    torch.set_num_threads(before)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--centers", type=int, default=100)
    ap.add_argument("--classes", type=int, default=133)
    ap.add_argument("--size", type=int, nargs=2, default=(640, 800))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the baseline implementation")
    ap.add_argument("--no-reference", action="store_true", help="skip the (slow) K x HW reference grouping")
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 1,
                    help="spinning processes of the oversubscription rows' concurrent load (default: one per core)")
    ap.add_argument("--no-oversubscription", action="store_true", help="skip the 1 / 2 threads under load rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    outputs, cats = synthetic_outputs(*args.size, args.centers, args.classes)
    outputs = {k: v.to(dev) for k, v in outputs.items()}
    thing_map = torch.zeros_like(outputs["center"][0, 0], dtype=torch.long)
    thing_map[outputs["foreground"][0, 0] > 0] = 1

    try:
        baseline_postprocess = load_baseline(args.baseline_rev)
    except (OSError, subprocess.CalledProcessError) as exc:  # a copy of the tree without git history
        print(f"baseline {args.baseline_rev} not readable from git ({type(exc).__name__}): baseline rows skipped")
        baseline_postprocess = None

    rows = []
    for up in ("bilinear", "nearest"):
        for grouping, name in (("ppgbf", "ppgbf+merge"), ("panoptic_deeplab", "pdl+merge")):
            cfg = PostProcessConfig(stuff_area=2048, semantic_upsample=up, grouping=grouping)
            (pan, segs), = postprocess(outputs, cats, cfg)
            n_inst = sum(s.isthing for s in segs)
            ms = timed(lambda: postprocess(outputs, cats, cfg), args.repeat, sync)
            if baseline_postprocess is None:
                rows.append((f"{name} ({up} semantic)", ms, n_inst, None))
                continue
            (bpan, bsegs), = baseline_postprocess(outputs, cats, cfg)
            assert np.array_equal(pan, bpan) and segs == bsegs, f"{name} ({up}) differs from the baseline"
            base = timed(lambda: baseline_postprocess(outputs, cats, cfg), args.repeat, sync)
            rows.append((f"{name} ({up} semantic)", ms, n_inst, base))
            rows.append((f"  baseline {name} ({up})", base, n_inst, base))
    ms_ref = None
    if not args.no_reference:
        ms_ref = timed(lambda: reference_grouping(outputs["center"], outputs["center_offset"], thing_map), max(1, args.repeat // 2), sync)

    print(f"device={dev} threads={torch.get_num_threads()} size={tuple(args.size)} centers={args.centers} classes={args.classes}")
    print(f"{'':36s} {'wall ms':>9s} {'CPU ms':>9s}  (per image; outputs identical to the baseline)")
    for name, (wall, cpu), n, base in rows:
        ref = "" if ms_ref is None else f"  reference/this (CPU) = {ms_ref[1] / cpu:6.2f}x"
        vs = "" if base is None else f"  baseline/this (CPU) = {base[1] / cpu:5.2f}x"
        print(f"{name:36s} {wall:9.1f} {cpu:9.1f}  instances={n:4d}{vs}{ref}")
    if ms_ref is not None:
        print(f"{'pdl-reference grouping (K x HW)':36s} {ms_ref[0]:9.1f} {ms_ref[1]:9.1f}  centers={args.centers}")
    if not args.no_oversubscription:
        oversubscription(outputs, cats, args.repeat, args.busy, sync)


if __name__ == "__main__":
    main()
