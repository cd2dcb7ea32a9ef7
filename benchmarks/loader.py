"""Benchmark of the training data path: samples/s read from a store vs computed on the fly.

    .venv/bin/python benchmarks/loader.py [--batches 10] [--fly-batches 3] [--batch-size 4] [--repeats 5]
                                          [--workers 0 1 2] [--integrity-repeats 15]

Data: the two shipped COCO val2017 images (``prn_data/samples/coco``) built into a temporary store with the
``simulated`` base network and the default resize policy (README "Conventions") (534×800 and 450×800 samples on a 544×800 canvas,
133-class base probabilities at 1/4). The loader cycles over them, so each batch re-reads and re-decodes.

Two ways to produce the same training samples (padded canvas, flip + GridMask, collated Batch):

1. **store** — :class:`prn_model.data.StoreDataset` through :func:`prn_model.data.make_loader` (read and
   decompress the stored codes, augment them, decode them into the batch through the store's decoder); also with ``decode="device"``
   (workers ship the stored integer codes; the trainer decodes them on its device — the CPU cost of that
   decode is printed separately);
2. **on the fly** — what a Panoptic-DeepLab-style loader must do per sample to feed PRN, no less, no more:
   decode the JPEG and the ground-truth panoptic PNG, resize, generate the targets, and make the base
   inputs from the base network's *exported* predictions (``files:DIR``, written once beforehand by
   ``prn_data.base.export``: decode its panoptic PNG and its 133-class probability ``.npz``, resize them,
   encode the 7 instance channels and the probabilities) — ``prn_data.build.make_sample`` with that base —
   then pad, augment and collate exactly like the store path. Running the base network itself per sample
   is not counted (no on-the-fly loader would; the simulator is not a network).

The headline figures are **CPU time per sample** with 0 workers (``time.process_time`` with
``torch.set_num_threads(1)``, median of ``--repeats`` runs): CPU time depends little on what else the
shared machine runs, and it is what bounds samples/s per worker. Then real ``DataLoader`` workers
(``forkserver``, one thread each, collate in the worker; first batch untimed; the consumer reads every page of
each batch, as a copy to a GPU would) for each ``--workers`` count: wall-clock samples/s and samples/s per
worker by the workers' own CPU time (``/proc``), for the store (both decodes) and the on-the-fly way, and the
same store path with every batch in fresh shared memory (``before``: torch's default, before reusable slabs,
README "Parallelism") run alternately in the same process; with the ratios to the on-the-fly way. Then
(``--heap-rounds``) the store path's workers with ``prn_data.heap``'s thresholds against workers that keep
glibc's defaults (before ``prn_data.heap``), both spawned (the second with ``PRN_MALLOC=default``), rounds
alternating. On a loaded machine the wall-clock figures are noisy. Goals: ≥ 5× the on-the-fly way, ≥ 30 samples/s per worker
(README "Performance").

**Read-integrity cost** (README "Sharing stores"): the same store read with the per-read checks (each
chunk's CRC32C; a missing chunk is found on the way at no cost) and with the CRC32C check switched off in
this process only (:func:`unchecked`), CPU ms per sample, runs interleaved (``--integrity-repeats``,
medians), and the ratio of samples/s. Goal: at most 5 % fewer samples/s. Then the same for the store built
the old way (no per-chunk CRC32C), whose every read checks the whole sample's checksum instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

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


def export_base(tmp: Path) -> str:
    """Export the simulated base network's predictions for the COCO sample (PNG + JSON + probability npz)
    and return the ``files:DIR`` spec that reads them back."""
    from prn_data.base import open_base
    from prn_data.base.export import export_predictions
    from prn_data.datasets import open_dataset

    ds = open_dataset(f"coco:{COCO}", "val2017")
    out = tmp / "base-export"
    export_predictions(ds, open_base("simulated", ds.categories), out)
    return f"files:{out}"


def cpu_per_sample(dataset, batch_size: int, batches: int, repeats: int) -> tuple[float, float]:
    """``(median, min)`` CPU ms per sample over ``repeats`` runs of ``batches`` batches, 0 workers."""
    from prn_model.data import make_loader
    from prn_model.sampler import TrainSampler

    runs = []
    it = iter(make_loader(dataset, batch_size, TrainSampler(len(dataset), seed=0), num_workers=0))
    next(it)
    for _ in range(repeats):
        c0 = time.process_time()
        for _ in range(batches):
            next(it)
        runs.append(1000 * (time.process_time() - c0) / (batches * batch_size))
    return float(np.median(runs)), float(np.min(runs))


def process_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by processes ``pids`` (Linux ``/proc``; 0 elsewhere)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(dataset, batch_size: int, workers: int, batches: int, mp_context: str = "forkserver") -> tuple[float, float]:
    """``(samples/s, CPU ms per sample of the workers)`` over ``batches`` batches after one untimed warm-up
    batch; the consumer touches every page of each batch, as a copy to a GPU would. With ``workers == 0`` the
    CPU figure is this process's (it does all the work); with workers it is theirs (what bounds samples/s per
    worker, whatever else the machine runs), read from ``/proc``."""
    from prn_model.data import make_loader
    from prn_model.sampler import TrainSampler

    loader = make_loader(dataset, batch_size, TrainSampler(len(dataset), seed=0), num_workers=workers,
                         mp_context=mp_context)
    it = iter(loader)
    next(it)
    pids = getattr(loader, "worker_pids", []) if workers else [os.getpid()]
    t0, c0 = time.perf_counter(), process_cpu(pids)
    for _ in range(batches):
        b = next(it)
        assert b["image"].shape[0] == batch_size
        for v in b.values():
            if hasattr(v, "view"):
                v.view(-1)[:: 4096 // v.element_size()].sum()  # one read per page
    dt, cpu = time.perf_counter() - t0, process_cpu(pids) - c0
    del it, b
    n = batches * batch_size
    return n / dt, 1000 * cpu / n


@contextlib.contextmanager
def fresh_memory(dataset):
    """The loader before reusable slabs (the baseline of the worker rows): every batch in fresh memory, and a
    worker's batch in fresh shared memory, one block per tensor, as torch's default collate makes it."""
    dataset.reuse_memory = False
    try:
        yield
    finally:
        dataset.reuse_memory = True


@contextlib.contextmanager
def heap_default():
    """Workers started in this block leave glibc's heap thresholds alone (the baseline of ``prn_data.heap``):
    they are spawned (a spawned child takes this process's environment as it is now; a forkserver child takes
    the server's) with ``PRN_MALLOC=default``."""
    from prn_data.heap import MALLOC_ENV

    with mock.patch.dict(os.environ, {MALLOC_ENV: "default"}):
        yield "spawn"


@contextlib.contextmanager
def unchecked():
    """Reads in this process skip the chunks' CRC32C check (the baseline of the read-integrity cost): the
    payload is taken as it is, as before per-chunk checksums."""
    from prn_data.store import core

    real, real_sample = core.check_crc32c, core.Store._check_sample
    core.check_crc32c = lambda blob: np.frombuffer(blob, dtype=np.uint8)[:-4]
    core.Store._check_sample = lambda self, i, blobs: None  # an old store's per-read sample checksum
    try:
        yield
    finally:
        core.check_crc32c, core.Store._check_sample = real, real_sample


def integrity_cost(url: str, aug, batch_size: int, batches: int, repeats: int) -> None:
    """Print CPU ms per sample with and without the per-read checks (interleaved runs, medians), and the
    time of the checks alone on one sample's chunks."""
    from prn_data.store import open_store
    from prn_data.store.shards import check_crc32c
    from prn_model.data import STORE_KEYS, StoreDataset

    st = open_store(url)
    paths = [p for p in STORE_KEYS if p != "size"]
    blobs = st._fetch(0, paths)
    if st.crc32c:
        t = []
        for _ in range(200):
            t0 = time.perf_counter()
            for b in blobs.values():
                check_crc32c(b)
            t.append(time.perf_counter() - t0)
        print(f"  CRC32C of the {len(paths)} chunks a training read takes ({sum(map(len, blobs.values())) / 1e6:.2f} "
              f"MB): {1000 * min(t):.3f} ms per sample (min of 200)")
    else:
        t = []
        for _ in range(50):
            t0 = time.perf_counter()
            st._check_sample(0, blobs)
            t.append(time.perf_counter() - t0)
        print(f"  sample checksum (all {len(st.map_paths)} chunks and the small values): {1000 * min(t):.3f} ms "
              f"per sample (min of 50)")

    for decode in ("loader", "device"):
        ds = StoreDataset(url, aug, decode=decode)
        on, off = [], []
        for _ in range(repeats):
            on.append(cpu_per_sample(ds, batch_size, batches, 1)[0])
            with unchecked():
                off.append(cpu_per_sample(ds, batch_size, batches, 1)[0])
        m_on, m_off = float(np.median(on)), float(np.median(off))
        print(f"  decode: {decode:<7} checked {m_on:6.2f} ms, unchecked {m_off:6.2f} ms per sample → "
              f"samples/s checked / unchecked {m_off / m_on:.3f}")


def build_old(url: str) -> None:
    """The COCO sample built as stores were before per-chunk checksums (no crc32c codec)."""
    import prn_data.build as pb
    from prn_data.build import BuildConfig, build

    real = pb.create_store
    pb.create_store = lambda *a, **k: real(*a, **k, crc32c=False)
    try:
        res = build(BuildConfig(dataset=f"coco:{COCO}", split="val2017", base="simulated", out=url,
                                scheduler="threads", workers=1))
    finally:
        pb.create_store = real
    assert res.ok, res.failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--fly-batches", type=int, default=3, help="timed batches for the (slow) on-the-fly way")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5, help="CPU-time repeats (median reported)")
    ap.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--store", help="an existing store to read instead of building the COCO sample")
    ap.add_argument("--integrity-repeats", type=int, default=15, help="interleaved runs of the read-check cost")
    ap.add_argument("--integrity-only", action="store_true", help="only the read-integrity cost")
    ap.add_argument("--heap-rounds", type=int, default=2,
                    help="rounds of workers with and without prn_data.heap's thresholds (0: skip)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)  # one core per loader process, as in a DataLoader worker
    from prn_model.augment import AugmentConfig
    from prn_model.batch import collate, decode_batch
    from prn_model.data import StoreDataset

    aug = AugmentConfig()  # flip 0.5, GridMask 0.5: the paper's training augmentation, identical for both
    with tempfile.TemporaryDirectory() as tmp:
        url = args.store
        if url is None:
            from prn_data.build import BuildConfig, build

            url = str(Path(tmp) / "coco.zarr")
            res = build(BuildConfig(dataset=f"coco:{COCO}", split="val2017", base="simulated", out=url,
                                    scheduler="threads", workers=1))
            assert res.ok, res.failures
        if args.integrity_only or args.integrity_repeats:
            print(f"\nread-integrity cost, CPU ms per sample, 0 workers, 1 thread (median of "
                  f"{args.integrity_repeats} interleaved runs of {args.batches} batches of {args.batch_size}):")
            integrity_cost(url, aug, args.batch_size, args.batches, args.integrity_repeats)
            if args.store is None:
                old = str(Path(tmp) / "coco-old.zarr")
                build_old(old)
                print("the same store built without per-chunk CRC32C (every read checks the sample checksum):")
                integrity_cost(old, aug, args.batch_size, args.batches, args.integrity_repeats)
            if args.integrity_only:
                return
        base = export_base(Path(tmp))
        store_ds = StoreDataset(url, aug)
        coded_ds = StoreDataset(url, aug, decode="device")
        fly_ds = OnTheFlyDataset(f"coco:{COCO}", "val2017", base, store_ds.canvas, aug)
        print(f"store {url}: {len(store_ds)} samples, canvas {store_ds.canvas}, {store_ds.num_classes} classes, "
              f"batch {args.batch_size}; on the fly: base inputs from {base.split('/')[-1]} (PNG + npz)")

        # 1. CPU time per sample (0 workers, one thread): robust to the shared machine's load
        fly_med, fly_min = cpu_per_sample(fly_ds, args.batch_size, args.fly_batches, args.repeats)
        st_med, st_min = cpu_per_sample(store_ds, args.batch_size, args.batches, args.repeats)
        dv_med, dv_min = cpu_per_sample(coded_ds, args.batch_size, args.batches, args.repeats)
        with fresh_memory(store_ds):
            st0_med, st0_min = cpu_per_sample(store_ds, args.batch_size, args.batches, args.repeats)
        with fresh_memory(coded_ds):
            dv0_med, dv0_min = cpu_per_sample(coded_ds, args.batch_size, args.batches, args.repeats)
        batch = collate([coded_ds[k] for k in range(args.batch_size)])
        decode_batch(batch, coded_ds.decode_spec)  # untimed: the first call's memory is fresh
        c0 = time.process_time()
        for _ in range(args.repeats):
            decode_batch(batch, coded_ds.decode_spec)
        dec = 1000 * (time.process_time() - c0) / (args.repeats * args.batch_size)
        print(f"\nCPU ms per sample, 0 workers, 1 thread (median | min of {args.repeats} runs):")
        print(f"  on the fly                   {fly_med:7.1f} | {fly_min:7.1f}")
        print(f"  store, decode: loader        {st_med:7.1f} | {st_min:7.1f}   ratio ×{fly_med / st_med:.1f} "
              f"→ {1000 / st_med:.0f} samples/s per worker")
        print(f"  store, decode: device        {dv_med:7.1f} | {dv_min:7.1f}   ratio ×{fly_med / dv_med:.1f} "
              f"→ {1000 / dv_med:.0f} samples/s per worker")
        print(f"  before (fresh memory per batch): decode: loader {st0_med:.1f} | {st0_min:.1f} → ×{st0_med / st_med:.2f} "
              f"now; decode: device {dv0_med:.1f} | {dv0_min:.1f} → ×{dv0_med / dv_med:.2f} now")
        print(f"    + decoding those codes on the trainer's CPU: {dec:.1f} ms per sample (1 thread) → "
              f"×{fly_med / (dv_med + dec):.1f} even when the trainer has no GPU")

        # 2. with DataLoader workers: wall clock (noisy on a shared machine) and the workers' CPU per sample
        if args.workers:
            print(f"\nDataLoader workers (forkserver, 1 thread each), {args.batches} batches of {args.batch_size} "
                  f"(on the fly: {args.fly_batches}), load average {os.getloadavg()[0]:.1f} on "
                  f"{os.cpu_count()} cores; samples/s wall clock | per worker by the workers' CPU time "
                  f"(1000 / CPU ms per sample); 'before': every batch in fresh shared memory (torch's default)")
            print(f"{'workers':>7} {'store':>15} {'store before':>15} {'device':>15} {'device before':>15} "
                  f"{'on the fly':>15}  store/fly (wall | CPU)")
        for w in args.workers:
            s, s_cpu = measure(store_ds, args.batch_size, w, args.batches)
            with fresh_memory(store_ds):
                s0, s0_cpu = measure(store_ds, args.batch_size, w, args.batches)
            d, d_cpu = measure(coded_ds, args.batch_size, w, args.batches)
            with fresh_memory(coded_ds):
                d0, d0_cpu = measure(coded_ds, args.batch_size, w, args.batches)
            f, f_cpu = measure(fly_ds, args.batch_size, w, args.fly_batches)

            def cell(rate: float, cpu: float) -> str:
                return f"{rate:6.1f} | {1000 / cpu if cpu else float('nan'):5.1f}"

            print(f"{w:>7} {cell(s, s_cpu):>15} {cell(s0, s0_cpu):>15} {cell(d, d_cpu):>15} {cell(d0, d0_cpu):>15} "
                  f"{cell(f, f_cpu):>15}  ×{s / f:.1f} | ×{f_cpu / s_cpu:.1f}", flush=True)

        # 3. the heap thresholds (prn_data.heap): spawned workers with and without, alternating
        workers = [w for w in args.workers if w > 0]
        if args.heap_rounds and workers:
            print(f"\nheap thresholds, store decode: loader, spawned workers, {args.batches} batches of "
                  f"{args.batch_size}, rounds alternating; samples/s wall clock | per worker by CPU time")
            print(f"{'round':>5} {'workers':>7} {'prn_data.heap':>15} {'glibc default':>15}  ratio (wall | CPU)")
            for r in range(args.heap_rounds):
                for w in workers:
                    t, t_cpu = measure(store_ds, args.batch_size, w, args.batches, mp_context="spawn")
                    with heap_default() as ctx:
                        h, h_cpu = measure(store_ds, args.batch_size, w, args.batches, mp_context=ctx)
                    print(f"{r:>5} {w:>7} {t:6.1f} | {1000 / t_cpu:5.1f}  {h:6.1f} | {1000 / h_cpu:5.1f}   "
                          f"×{t / h:.2f} | ×{h_cpu / t_cpu:.2f}", flush=True)


if __name__ == "__main__":
    main()
