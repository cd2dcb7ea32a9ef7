"""Benchmark of a store at COCO train2017's sample count, by simulation (README "At COCO scale").

    nice -n 5 .venv/bin/python benchmarks/scale.py [--samples 118287] [--canvas 32] [--workers 2]

A synthetic dataset of ``--samples`` scenes at a tiny size (``--canvas`` pixels at most per side) is
generated (the generation is timed, not part of the build), then built with the normal build code
(:func:`prn_data.build.build`, base network ``simulated``, a resize policy that keeps the scenes at the
canvas), and the store is measured:

1. the **build**: samples/s, and the process's RSS sampled every ``--rss-every`` seconds, printed as a
   short series against the samples done (the build runs in this process: the default local cluster's
   workers are threads), with its growth over the second half of the build (goal: flat in the number of
   samples);
2. the **resume check**: the build run again on the complete store must find nothing to do (goal ≤ 10 s);
3. **open**: :func:`prn_data.store.open_store` plus ``len`` and ``done``, locally and over a loopback HTTP
   server that honours byte ranges (``tests/http_serving.py``, in a child process so that it does not share
   this process's GIL), each with the number of objects read (goals ≤ 1 s locally, ≤ 3 s over HTTP);
4. ``prn info --json`` (a subprocess, wall clock including Python's start-up) locally and over HTTP;
5. ``prn verify`` throughput (:func:`prn_data.verify.verify_store`, samples/s, on the first
   ``--verify`` samples' worth of time: the full store when it is 0);
6. **random-access reads**: ``read_sample`` of ``--reads`` random samples, ms/sample, locally and over HTTP;
7. the consolidated metadata's size (root ``zarr.json``) and the **files per 1000 samples**;
8. **real size**: the per-sample costs at full size on real samples (``--real``, by default the COCO sample
   shipped in ``prn_data/samples/coco``; ``--real-repeats`` times each): stored bytes with the lossless
   ``zstd`` image codec and with lossless ``jpegxl``, and the CPU seconds of one sample's work on one core
   (load, resize to the paper's 640/800 policy, targets, simulated 133-class base, encode), at the
   800×800 canvas COCO's landscape and portrait images share; then the **projection** of COCO train2017
   (``--project`` samples): bytes, files (at the files per 1000 samples measured above) and build hours on
   N Dask workers (real-size work + the build's machinery per sample measured above, one core per worker).

Run it at a few sizes (``--samples 5000``, ``20000``) to see how each figure scales with N.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
COCO_TRAIN2017 = 118_287
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    """This process's resident set size in MB (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1e6


class RssSampler:
    """Samples :func:`rss_mb` every ``every`` seconds in a thread, with the samples done at that moment."""

    def __init__(self, every: float) -> None:
        self.every, self.done, self.series = every, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.is_set():
            self.series.append((time.perf_counter() - t0, self.done, rss_mb()))
            self._stop.wait(self.every)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.series.append((self.series[-1][0] if self.series else 0.0, self.done, rss_mb()))


class CountingStore:
    """Counts the objects a zarr store is asked for (gets, with or without a byte range, and listings)."""

    def __init__(self) -> None:
        self.gets: list[str] = []
        self.lists = 0


def count_open(url: str) -> tuple[float, int, int]:
    """``(seconds, objects read, listings)`` of opening ``url`` and reading ``len`` and ``done``."""
    from prn_data import location
    from prn_data.store import core

    counter = CountingStore()
    real = location.zarr_store

    def counted(u: str, mode: str = "r"):
        zs = real(u, mode)
        get, lp, ld = zs.get, zs.list_prefix, zs.list_dir

        async def cget(key, prototype, byte_range=None):
            counter.gets.append(key)
            return await get(key, prototype, byte_range)

        def clp(prefix):
            counter.lists += 1
            return lp(prefix)

        def cld(prefix):
            counter.lists += 1
            return ld(prefix)

        setattr(zs, "get", cget)
        setattr(zs, "list_prefix", clp)
        setattr(zs, "list_dir", cld)
        return zs

    core.zarr_store = counted
    try:
        t = time.perf_counter()
        st = core.open_store(url)
        n, done = len(st), st.done
        sec = time.perf_counter() - t
    finally:
        core.zarr_store = real
    assert done.shape == (n,) and done.all(), "the store is not complete"
    return sec, len(counter.gets), counter.lists


