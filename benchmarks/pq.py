"""PQ speed: prn_data.pq.pq_compute against cityscapesscripts' evaluatePanoptic (a line-for-line port of
panopticapi's pq_compute) on the same files, in one process, and a check that every figure agrees.

The files: the COCO sample's ground truth repeated ``--copies`` times (distinct image ids, the same PNGs)
and a perturbed prediction of it (tests/test_pq.py's perturbation). evaluatePanoptic runs its own
multiprocessing pool over all cores; ours runs ``--workers`` threads (default: all cores, at most 8).

Also timed on one core each (CPU time): ours with one thread, and cityscapesscripts' per-process worker
``pq_compute_single_core`` called directly, so pool start-up and the shared machine's load do not enter.

Usage: ``python benchmarks/pq.py [--copies 50] [--workers N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic, pq_compute_single_core

from prn_data.pq import pq_compute
from prn_data.testing import perturb, repeat_images

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=50)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    sample = REPO / "prn_data" / "samples" / "coco" / "annotations"
    gt = json.loads((sample / "panoptic_val2017.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pred = json.loads(perturb(gt, sample / "panoptic_val2017", tmp, seed=0).read_text())
        big_gt, big_pred = repeat_images(gt, args.copies), repeat_images(pred, args.copies)
        (tmp / "gt.json").write_text(json.dumps(big_gt))
        (tmp / "pred_big.json").write_text(json.dumps(big_pred))
        n = len(big_gt["annotations"])
        files = (tmp / "gt.json", sample / "panoptic_val2017", tmp / "pred_big.json", tmp / "pred")

        # One core each (CPU time): ours in one thread, theirs' per-process worker called directly.
        pq_compute(*files, workers=1)  # warm-up: this thread's id lookup table
        c0 = time.process_time()
        pq_compute(*files, workers=1)
        c_ours = time.process_time() - c0
        cats = {c["id"]: c for c in big_gt["categories"]}
        preds = {a["image_id"]: a for a in big_pred["annotations"]}
        pairs = [(g, preds[g["image_id"]]) for g in big_gt["annotations"]]
        c0 = time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):
            pq_compute_single_core(0, pairs, str(files[1]), str(files[3]), cats)
        c_theirs = time.process_time() - c0

        t0 = time.perf_counter()
        ours = pq_compute(*files, workers=args.workers)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            theirs = evaluatePanoptic(*(str(f) for f in files), str(tmp / "r.json"))
        t_theirs = time.perf_counter() - t0

    worst = 0.0
    for k in ("All", "Things", "Stuff"):
        assert ours[k]["n"] == theirs[k]["n"]
        worst = max(worst, *(abs(ours[k][f] - float(theirs[k][f])) for f in ("pq", "sq", "rq")))
    for c, v in theirs["per_class"].items():
        worst = max(worst, *(abs(ours["per_class"][c][f] - float(v[f])) for f in ("pq", "sq", "rq")))
    print(f"{n} images (COCO sample x{args.copies}), {os.cpu_count()} cores")
    print(f"prn pq_compute          {n / t_ours:8.1f} images/s  ({1000 * t_ours / n:6.1f} ms/image)")
    print(f"cityscapes evaluatePan. {n / t_theirs:8.1f} images/s  ({1000 * t_theirs / n:6.1f} ms/image)")
    print(f"one core, CPU ms/image: prn {1000 * c_ours / n:.2f}, cityscapesscripts {1000 * c_theirs / n:.2f} "
          f"(speed-up {c_theirs / c_ours:.2f}x)")
    print(f"speed-up {t_theirs / t_ours:.2f}x; largest difference over every figure: {worst:.2e}")
    print(f"PQ {100 * ours['All']['pq']:.3f} SQ {100 * ours['All']['sq']:.3f} RQ {100 * ours['All']['rq']:.3f}")


if __name__ == "__main__":
    main()
