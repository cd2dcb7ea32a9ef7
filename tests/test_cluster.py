"""Building through a real dask.distributed cluster: a ``dask scheduler`` and two ``dask worker``
processes on 127.0.0.1, ``prn build --scheduler tcp://…`` as a subprocess, and the store compared array
for array with a build made in this process on a thread pool."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # three Python processes start up (~15-30 s on 2 shared cores)

BIN = Path(sys.executable).parent
N, SHORT, MAX_LONG, SHARD = 6, 96, 160, 2


def _free_port() -> int:
    # Bind to port 0 and read back what the kernel picked; it stays free long enough for the scheduler.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    # A new session per process, so the nanny and the worker it forks are stopped together.
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for p in reversed(procs):
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=5)


@pytest.fixture
def cluster(tmp_path):
    """Address of a scheduler with two single-threaded workers; every process is killed afterwards."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                             "--no-dashboard"], logs / "scheduler.log"))
        for k in (1, 2):
            procs.append(_start([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard",
                                 "--name", f"w{k}", "--local-directory", str(tmp_path / f"w{k}"),
                                 "--memory-limit", "2GiB"], logs / f"worker{k}.log"))
        deadline = time.monotonic() + 90
        while True:  # the scheduler may not listen yet: retry the connection until the deadline
            try:
                with Client(address, timeout=10) as client:
                    client.wait_for_workers(2, timeout=max(1.0, deadline - time.monotonic()))
                    workers = client.scheduler_info()["workers"]
                break
            except (OSError, TimeoutError) as exc:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    text = "\n".join(f.read_text()[-2000:] for f in sorted(logs.iterdir()))
                    pytest.fail(f"cluster did not come up ({exc}):\n{text}")
                time.sleep(0.5)
        assert len(workers) == 2
        yield address
    finally:
        _stop(procs)


def _arrays(url: Path) -> dict[str, np.ndarray]:
    import zarr

    group = zarr.open_group(str(url), mode="r")
    return {path: np.asarray(arr[...]) for path, arr in group.arrays()} | {
        f"{g}/{path}": np.asarray(arr[...]) for g, sub in group.groups() for path, arr in sub.arrays()
    }


def test_build_through_scheduler_matches_local_build(cluster, tmp_path):
    from prn_data.build import BuildConfig, build
    from prn_data.resize import ResizePolicy

    work = tmp_path / "work"
    work.mkdir()
    remote = work / "cluster.zarr"
    cmd = [str(BIN / "prn"), "build", f"synthetic:{N}", "--split", "train", "--base", "simulated",
           "--out", str(remote), "--short", str(SHORT), "--max-long", str(MAX_LONG), "--shard-size", str(SHARD),
           "--scheduler", cluster]
    # cwd=work: synthetic:N generates its scenes under ./cache/synthetic; the store records the absolute root
    # so the worker processes read the same files.
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{N} built" in r.stderr, r.stderr

    cwd = os.getcwd()
    os.chdir(work)  # same dataset root as the subprocess, so both stores describe the same dataset
    try:
        local = build(BuildConfig(dataset=f"synthetic:{N}", split="train", base="simulated",
                                  out=str(work / "local.zarr"), scheduler="threads", workers=1, shard_size=SHARD,
                                  policy=ResizePolicy(short=SHORT, max_long=MAX_LONG)))
    finally:
        os.chdir(cwd)
    assert local.ok and local.built == N

    a, b = _arrays(remote), _arrays(work / "local.zarr")
    assert sorted(a) == sorted(b)
    # every map of the schema is there, through the cluster as locally
    for path in ("image", "done", "checksum", "gt/panoptic", "gt/center", "base/instance", "base/semantic"):
        assert path in a
    assert a["done"].all() and a["done"].shape == (N,)
    for path in a:
        assert a[path].dtype == b[path].dtype, path
        assert a[path].shape == b[path].shape, path
        assert np.array_equal(a[path], b[path]), path
    # the scenes hold things, so the instance maps are not trivially zero on both sides
    assert a["base/instance"].any() and a["gt/center"].max() > 0
