"""``prn verify`` and ``prn stats`` reading a store (README "Command reference": `prn verify`, `prn stats`). Not run by CI.

Prints, on a built store (default: builds ``synthetic:16`` with the simulated base): ``verify``'s checksum
pass with 1 thread (the baseline, in this same process) and its speed-up with 2 and 4 threads; ``stats``
reading only the id maps and segment lists versus decoding whole samples (the baseline), one thread.

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

        import prn_data.stats as stats
        from prn_data.store import open_store

        st = open_store(str(store), mode="r")
        labels_only = stats.read_labels
        t_labels = t_full = float("inf")
        for _ in range(args.repeats):
            stats.read_labels = labels_only
            t = time.perf_counter()
            a = stats.store_stats(st, workers=1)
            t_labels = min(t_labels, time.perf_counter() - t)
            stats.read_labels = lambda s, i: s.read_sample(i)
            t = time.perf_counter()
            b = stats.store_stats(st, workers=1)
            t_full = min(t_full, time.perf_counter() - t)
        stats.read_labels = labels_only
        assert a == b
        print(f"stats: whole samples {t_full / n * 1000:.0f} ms/sample (baseline 1.00); "
              f"id maps + segments only: speed-up {t_full / t_labels:.1f}×")


if __name__ == "__main__":
    main()