def timed_cli(*args: str) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run([str(REPO / ".venv" / "bin" / "prn"), *args], capture_output=True, text=True)
    sec = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"prn {' '.join(args)} failed: {r.stderr.strip()[-500:]}")
    return sec, r.stdout


def random_reads(url: str, n: int, reads: int, seed: int = 0) -> float:
    """ms per ``read_sample`` of ``reads`` random samples through one fresh read-only handle."""
    from prn_data.store import open_store

    st = open_store(url)
    idx = np.random.default_rng(seed).integers(0, n, reads)
    t = time.perf_counter()
    for i in idx:
        st.read_sample(int(i))
    return (time.perf_counter() - t) * 1e3 / reads


def real_size_costs(spec: str, split: str, repeats: int, tmp: Path) -> dict:
    """Per-sample costs at full size over the samples of dataset ``spec``: ``{"samples", "canvas",
    "bytes": {codec: bytes/sample}, "cpu": {codec: CPU s/sample}}``. Bytes: every compressed map chunk plus
    the small values, as the build writes them; CPU: :func:`prn_data.build.make_sample` plus
    :func:`prn_data.store.encode_sample` (process CPU time: a codec's own threads count), the median over ``repeats``, averaged over samples."""
    from prn_data.base import open_base
    from prn_data.build import bound_zarr_concurrency, make_sample
    from prn_data.datasets import open_dataset
    from prn_data.resize import ResizePolicy
    from prn_data.store import create_store, encode_sample
    from prn_data.targets import TargetParams

    ds = open_dataset(spec, split)
    base = open_base("simulated", ds.categories)
    policy, params = ResizePolicy(), TargetParams()
    canvas = policy.canvas()
    bound_zarr_concurrency(1)  # one thread, as one Dask worker thread runs a sample
    defs = {}
    for codec in ("zstd", "jpegxl"):
        st = create_store(tmp / f"real-{codec}.zarr", n=len(ds), canvas=canvas, categories=ds.categories,
                          attrs={"dataset": ds.describe(), "split": split, "base": "simulated",
                                 "target_params": params.to_json()}, has_base=True,
                          image_codec=codec, small_weight=params.small_instance_weight)
        defs[codec] = list(st.defs.values())
    nbytes = {c: 0.0 for c in defs}
    cpu = {c: 0.0 for c in defs}
    for i in range(len(ds)):
        per = {c: [] for c in defs}
        for _ in range(repeats):
            for codec, d in defs.items():
                t = time.process_time()
                maps, meta = make_sample(ds, base, i, policy, params, len(ds.categories))
                chunks, meta = encode_sample(d, maps, meta)
                per[codec].append(time.process_time() - t)
                nbytes[codec] += (sum(len(b) for b in chunks.values() if b) + len(json.dumps(meta))) / repeats
        for codec in defs:
            cpu[codec] += float(np.median(per[codec]))
    n = len(ds)
    return {"samples": n, "canvas": canvas, "bytes": {c: v / n for c, v in nbytes.items()},
            "cpu": {c: v / n for c, v in cpu.items()}}


