"""Scoring step of ``prn evaluate``: streamed (each image written and reduced to its PQ counts as it comes,
``prn_model.scoring.StreamedScorer``) against the way it worked before (every prediction held until the end,
then all written and scored file to file with ``prn_data.pq.pq_compute``), in one process.

Two prediction sets (as base and PRN) of the COCO sample repeated ``--copies`` times at original size: two
perturbed copies of the ground truth (tests/test_pq.py's perturbation). Prints wall time per image, the peak
of Python-tracked memory (NumPy arrays included) over and above the inputs, and checks that both give the
same figures bit for bit.

Usage: ``python benchmarks/evaluate.py [--copies 50] [--workers N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from prn_data.datasets import open_dataset
from prn_data.panoptic_io import read_rgb_ids
from prn_data.pq import pq_compute
from prn_data.records import Segment
from prn_data.testing import perturb, repeat_images
from prn_model.predictions import write_panoptic
from prn_model.scoring import GroundTruth, StreamedScorer

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=50)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()

    sample = REPO / "prn_data" / "samples" / "coco" / "annotations"
    gt = json.loads((sample / "panoptic_val2017.json").read_text())
    cats = open_dataset(f"coco:{sample.parent}", "val2017").categories
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sets = {}
        for k, name in enumerate(("base", "prn")):
            pred = json.loads(perturb(gt, sample / "panoptic_val2017", tmp / name, seed=k).read_text())
            sets[name] = {
                a["image_id"]: (np.where((m := read_rgb_ids(tmp / name / "pred" / a["file_name"]).astype(np.int32)) == 0, -1, m),
                                [Segment.from_json(s, cats) for s in a["segments_info"]])
                for a in pred["annotations"]
            }
        big = repeat_images(gt, args.copies)
        (tmp / "gt.json").write_text(json.dumps(big))
        anns = {str(a["image_id"]): a for a in big["annotations"]}
        truth = GroundTruth("original", "bench", json=tmp / "gt.json", png_dir=sample / "panoptic_val2017", annotations=anns)
        n = len(big["annotations"])

        def samples():
            """The store's samples one by one, each prediction a fresh array (as post-processing makes it)."""
            for c in range(args.copies):
                for a in gt["annotations"]:
                    h, w = sets["base"][a["image_id"]][0].shape
                    meta = {"image_id": f"{a['image_id']}_{c}", "file_name": a["file_name"], "orig_size": (h, w)}
                    yield meta, {k: (v[a["image_id"]][0].copy(), v[a["image_id"]][1]) for k, v in sets.items()}

        def before(out: Path) -> dict:
            held = {k: [] for k in sets}
            for meta, preds in samples():
                for k, (pan, segs) in preds.items():
                    held[k].append((meta["image_id"], meta["file_name"], pan, segs))
            res = {}
            for k, items in held.items():
                pj = write_panoptic(out / k, items, cats)
                res[k] = pq_compute(tmp / "gt.json", truth.png_dir, pj, out / k / "panoptic", workers=args.workers, categories=cats)
            return res

        def streamed(out: Path) -> dict:
            ev = StreamedScorer(truth, cats, tuple(sets), out_dir=out, workers=args.workers)
            try:
                for meta, preds in samples():
                    ev.add(meta, preds)
                return ev.finish()
            finally:
                ev.close()

        for fn in (before, streamed):  # warm-up: imports, id lookup tables
            fn(tmp / f"warm_{fn.__name__}")
        rows = {}
        for rnd in range(2):
            for fn in (before, streamed):
                out = tmp / f"{fn.__name__}{rnd}"
                tracemalloc.start()
                t0 = time.perf_counter()
                res = fn(out)
                dt = time.perf_counter() - t0
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                rows.setdefault(fn.__name__, []).append((dt, peak, res))
    same = all(rows["before"][0][2][k] == rows["streamed"][0][2][k] for k in sets)
    workers = args.workers or min(8, os.cpu_count() or 1)
    print(f"{n} images x 2 prediction sets (COCO sample x{args.copies}, original size), {workers} scoring threads")
    for name, runs in rows.items():
        t = min(r[0] for r in runs)
        peak = max(r[1] for r in runs)
        print(f"{name:9s} {1000 * t / n:7.2f} ms/image   peak memory {peak / 2**20:8.1f} MiB")
    b, s = rows["before"], rows["streamed"]
    print(f"streamed: x{min(r[0] for r in b) / min(r[0] for r in s):.2f} faster, "
          f"peak memory /{max(r[1] for r in b) / max(r[1] for r in s):.1f}; identical figures: {same}")
    if not same:
        raise SystemExit("figures differ")


if __name__ == "__main__":
    main()
