"""Benchmark of the training data path: samples/s read from a store vs computed on the fly.

    .venv/bin/python benchmarks/loader.py [--batches 10] [--batch-size 4] [--workers 0 1 2]

Data: the two shipped COCO val2017 images (``prn_data/samples/coco``) built into a temporary store with the
``simulated`` base network and the DESIGN §3 resize policy (534×800 and 450×800 samples on a 544×800 canvas,
133-class base probabilities at 1/4). The loader cycles over them, so each batch re-reads and re-decodes.

Two ways to produce the same training samples (padded canvas, flip + GridMask, collated Batch):

1. **store** — :class:`prn_model.data.StoreDataset` (decode the stored chunks); also with
   ``decode="device"`` (workers ship the stored integer codes; the trainer decodes them on the GPU);
2. **on the fly** — what Panoptic-DeepLab's loaders do per sample: decode the JPEG and the panoptic PNG,
   resize, generate the targets and the base network's inputs (``prn_data.build.make_sample``), pad.

Each runs in the same process through the same DataLoader (``forkserver`` workers, collate in the worker)
for every worker count; the first batch (worker start-up) is not timed. Prints samples/s, samples/s per
worker, and the ratio store / on-the-fly at equal worker counts (goal ≥ 5×; ≥ 30 samples/s per worker);
with 0 workers also the CPU time per sample of each way (process time, robust to other load on the machine).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
COCO = REPO / "prn_data" / "samples" / "coco"


class OnTheFlyDataset:
    """The on-the-fly way: every sample recomputed from the dataset files (keys as StoreDataset's)."""

    def __init__(self, spec: str, split: str, base: str, canvas: tuple[int, int], augment_cfg, seed: int = 0):
        self.spec, self.split, self.base_spec, self.canvas = spec, split, base, canvas
        self.augment_cfg, self.seed = augment_cfg, seed
        self._ds = self._base = None
        from prn_data.datasets import open_dataset

        self.n = len(open_dataset(spec, split))

    def __len__(self) -> int:
        return self.n

    def __getstate__(self):
        return dict(self.__dict__, _ds=None, _base=None)

    def __getitem__(self, key: int) -> dict:
        from prn_data.base import open_base
        from prn_data.build import make_sample
        from prn_data.datasets import open_dataset
        from prn_data.resize import ResizePolicy
        from prn_data.targets import TargetParams
        from prn_model.augment import augment
        from prn_model.data import sample_from_store

        if self._ds is None:
            self._ds = open_dataset(self.spec, self.split)
            self._base = open_base(self.base_spec, self._ds.categories)
        epoch, i = divmod(int(key), self.n)
        maps, meta = make_sample(self._ds, self._base, i, ResizePolicy(), TargetParams(), len(self._ds.categories))
        h, w = meta["size"]
        H, W = self.canvas
        raw = {"size": (h, w)}
        for k, v in maps.items():
            v = np.asarray(v)
            if k == "image":
                v = v.transpose(2, 0, 1)
            quarter = k == "base/semantic"
            shape = v.shape[:-2] + ((H // 4, W // 4) if quarter else (H, W))
            fill = -1 if k.endswith("panoptic") else (255 if k == "gt/semantic" else 0)
            out = np.full(shape, fill, dtype=v.dtype)
            out[..., : v.shape[-2], : v.shape[-1]] = v
            raw[k] = out
        sample = sample_from_store(raw, i)
        return augment(sample, self.augment_cfg, np.random.default_rng([self.seed, epoch, i]))


def measure(dataset, batch_size: int, workers: int, batches: int) -> tuple[float, float]:
    """``(samples/s, CPU ms per sample of this process)`` over ``batches`` batches after one untimed
    warm-up batch (the CPU figure covers all the work only when ``workers == 0``)."""
    from prn_model.data import TrainSampler, make_loader

    loader = make_loader(dataset, batch_size, TrainSampler(len(dataset), seed=0), num_workers=workers)
    it = iter(loader)
    next(it)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        b = next(it)
        assert b["image"].shape[0] == batch_size
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    del it
    n = batches * batch_size
    return n / dt, 1000 * cpu / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--fly-batches", type=int, default=3, help="timed batches for the (slow) on-the-fly way")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--store", help="an existing store to read instead of building the COCO sample")
    args = ap.parse_args()

    from prn_model.augment import AugmentConfig
    from prn_model.data import StoreDataset, collate, decode_batch

    aug = AugmentConfig()  # flip 0.5, GridMask 0.5: the paper's training augmentation, identical for both
    with tempfile.TemporaryDirectory() as tmp:
        url = args.store
        if url is None:
            from prn_data.build import BuildConfig, build

            url = str(Path(tmp) / "coco.zarr")
            res = build(BuildConfig(dataset=f"coco:{COCO}", split="val2017", base="simulated", out=url,
                                    scheduler="threads", workers=1))
            assert res.ok, res.failures
        store_ds = StoreDataset(url, aug)
        coded_ds = StoreDataset(url, aug, decode="device")
        fly_ds = OnTheFlyDataset(f"coco:{COCO}", "val2017", "simulated", store_ds.canvas, aug)
        print(f"store {url}: {len(store_ds)} samples, canvas {store_ds.canvas}, {store_ds.num_classes} classes, "
              f"batch {args.batch_size}")
        print(f"{'workers':>7} {'store s/s':>10} {'per worker':>10} {'on-the-fly s/s':>15} {'ratio':>7}"
              f" {'store CPU ms':>13} {'fly CPU ms':>11} {'CPU ratio':>9}")
        for w in args.workers:
            s, sc = measure(store_ds, args.batch_size, w, args.batches)
            f, fc = measure(fly_ds, args.batch_size, w, args.fly_batches)
            cpu = f" {sc:>13.1f} {fc:>11.1f} {fc / sc:>8.1f}×" if w == 0 else ""
            print(f"{w:>7} {s:>10.1f} {s / max(w, 1):>10.1f} {f:>15.2f} {s / f:>6.1f}×{cpu}", flush=True)
        print("data.decode: device — workers ship the stored codes, the trainer decodes them on its device:")
        for w in args.workers:
            s, sc = measure(coded_ds, args.batch_size, w, args.batches)
            f, fc = measure(fly_ds, args.batch_size, w, args.fly_batches)
            cpu = f" {sc:>13.1f} {fc:>11.1f} {fc / sc:>8.1f}×" if w == 0 else ""
            print(f"{w:>7} {s:>10.1f} {s / max(w, 1):>10.1f} {f:>15.2f} {s / f:>6.1f}×{cpu}", flush=True)
        batch = collate([coded_ds[k] for k in range(args.batch_size)])
        t0 = time.process_time()
        for _ in range(3):
            decode_batch(batch, coded_ds.decode_spec)
        ms = 1000 * (time.process_time() - t0) / (3 * args.batch_size)
        print(f"decoding those codes on the CPU instead: {ms:.1f} ms per sample (on a GPU: part of the step)")

if __name__ == "__main__":
    main()
