"""Packing a store into one zip: STORED vs DEFLATED members (README "Sharing stores").

Prints, for one built store, the zip's size relative to the store folder, the time to pack, and the time
to read every sample back (``Store.read_sample``) from the folder and from each zip, as ratios against the
folder read measured in this same process. Not run by CI.

    .venv/bin/python benchmarks/share.py                 # builds the shipped COCO sample (simulated base)
    .venv/bin/python benchmarks/share.py --store PATH    # any built store folder
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prn_data.share import pack
from prn_data.store import open_store

REPO = Path(__file__).resolve().parents[1]


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _read_all(url: str, repeats: int) -> float:
    """Best-of-``repeats`` seconds to open the store and decode every done sample."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        st = open_store(url, mode="r")
        for i in range(len(st)):
            if st.done[i]:
                st.read_sample(i)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, help="a built store folder (default: build the COCO sample)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = args.store
        if store is None:
            store = tmp / "coco.zarr"
            subprocess.run(
                [str(Path(sys.executable).parent / "prn"), "build", f"coco:{REPO / 'prn_data/samples/coco'}",
                 "--split", "val2017", "--base", "simulated", "--out", str(store), "--scheduler", "threads",
                 "--workers", "1", "--shard-size", "2"],
                check=True, capture_output=True,
            )
        folder = _dir_bytes(store)
        t_dir = _read_all(str(store), args.repeats)
        print(f"store {store}: {folder / 1e6:.2f} MB in folder; read all samples {t_dir:.3f} s (baseline 1.00)")
        for comp in ("stored", "deflated"):
            z = tmp / f"{comp}.zip"
            t = time.perf_counter()
            pack(store, z, compression=comp)
            t_pack = time.perf_counter() - t
            t_read = _read_all(str(z), args.repeats)
            print(f"  {comp:8s}: zip size / folder {z.stat().st_size / folder:.3f}, pack {t_pack:.2f} s, "
                  f"read all / folder read {t_read / t_dir:.2f}")


if __name__ == "__main__":
    main()
