"""``prn evaluate``'s inference loop (:func:`prn_model.evaluate.predict`: store read, network, PPGBF + merge)
per image, with the next batch read by a thread (``prefetch``) against reading it in line, alternating in
one process on the same store and checkpoint.

Usage: ``python benchmarks/predict.py --store cache/demo/val.zarr --checkpoint cache/demo/run/model.pt
[--device cuda] [--batch 1 4] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from prn_data.store import open_store
from prn_model.checkpoint import load_checkpoint
from prn_model.devices import resolve_device
from prn_model.evaluate import predict


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="cache/demo/val.zarr")
    ap.add_argument("--checkpoint", default="cache/demo/run/model.pt")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    dev = resolve_device(args.device)
    store = open_store(args.store)
    model, _ = load_checkpoint(args.checkpoint, dev)
    idx = [i for i in range(len(store)) if store.done[i]][: args.limit]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    list(predict(model, store, idx[: max(args.batch)], device=dev, batch=max(args.batch)))  # warm-up
    print(f"{args.store}: {len(idx)} images, canvas {tuple(store.attrs['canvas'])}, device {dev}, "
          f"torch threads {torch.get_num_threads()}")
    for b in args.batch:
        for r in range(args.rounds):
            ms = {}
            for pf in (False, True):
                sync()
                t0 = time.perf_counter()
                n = sum(1 for _ in predict(model, store, idx, device=dev, batch=b, prefetch=pf))
                sync()
                ms[pf] = 1000 * (time.perf_counter() - t0) / n
            print(f"batch {b} round {r + 1}: read in line {ms[False]:7.2f} ms/image, reader thread {ms[True]:7.2f} "
                  f"(x{ms[False] / ms[True]:.2f})", flush=True)


if __name__ == "__main__":
    main()
