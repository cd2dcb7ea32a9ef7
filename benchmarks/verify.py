"""``prn verify``'s checksum pass: threads vs one thread (issue 5). Not run by CI.

Prints seconds per sample with 1 thread (the baseline, measured in this same process) and the speed-up with
2 and 4 threads, on a built store (default: builds ``synthetic:16`` with the simulated base).

    .venv/bin/python benchmarks/verify.py [--store PATH]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from prn_data.verify import verify_store

    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            store = Path(tmp) / "syn.zarr"
            subprocess.run(
                [str(Path(sys.executable).parent / "prn"), "build", "synthetic:16", "--split", "val", "--base",
                 "simulated", "--out", str(store), "--scheduler", "threads", "--workers", "2", "--shard-size", "8"],
                check=True, capture_output=True,
            )
        verify_store(str(store), workers=1)  # warm the page cache and imports
        times = {}
        # Interleaved rounds, best of each: the 2 shared cores make single timings noisy.
        for _ in range(args.repeats):
            for w in (1, 2, 4):
                t = time.perf_counter()
                rep = verify_store(str(store), workers=w)
                times[w] = min(times.get(w, float("inf")), time.perf_counter() - t)
                assert rep.ok, rep.to_json()
        n = rep.n_samples
        print(f"{store}: {n} samples; 1 thread {times[1] / n * 1000:.0f} ms/sample (baseline 1.00), best of {args.repeats}")
        for w in (2, 4):
            print(f"  {w} threads: speed-up {times[1] / times[w]:.2f}×")


if __name__ == "__main__":
    main()
