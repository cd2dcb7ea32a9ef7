"""The parallel, resumable build of a prn store with Dask (README "The store (Zarr v3)").

Plan (driver): open the dataset; the canvas is the largest resized ``(h, w)`` over its samples (from
``orig_size``, no pixel decode), each side rounded up to a multiple of 32 so PRN takes it directly; create
the store (or reopen it to resume: samples whose ``done`` is set are skipped).

Graph, per shard that still has samples to make: one task per pending sample (:func:`compute_sample`:
load, resize by the policy of paper §4.2 with :func:`prn_data.resize.resize_sample`, targets at the stored
size with :func:`prn_data.targets.compute_targets` (§3.2, §3.4), the base network's inputs with
:func:`prn_data.base.encode.encode_base` (§3.2), quantised and compressed) and **one writer task per
shard** (:func:`write_shard`) that depends on them and writes each map array's shard whole, in one
``set`` (samples already done keep their bytes). zarr-python 3 loses data on concurrent partial-shard
writes, so a shard has exactly one writer; per-sample tasks keep every core busy whatever the shard size.
Only a small window of shards is in flight, which bounds the compressed samples held in memory.

A sample that raises is reported ``(index, file, error)`` and its slot left empty; the others go on. After
each writer returns, the driver writes the small arrays (size, ids, segments, checksum) and sets ``done``
last, so an interrupted build never leaves a sample ``done`` while incomplete, and a rerun resumes where it
stopped. The driver's memory stays flat in the number of samples (README "At COCO scale"). Metadata is
consolidated at the end, with each array's stored bytes recorded for ``prn info``. Dask threads × zarr
threads × torch threads are bounded (:func:`bound_zarr_concurrency`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import threading
import time
import warnings
from dataclasses import KW_ONLY, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import dask
import torch
import zarr
from dask.utils import key_split
from distributed import Client, LocalCluster, as_completed

from . import __version__
from .base import BaseNetwork, open_base
from .base.encode import encode_base
from .datasets import Dataset, open_dataset, open_described
from .errors import DatasetError, PrnError, StoreError
from .heap import retain_freed_blocks
from .inspect import SIZES_ATTR, record_sizes
from .location import is_zip_url, local_path, require_writable
from .lock import build_lock
from .resize import ResizePolicy, resize_sample
from .store import DEFAULT_SHARD_SIZE, Store, create_store, encode_sample, looks_like_prn_store, open_store
from .targets import TargetParams, compute_targets

try:
    from numcodecs import blosc
except ImportError:  # pragma: no cover - a numcodecs built without Blosc
    blosc = None

CANVAS_MULTIPLE = 32
#: Where a local cluster's HTTP servers listen: loopback, a free port (README "A tour": the build prints
#: the dashboard's link when Bokeh is installed).
DASHBOARD_ADDRESS = "127.0.0.1:0"
#: Dask settings of a local cluster. Each worker's statistical profiler keeps one call tree per second for
#: the last 1000 s (``distributed.admin.low-level-log-length`` cycles): most of the build's memory growth
#: (measured over 6,000 samples of 32×32: +2.4 KB per sample with it, +0.6 without; README "At COCO
#: scale"), and the build does not need it. Set while the cluster starts, as workers read it then.
LOCAL_CLUSTER_CONFIG = {"distributed.worker.profile.enabled": False}


@dataclass
class BuildConfig:
    """What ``prn build`` builds. ``scheduler``: ``None`` / ``"threads"`` (a local in-process cluster of
    ``workers`` threads), ``"processes"`` (a local cluster of ``workers`` processes) or the address of a
    running dask.distributed scheduler. ``workers`` defaults to the machine's cores."""

    dataset: str
    split: str
    _: KW_ONLY
    base: str = "none"
    out: str | None = None
    limit: int | None = None
    workers: int | None = None
    scheduler: str | None = None
    shard_size: int | None = None
    overwrite: bool = False
    policy: ResizePolicy = field(default_factory=ResizePolicy)
    params: TargetParams | None = None  # None: TargetParams()
    image_codec: str = "zstd"
    #: Options of :func:`prn_data.datasets.open_dataset` (e.g. a synthetic dataset's ``root``, ``min_size``,
    #: ``max_size``); recorded in the store with the dataset's description.
    dataset_options: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class BuildResult:
    """Outcome of a build: the store's URL, counts and the samples that failed."""

    store: str
    n_samples: int
    built: int
    skipped: int
    failures: list[dict]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failures


