"""PQ speed on one core: prn's scorer (``prn pq`` on files, and ``prn evaluate``'s in-memory scorer) against
hotcoco (Rust, when installed: the ``bench`` extra) and cityscapesscripts' ``pq_compute_single_core`` (a
line-for-line port of panopticapi's per-process worker), on the same pairs, in one process, with a check
of every figure.

The pairs: the COCO sample's ground truth repeated ``--copies`` times (distinct integer image ids, the same
PNGs) and a perturbed prediction of it (tests/test_pq.py's perturbation). Each scorer runs on one core and
is timed in CPU time per image (hotcoco with ``RAYON_NUM_THREADS=1``); the scorers are interleaved over
``--rounds`` rounds and the medians printed, with the median of the per-round ratios to hotcoco.

- ``prn files``: :func:`prn_data.pq.pq_compute` with one worker (two PNG decodes per image), with every
  fast path installed here (kornia-rs's decoder, numba's pair count: the ``fast`` extra).
- ``files, numpy``: the same with the pair count in numpy (numba not used); ``files, plain``: neither
  extra (libspng decodes, numpy counts), as a bare ``pip install prn`` runs.
- ``prn in memory``: :class:`prn_model.scoring.StreamedScorer` with one worker, ground truth read from the
  PNGs, predictions handed over as ``int32`` maps (VOID = −1) at the original size, nothing written: what
  ``prn evaluate`` does per image besides resizing and writing (one PNG decode per image).

``--all-cores`` also times the whole of both with their default parallelism (wall clock): ours in threads,
cityscapesscripts' ``evaluatePanoptic`` with its process pool.

Usage: ``python benchmarks/pq.py [--copies 50] [--rounds 5] [--all-cores]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # hotcoco on one core, like the others; before it loads

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import average_pq, evaluatePanoptic, pq_compute_single_core

from prn_data import panoptic_io, pq_kernel
from prn_data.datasets import open_dataset
from prn_data.panoptic_io import read_rgb_ids
from prn_data.pq import pq_compute
from prn_data.records import Segment
from prn_data.testing import perturb
from prn_model.scoring import GroundTruth, StreamedScorer

try:
    from hotcoco import panoptic as hotcoco_panoptic
except ImportError:
    hotcoco_panoptic = None

REPO = Path(__file__).resolve().parents[1]


def numbered(coco: dict, copies: int) -> dict:
    """``coco`` with its annotations (and images) repeated ``copies`` times under distinct integer image ids
    (hotcoco wants integers; :func:`prn_data.testing.repeat_images` makes strings)."""
    anns = [dict(a, image_id=int(a["image_id"]) * copies + c) for c in range(copies) for a in coco["annotations"]]
    images = [dict(i, id=int(i["id"]) * copies + c) for c in range(copies) for i in coco.get("images", [])]
    return dict(coco, annotations=anns, images=images)


@contextlib.contextmanager
def quiet():
    """Silence stdout, Python's and the process's file descriptor 1 (hotcoco prints from Rust)."""
    with contextlib.redirect_stdout(io.StringIO()):
        saved = os.dup(1)
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def cpu_ms(fn: Callable[[], object], n: int) -> tuple[float, object]:
    """CPU milliseconds per image of one call of ``fn`` over ``n`` images, and its result."""
    c0 = time.process_time()
    res = fn()
    return 1000 * (time.process_time() - c0) / n, res


def worst(a: dict, b: dict) -> float:
    """Largest absolute difference over All/Things/Stuff pq, sq, rq and every class's (n must agree)."""
    out = 0.0
    for k in ("All", "Things", "Stuff"):
        assert a[k]["n"] == b[k]["n"], (k, a[k]["n"], b[k]["n"])
        out = max(out, *(abs(a[k][f] - float(b[k][f])) for f in ("pq", "sq", "rq")))
    for c, v in b["per_class"].items():
        if all(v[f] == -1.0 for f in ("pq", "sq", "rq")):
            v = dict.fromkeys(("pq", "sq", "rq"), 0.0)  # hotcoco's "nothing to score", panopticapi's zeros
        out = max(out, *(abs(a["per_class"][int(c)][f] - float(v[f])) for f in ("pq", "sq", "rq")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--all-cores", action="store_true")
    args = ap.parse_args()
    sample = REPO / "prn_data" / "samples" / "coco" / "annotations"
    gt_dir = sample / "panoptic_val2017"
    gt = json.loads((sample / "panoptic_val2017.json").read_text())
    cats = open_dataset(f"coco:{sample.parent}", "val2017").categories
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pred = json.loads(perturb(gt, gt_dir, tmp, seed=0).read_text())
        big_gt, big_pred = numbered(gt, args.copies), numbered(pred, args.copies)
        (tmp / "gt.json").write_text(json.dumps(big_gt))
        (tmp / "pred_big.json").write_text(json.dumps(big_pred))
        n = len(big_gt["annotations"])
        files = (tmp / "gt.json", gt_dir, tmp / "pred_big.json", tmp / "pred")

        # the in-memory scorer's inputs: predictions decoded beforehand, as post-processing hands them over
        held = {}
        for a in pred["annotations"]:
            m = read_rgb_ids(tmp / "pred" / a["file_name"])
            held[a["image_id"]] = (np.where(m == 0, -1, m), [Segment.from_json(s, cats) for s in a["segments_info"]])
        by_id = {str(a["image_id"]): a for a in big_gt["annotations"]}
        truth = GroundTruth("original", "bench", json=files[0], png_dir=gt_dir, annotations=by_id)

        def in_memory() -> dict:
            ev = StreamedScorer(truth, cats, ("pred",), workers=1)
            try:
                for a in big_pred["annotations"]:
                    pan, segs = held[int(a["image_id"]) // args.copies]
                    h, w = pan.shape
                    ev.add({"image_id": a["image_id"], "file_name": a["file_name"], "orig_size": (h, w)},
                           {"pred": (pan, segs)})
                return ev.finish()["pred"]
            finally:
                ev.close()

        cs_cats = {c["id"]: c for c in big_gt["categories"]}
        preds = {a["image_id"]: a for a in big_pred["annotations"]}
        pairs = [(g, preds[g["image_id"]]) for g in big_gt["annotations"]]

        def cityscapes() -> dict:
            with quiet():
                stat = pq_compute_single_core(0, pairs, str(gt_dir), str(files[3]), cs_cats)
            return average_pq(stat, cs_cats)

        def hotcoco() -> dict:
            with quiet():
                return hotcoco_panoptic.pq_compute(str(files[0]), str(files[2]), str(gt_dir), str(files[3]))

        def without(numba: bool = True, kornia: bool = False) -> Callable[[], dict]:
            def run() -> dict:
                saved = pq_kernel.ENABLED, panoptic_io.kornia_io
                pq_kernel.ENABLED = not numba
                if kornia:
                    panoptic_io.kornia_io = None
                try:
                    return pq_compute(*files, workers=1)
                finally:
                    pq_kernel.ENABLED, panoptic_io.kornia_io = saved
            return run

        scorers: dict[str, Callable[[], dict]] = {"prn files": lambda: pq_compute(*files, workers=1),
                                                  "prn in memory": in_memory}
        if pq_kernel.available():
            scorers["files, numpy"] = without()
        if panoptic_io.kornia_io is not None or pq_kernel.available():
            scorers["files, plain"] = without(kornia=True)
        if hotcoco_panoptic is not None:
            scorers["hotcoco"] = hotcoco
        scorers["cityscapes"] = cityscapes
        results, times = {}, {k: [] for k in scorers}
        for fn in scorers.values():  # warm-up: imports, this thread's id lookup tables
            fn()
        for _ in range(args.rounds):
            for name, fn in scorers.items():
                ms, results[name] = cpu_ms(fn, n)
                times[name].append(ms)

        if args.all_cores:
            t0 = time.perf_counter()
            ours_all = pq_compute(*files)
            t_ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            with quiet():
                theirs_all = evaluatePanoptic(*(str(f) for f in files), str(tmp / "r.json"))
            t_theirs = time.perf_counter() - t0

    ours = results["prn files"]
    assert results["prn in memory"] == ours, "the in-memory scorer's figures differ from the file scorer's"
    for k in ("files, numpy", "files, plain"):
        assert results.get(k, ours) == ours, f"{k}: figures differ from the fast path's"
    decoder = "kornia-rs (png crate)" if panoptic_io.kornia_io is not None else "libspng (imagecodecs)"
    count = "numba" if pq_kernel.available() else "numpy"
    print(f"{n} images (COCO sample x{args.copies}), one core each, CPU ms / image, median of {args.rounds} rounds; "
          f"PNG decoder: {decoder}; pair count: {count}")
    ref = "hotcoco" if "hotcoco" in times else "cityscapes"
    print(f"  {'':14s} {'ms':>6s}  {ref + ' / it':>14s}  rounds")
    for name, ts in times.items():
        # the median of per-round ratios: a load that comes and goes hits both of a round alike
        ratio = statistics.median(r / t for r, t in zip(times[ref], ts))
        print(f"  {name:14s} {statistics.median(ts):6.2f}  {ratio:14.2f}  {', '.join(f'{t:.2f}' for t in ts)}")
    if "hotcoco" not in times:
        print("  hotcoco        not installed (pip install -e '.[bench]')")
    print("largest difference to prn's figures: in memory, numpy, plain 0 (asserted ==); "
          + "; ".join(f"{k} {worst(ours, results[k]):.1e}" for k in scorers if k.startswith(("hotcoco", "cityscapes"))))
    if args.all_cores:
        print(f"all cores, wall: prn {1000 * t_ours / n:.2f} ms / image, cityscapes evaluatePanoptic "
              f"{1000 * t_theirs / n:.2f} (x{t_theirs / t_ours:.2f}); largest difference {worst(ours_all, theirs_all):.1e}")
    print(f"PQ {100 * ours['All']['pq']:.3f} SQ {100 * ours['All']['sq']:.3f} RQ {100 * ours['All']['rq']:.3f}")


if __name__ == "__main__":
    main()