def start_server(directory: Path) -> tuple[subprocess.Popen, str]:
    """A byte-range HTTP server (``tests/http_serving.py``) over ``directory`` in a child process."""
    # A listen backlog of 5 (socketserver's default) drops the SYNs of a reader's concurrent range reads
    # beyond it, and each dropped one waits a 1 s retransmission: nginx and S3 accept hundreds.
    code = ("import socketserver, sys, time; socketserver.TCPServer.request_queue_size = 256\n"
            "sys.path.insert(0, sys.argv[1]); from tests.http_serving import serve\n"
            "with serve(sys.argv[2], ranges=True) as url:\n    print(url, flush=True)\n    time.sleep(1e9)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(REPO), str(directory)], stdout=subprocess.PIPE,
                            text=True)
    return proc, proc.stdout.readline().strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=COCO_TRAIN2017)
    ap.add_argument("--canvas", type=int, default=32, help="largest scene side in pixels (multiple of 32)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reads", type=int, default=300, help="random-access reads per location")
    ap.add_argument("--verify", type=int, default=0, help="samples verified (0: all)")
    ap.add_argument("--rss-every", type=float, default=2.0, help="seconds between RSS samples")
    ap.add_argument("--tmp", default=None, help="folder for the dataset and the store (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the dataset and the store")
    ap.add_argument("--real", default=None, help="dataset spec of the real-size samples (default: the shipped "
                    "COCO sample, coco:prn_data/samples/coco)")
    ap.add_argument("--real-split", default="val2017")
    ap.add_argument("--real-repeats", type=int, default=3)
    ap.add_argument("--project", type=int, default=COCO_TRAIN2017, help="samples of the projected full-size store")
    args = ap.parse_args()

    from prn_data.build import BuildConfig, build
    from prn_data.datasets.synthetic import SyntheticConfig, write_synthetic
    from prn_data.resize import ResizePolicy
    from prn_data.verify import verify_store

    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="prn-scale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    n, c = args.samples, args.canvas
    print(f"# prn scale benchmark: {n} samples (COCO train2017: {COCO_TRAIN2017}), synthetic scenes "
          f"{c * 3 // 4}..{c} px, base simulated, {args.workers} build workers, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    server = None
    try:
        # 0. the dataset (not part of the build's figures)
        gen = SyntheticConfig(min_size=(c * 3 // 4, c * 3 // 4), max_size=(c, c), max_instances=3)
        root = tmp / "synthetic"
        t = time.perf_counter()
        write_synthetic(root, "train", n, gen)
        print(f"dataset: {n} scenes generated in {time.perf_counter() - t:.0f} s")
        opts = {"root": str(root), **{k: v for k, v in gen.to_json().items() if k != "seed"}}
        out = tmp / "store.zarr"
        cfg = BuildConfig(f"synthetic:{n}", "train", base="simulated", out=str(out), workers=args.workers,
                          policy=ResizePolicy(short=c, max_long=c), dataset_options=opts)

        # 1. the build, RSS sampled
        stamps: list[tuple[float, int]] = []
        cpu0 = time.process_time()  # the local cluster's workers are threads of this process
        with RssSampler(args.rss_every) as rss:
            def progress(done: int, total: int, _adv: int) -> None:
                rss.done = done
                if done % max(1, n // 20) == 0:
                    stamps.append((time.perf_counter(), done))

            r = build(cfg, on_progress=progress)
        cpu = (time.process_time() - cpu0) / n
        assert r.ok and r.built == n, (r.built, r.failures[:3])
        half = next((k for k, (_, d) in enumerate(stamps) if d >= n // 2), 0)
        steady = (stamps[-1][1] - stamps[half][1]) / max(stamps[-1][0] - stamps[half][0], 1e-9) if stamps else 0
        print(f"\n## build: {n / r.seconds:.1f} samples/s over {r.seconds:.0f} s; steady (2nd half) "
              f"{steady:.1f} samples/s; {cpu * 1e3:.1f} CPU ms/sample (the per-sample cost of the build's "
              f"machinery at this canvas: Dask tasks, shard writes, small arrays, done)")
        series = rss.series
        picks = [series[round(k * (len(series) - 1) / 10)] for k in range(11)]
        print("   RSS over the build (MB at samples done): " + ", ".join(f"{m:.0f}@{d}" for _, d, m in picks))
        mid = [m for _, d, m in series if d >= n // 2]
        first = [m for _, d, m in series if 0 < d < n // 2]
        if mid and first:
            print(f"   RSS max first half {max(first):.0f} MB, second half {max(mid):.0f} MB: growth "
                  f"{(max(mid) - max(first)) / (n / 2) * 1e3:+.2f} KB/sample over the second half")

        # 2. resume check of the complete store
        t = time.perf_counter()
        r2 = build(cfg)
        resume = time.perf_counter() - t
        assert r2.built == 0 and r2.skipped == n, (r2.built, r2.skipped)
        print(f"\n## resume check of the complete store: {resume:.2f} s, found nothing to do "
              f"(goal ≤ 10 s)")

        # 3. open, local and over loopback HTTP
        server, base_url = start_server(tmp)
        http = f"{base_url}/store.zarr"
        rows = []
        for where, url in (("local", str(out)), ("loopback HTTP", http)):
            sec, objs, lists = min((count_open(url) for _ in range(3)), key=lambda x: x[0])
            rows.append((where, sec, objs, lists))
        print("\n## open (open_store + len + done; best of 3)")
        for where, sec, objs, lists in rows:
            goal = 1.0 if where == "local" else 3.0
            print(f"   {where:14s} {sec * 1e3:8.1f} ms  {objs} objects read, {lists} listings  (goal ≤ {goal:.0f} s)")

        # 4. prn info
        print("\n## prn info --json (subprocess, wall clock incl. start-up)")
        for where, url in (("local", str(out)), ("loopback HTTP", http)):
            sec, text = timed_cli("info", "--json", url)
            info = json.loads(text)
            print(f"   {where:14s} {sec:6.2f} s  ({info['summary']['samples_done']} done, "
                  f"{info['totals']['stored_bytes'] / n:.0f} B/sample stored)")
        sec, _ = timed_cli("--help")
        print(f"   (`prn --help` alone: {sec:.2f} s)")

        # 5. verify throughput
        t = time.perf_counter()
        rep = verify_store(str(out))
        vsec = time.perf_counter() - t
        assert rep.ok and rep.checked == n, rep.to_json()["bad"][:3]
        print(f"\n## prn verify (in-process, default threads): {n / vsec:.0f} samples/s ({vsec:.1f} s for {n})")

        # 6. random reads
        print(f"\n## random-access read_sample, {args.reads} random samples, fresh handle")
        for where, url in (("local", str(out)), ("loopback HTTP", http)):
            print(f"   {where:14s} {random_reads(url, n, args.reads):7.2f} ms/sample")

        # 7. metadata and files
        meta = (out / "zarr.json").stat().st_size
        files = sum(1 for p in out.rglob("*") if p.is_file())
        print(f"\n## consolidated metadata (root zarr.json): {meta / 1e3:.1f} KB; files: {files} for {n} samples "
              f"= {files / n * 1e3:.1f} per 1000 samples; store {sum(p.stat().st_size for p in out.rglob('*') if p.is_file()) / n:.0f} B/sample")

        # 8. real size, and the projection of the full-size store
        from prn_data.testing import COCO_SAMPLE

        spec = args.real or f"coco:{COCO_SAMPLE}"
        real = real_size_costs(spec, args.real_split, args.real_repeats, tmp)
        H, W = real["canvas"]
        print(f"\n## real size: {real['samples']} samples of {spec} ({args.real_split}), resized 640/800, canvas "
              f"{H}×{W}, 133-class simulated base, one thread, median of {args.real_repeats}")
        for codec in real["bytes"]:
            print(f"   image codec {codec:6s}: {real['bytes'][codec] / 1e6:.3f} MB/sample stored, "
                  f"{real['cpu'][codec]:.3f} CPU s/sample")
        P = args.project
        machinery = cpu  # CPU s/sample of the tiny build: Dask tasks, shard and small-array writes, done
        print(f"\n## projection: {P} samples at full size (measured per-sample costs × {P})")
        print(f"   files ≈ {files / n * P:,.0f} (at {files / n * 1e3:.1f} per 1000 samples)")
        for codec in real["bytes"]:
            core_h = P * (real["cpu"][codec] + machinery) / 3600
            on = ", ".join(f"{w} workers {core_h / w:.2f} h" for w in (2, 8, 32))
            print(f"   {codec:6s}: {real['bytes'][codec] * P / 1e9:,.0f} GB; build {core_h:.1f} core-hours "
                  f"({real['cpu'][codec] * 1e3:.0f} + {machinery * 1e3:.1f} ms/sample) → {on}")
        print(f"\n# load average {os.getloadavg()[0]:.1f} at the end (other processes share these cores)")
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