def sanitize(text: str) -> str:
    """A file-name-safe form of a dataset or base spec (``files:/a/b`` → ``files-a-b``)."""
    s = re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-.")
    return s[:80] or "x"


def default_out(dataset_name: str, split: str, base: str) -> str:
    """``cache/<dataset>-<split>-<base>.zarr`` with the base spec sanitised into a file name."""
    return str(Path("cache") / f"{sanitize(dataset_name)}-{sanitize(split)}-{sanitize(base)}.zarr")


def plan_canvas(dataset: Dataset, n: int, policy: ResizePolicy) -> tuple[int, int]:
    """Largest resized ``(h, w)`` over the first ``n`` samples, each rounded up to a multiple of 32. A sample
    whose size cannot be read (a missing file, a malformed ``images[]`` entry) is left out here: its own
    task fails with that error, as bad input stops the sample, not the build (README "Datasets")."""
    H = W = 1
    for i in range(n):
        try:
            h, w = policy.output_size(*dataset.orig_size(i))
        except DatasetError:
            continue
        H, W = max(H, h), max(W, w)
    up = lambda v: -(-v // CANVAS_MULTIPLE) * CANVAS_MULTIPLE  # noqa: E731
    return up(H), up(W)


def git_revision() -> str | None:
    """The package checkout's HEAD commit, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _store_attrs(cfg: BuildConfig, dataset: Dataset, params: TargetParams) -> dict:
    return {
        "dataset": dataset.describe(),
        "dataset_name": dataset.name,
        "split": cfg.split,
        "label_divisor": int(params.label_divisor),
        "resize_policy": cfg.policy.to_json(),
        "target_params": params.to_json(),
        "base": cfg.base,
        "package_version": __version__,
        "git_revision": git_revision(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _check_resume(store: Store, cfg: BuildConfig, *, dataset: Dataset, n: int, canvas: tuple[int, int],
                  params: TargetParams) -> None:
    """A store being resumed must describe the same build; otherwise say what differs."""
    a = store.attrs
    want = {
        "dataset": dataset.describe(),
        "split": cfg.split,
        "base": cfg.base,
        "resize_policy": cfg.policy.to_json(),
        "target_params": params.to_json(),
        "n_samples": n,
        "canvas": list(canvas),
        "image_codec": cfg.image_codec,
    }
    if cfg.shard_size is not None:
        want["shard_size"] = cfg.shard_size
    diff = [k for k, v in want.items() if _jsonish(a.get(k)) != _jsonish(v)]
    if diff:
        raise StoreError(f"{store.url}: exists but was built with other settings ({', '.join(diff)}); "
                         "use --overwrite to rebuild it or --out for another store")


def _jsonish(v: Any) -> Any:
    return json.loads(json.dumps(v))


# --------------------------------------------------------------------------------------------- worker side

@dataclass(frozen=True, kw_only=True)
class ShardJob:
    """One shard's work: its pending samples (``todo``), the done ones whose bytes it keeps, and what is
    needed to recompute a sample anywhere (dataset description, base spec, policy, target params)."""

    store: str
    shard: int
    todo: tuple[int, ...]
    keep: tuple[int, ...]
    dataset: dict  # Dataset.describe()
    base: str
    policy: ResizePolicy
    params: TargetParams
    token: str = ""  # one per build run: worker caches never outlive the run that filled them


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def _cached(token: str, key: str, make: Callable[[], Any]) -> Any:
    with _CACHE_LOCK:
        if _CACHE.get("token") != token:
            _CACHE.clear()
            _CACHE["token"] = token
        if key not in _CACHE:
            _CACHE[key] = make()
        return _CACHE[key]


def bound_zarr_concurrency(threads: int = 1) -> None:
    """Keep zarr's async concurrency and thread pool, Blosc and torch small: Dask already runs one task per
    core, and zarr's defaults (10 async operations, an unbounded pool) oversubscribe small machines.
    Process-wide; called by every build task."""
    zarr.config.set({"async.concurrency": 4, "threading.max_workers": max(1, threads)})
    if blosc is not None:
        blosc.use_threads = False  # Blosc's global pool is unsafe after fork (numcodecs #41)
    # Dask runs one sample per core already; torch's own intra-op pool (the base encoding resizes the
    # probabilities with torch) would multiply the threads and spin-wait on the same cores.
    if torch.get_num_threads() != threads:
        torch.set_num_threads(max(1, threads))


def make_sample(dataset: Dataset, base: BaseNetwork | None, index: int, policy: ResizePolicy, params: TargetParams,
                num_classes: int) -> tuple[dict, dict]:
    """``(maps, meta)`` of sample ``index``: resized image, targets and base inputs under their store paths,
    and the small per-sample values. Pure computation; errors propagate."""
    raw = dataset.load(index)
    s = resize_sample(raw, policy)
    t = compute_targets(s.panoptic, s.segments, params, source=s.file_name)
    maps = {"image": s.image} | {f"gt/{k}": v for k, v in t.items()}
    meta = {
        "size": list(s.size),
        "orig_size": [int(v) for v in s.orig_size],
        "image_id": str(s.image_id),
        "file_name": str(s.file_name),
        "gt/segments": json.dumps([seg.to_json() for seg in s.segments]),
    }
    if base is not None:
        pred = base.predict([raw])[0]
        b = encode_base(pred, s.size, num_classes, params)
        maps |= {"base/instance": b["instance"], "base/semantic": b["semantic"], "base/panoptic": b["panoptic"]}
        meta["base/segments"] = json.dumps(b["segments"])
    return maps, meta


def _failure(dataset: Dataset, index: int, exc: BaseException) -> dict:
    if isinstance(exc, DatasetError) and exc.path:
        file, problem = exc.path, exc.problem
    else:
        try:
            file = dataset.keys()[index]
        except Exception:
            file = f"sample {index}"
        problem = f"{type(exc).__name__}: {exc}" if not isinstance(exc, PrnError) else str(exc)
    return {"index": int(index), "file": str(file), "error": problem}


def _context(job: ShardJob) -> tuple[Dataset, BaseNetwork | None, Store]:
    bound_zarr_concurrency()
    retain_freed_blocks()  # every Dask worker process: a sample's large arrays reuse freed heap (heap.py)
    dataset = _cached(job.token, "dataset", lambda: open_described(job.dataset))
    base = _cached(job.token, "base", lambda: open_base(job.base, dataset.categories))
    store = _cached(job.token, "store", lambda: open_store(job.store, mode="r+"))
    return dataset, base, store


def compute_sample(job: ShardJob, index: int) -> dict:
    """Dask task: sample ``index`` computed and compressed → ``{"index", "chunks", "meta"}``, or
    ``{"index", "failure"}`` when anything about it raises (reported, never raised)."""
    dataset, base, store = _context(job)
    try:
        maps, meta = make_sample(dataset, base, index, job.policy, job.params, len(dataset.categories))
        chunks, meta = encode_sample(list(store.defs.values()), maps, meta)
    except Exception as exc:  # one bad sample must not stop the others
        return {"index": int(index), "failure": _failure(dataset, index, exc)}
    return {"index": int(index), "chunks": chunks, "meta": meta}


def write_shard(job: ShardJob, *results: dict) -> dict:
    """Dask task, the shard's only writer: assemble and write every map array's shard whole from the
    samples' compressed chunks (done samples keep their bytes). Returns ``{"shard", "indices", "meta",
    "failures"}`` for the driver, which then writes the small arrays and ``done``."""
    _, _, store = _context(job)
    ok = [r for r in results if "chunks" in r]
    if ok or job.keep:
        store.write_shard(job.shard, {r["index"]: r["chunks"] for r in ok}, keep=job.keep)
    return {"shard": job.shard, "indices": [r["index"] for r in ok], "meta": [r["meta"] for r in ok],
            "failures": [r["failure"] for r in results if "failure" in r]}


def run_shard(job: ShardJob) -> dict:
    """A whole shard in the calling thread (what the Dask graph does, serially)."""
    return write_shard(job, *(compute_sample(job, i) for i in job.todo))


# --------------------------------------------------------------------------------------------- driver

def _client(scheduler: str | None, workers: int) -> tuple[Client, LocalCluster | None]:
    """A dask.distributed client: by default a local in-process cluster of ``workers`` threads (measured
    faster than worker processes on a 2-core machine: no re-imports, no transfers to the shard writer);
    ``"processes"`` for a local cluster of ``workers`` single-threaded processes (a GIL-bound base network);
    or the address of a running scheduler (its workers must see the store's path or URL)."""
    # Every listener of a local cluster is on loopback (DASHBOARD_ADDRESS): its HTTP servers (dashboard,
    # /health, /metrics) would otherwise listen on all interfaces, and each worker starts one whatever
    # its dashboard setting.
    if scheduler in (None, "", "local", "threads"):
        with dask.config.set(LOCAL_CLUSTER_CONFIG):
            cluster = LocalCluster(n_workers=1, threads_per_worker=workers, processes=False,
                                   dashboard_address=DASHBOARD_ADDRESS, worker_dashboard_address=DASHBOARD_ADDRESS,
                                   silence_logs=40)
        return Client(cluster), cluster
    if scheduler == "processes":
        with dask.config.set(LOCAL_CLUSTER_CONFIG):  # worker processes inherit it when they start
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=DASHBOARD_ADDRESS, worker_dashboard_address=DASHBOARD_ADDRESS,
                                   silence_logs=40)
        return Client(cluster), cluster
    try:
        return Client(scheduler, timeout=30), None
    except Exception as exc:
        raise PrnError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from None


def dashboard_link(cluster: LocalCluster | None) -> str | None:
    """The URL of a local cluster's Dask dashboard (on loopback) when it serves one, else None: the
    dashboard's pages need Bokeh, without which the scheduler serves only /health and /metrics."""
    if cluster is None or not _bokeh_installed():
        return None
    # cluster.dashboard_link names the host of the scheduler's address, which an in-process (inproc://)
    # cluster takes from the machine's network interface, not where the server listens
    return f"http://127.0.0.1:{cluster.scheduler.http_server.port}/status"


def _bokeh_installed() -> bool:
    return importlib.util.find_spec("bokeh") is not None


def build(cfg: BuildConfig, on_progress: Callable[[int, int, int], None] | None = None, *,
          on_dashboard: Callable[[str], None] | None = None) -> BuildResult:
    """Build (or resume) the store described by ``cfg``.

    ``on_progress(done, total, advance)`` is called as samples finish (``total`` = samples to make in this
    run); ``on_dashboard(url)`` once the local cluster's dashboard is open (:func:`dashboard_link`). Returns a :class:`BuildResult`; failed samples are listed, never raised, and recorded in the
    store's ``failures`` attribute. A local store is locked for the build (:mod:`prn_data.lock`): a second
    build of it raises :class:`StoreError` instead of writing the same shards.
    """
    t0 = time.perf_counter()
    if cfg.out:
        _check_out(cfg.out)  # before the dataset is read (or generated)
    params = cfg.params or TargetParams()
    dataset = open_dataset(cfg.dataset, cfg.split, **cfg.dataset_options)
    open_base(cfg.base, dataset.categories)  # bad base specs fail before any work
    n = len(dataset) if cfg.limit is None else min(len(dataset), max(0, int(cfg.limit)))
    if n == 0:
        raise PrnError(f"dataset {cfg.dataset} split {cfg.split} has no samples to build")
    out = _check_out(cfg.out or default_out(dataset.name, cfg.split, cfg.base))
    canvas = plan_canvas(dataset, n, cfg.policy)
    with build_lock(out):
        return _build_locked(cfg, dataset=dataset, n=n, out=out, canvas=canvas, params=params,
                             on_progress=on_progress, on_dashboard=on_dashboard, t0=t0)


def _build_locked(cfg: BuildConfig, *, dataset: Dataset, n: int, out: str, canvas: tuple[int, int],
                  params: TargetParams, on_progress: Callable[[int, int, int], None] | None,
                  t0: float, on_dashboard: Callable[[str], None] | None = None) -> BuildResult:
    existing, overwrite = None, cfg.overwrite
    if not overwrite:
        try:
            existing = open_store(out, mode="r+")
        except StoreError:
            if _half_created(out):
                overwrite = True  # killed while creating the arrays: nothing was built yet
            elif _store_exists(out):
                raise
    if existing is not None:
        _check_resume(existing, cfg, dataset=dataset, n=n, canvas=canvas, params=params)
        store = existing
    else:
        store = create_store(out, n=n, canvas=canvas, categories=dataset.categories,
                             attrs=_store_attrs(cfg, dataset, params), has_base=cfg.base != "none",
                             shard_size=cfg.shard_size or DEFAULT_SHARD_SIZE, image_codec=cfg.image_codec,
                             small_weight=params.small_instance_weight, overwrite=overwrite)

    done = store.done
    if store.attrs.get(SIZES_ATTR) is not None and not done.all():
        store.set_attrs(**{SIZES_ATTR: None})  # this run changes the shards: the old record goes
    S = store.shard_size
    desc = dataset.describe()
    jobs = []
    for k in range(-(-n // S)):
        idx = range(k * S, min(n, (k + 1) * S))
        todo = tuple(i for i in idx if not done[i])
        if todo:
            jobs.append(ShardJob(store=out, shard=k, todo=todo, keep=tuple(i for i in idx if done[i]), dataset=desc,
                                 base=cfg.base, policy=cfg.policy, params=params))
    total = sum(len(j.todo) for j in jobs)
    skipped = n - total
    failures: list[dict] = []
    built = 0
    if on_progress:
        on_progress(0, total, 0)
    if jobs:
        built, failures = _run_jobs(store, jobs, cfg, total=total, on_progress=on_progress,
                                    on_dashboard=on_dashboard)
    # samples that failed in an earlier run and are still not done stay listed
    done = store.done
    prior = [f for f in store.failures if not done[f["index"]] and f["index"] not in {g["index"] for g in failures}]
    failures = sorted(prior + failures, key=lambda f: f["index"])
    store.set_attrs(failures=failures, complete=bool(done.all()))
    store.consolidate()
    # Each array's stored bytes, listed once here so that `prn info` needs no listing (one request per
    # object over HTTP); listed after consolidate() wrote the sample coordinates, so consolidated again.
    store.set_attrs(**{SIZES_ATTR: record_sizes(store.group, int(done.sum()))})
    _consolidate_metadata(store)
    return BuildResult(store=out, n_samples=n, built=built, skipped=skipped, failures=failures,
                       seconds=time.perf_counter() - t0)


def _consolidate_metadata(store: Store) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consolidated metadata is not in the v3 spec" — known, chosen
        zarr.consolidate_metadata(store.zstore)


def _check_out(url: str) -> str:
    """The store URL to build at, or a :class:`StoreError` for an ``--out`` that cannot hold one: a ``.zip``
    (stores are built as folders; ``prn pack`` makes the zip), an existing file, a link to nothing. A local
    link to a folder is built through: the store's path is the folder it points to."""
    require_writable(url)  # http(s)://: read-only
    if is_zip_url(url):
        stem = url.rstrip("/")[: -len(".zip")] if url.rstrip("/").lower().endswith(".zip") else "STORE"
        raise StoreError(f"{url}: a store is built as a folder, not a zip; build to {stem}.zarr, then "
                         f"`prn pack {stem}.zarr {url}` to share it as one file")
    path = local_path(url)
    if path is None:
        return url
    if path.is_symlink() and not path.exists():
        raise StoreError(f"{url}: a link to {os.readlink(path)}, which does not exist; give a store folder")
    if path.exists() and not path.is_dir():
        raise StoreError(f"{url}: is a file, not a store folder; give a folder to build into")
    return str(path.resolve()) if path.is_symlink() else url


def _half_created(url: str) -> bool:
    return ((local_path(url) is not None) and local_path(url).is_dir() and looks_like_prn_store(local_path(url), True)
            and not looks_like_prn_store(local_path(url)))


def _store_exists(url: str) -> bool:
    return (local_path(url) is not None) and local_path(url).exists() and any(local_path(url).iterdir())


def _run_jobs(store: Store, jobs: Sequence[ShardJob], cfg: BuildConfig, *, total: int,
              on_progress: Callable[[int, int, int], None] | None,
              on_dashboard: Callable[[str], None] | None = None) -> tuple[int, list]:
    """Per shard: one task per pending sample and one writer task depending on them (higher priority, so
    a shard is written as soon as its samples are ready). Only a window of shards is in flight, which
    bounds the compressed samples held in worker memory; the driver writes ``done`` after each writer."""
    workers = cfg.workers or os.cpu_count() or 1
    torch_threads = torch.get_num_threads()  # in-process workers set it to 1; give it back afterwards
    client, cluster = _client(cfg.scheduler, workers)
    if on_dashboard and (link := dashboard_link(cluster)):
        on_dashboard(link)
    built, failures, finished = 0, [], 0
    try:
        token = f"{os.getpid()}-{time.time_ns()}"
        queue = [ShardJob(**{**j.__dict__, "token": token}) for j in jobs]
        nthreads = max(1, sum(client.nthreads().values()))
        window = max(2, -(-2 * nthreads // store.shard_size) + 1)
        writers: dict[str, ShardJob] = {}
        ac = as_completed()

        def submit_next() -> None:
            if not queue:
                return
            job = queue.pop(0)
            # One submission per shard, not per sample: the scheduler's default span keeps a record of every
            # submission until the cluster closes (measured: the build's memory grew with the sample count,
            # README "At COCO scale"). A sample's task gets the job without its shard's index lists.
            slim = replace(job, todo=(), keep=())
            samples = client.map(compute_sample, [slim] * len(job.todo), job.todo, pure=False,
                                 key=[f"prn-sample-{i}-{token}" for i in job.todo])
            w = client.submit(write_shard, job, *samples, key=f"prn-write-{job.shard}-{token}", pure=False,
                              priority=1)
            writers[w.key] = job
            ac.update(samples + [w])

        for _ in range(window):
            submit_next()
        for fut in ac:
            job = writers.pop(fut.key, None)
            if job is None:  # a sample: progress only (its result goes to the writer)
                finished += 1
                if on_progress:
                    on_progress(finished, total, 1)
                continue
            try:
                res = fut.result()
            except Exception as exc:  # the writer died (e.g. a write error): its samples failed
                res = {"indices": [], "meta": [], "failures": [
                    {"index": i, "file": f"shard {job.shard}", "error": f"{type(exc).__name__}: {exc}"}
                    for i in job.todo]}
            store.write_meta(res["indices"], res["meta"])  # done set last, by this process only
            built += len(res["indices"])
            failures += res["failures"]
            # Dask's key_split keeps every task key it has seen (an LRU cache of 100,000): emptied here, as
            # each key is used once, so that the in-process scheduler's memory stays flat
            key_split.cache_clear()
            submit_next()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        torch.set_num_threads(torch_threads)
    return built, failures


__all__ = ["BuildConfig", "BuildResult", "build", "compute_sample", "write_shard", "run_shard", "make_sample",
           "plan_canvas", "default_out", "sanitize", "ShardJob"]
