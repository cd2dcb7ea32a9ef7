"""Processes and ports: a killed trainer takes its DataLoader workers with it, and a local build listens
only on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from prn_data.build import BuildConfig, build
from prn_data.testing import PRN, build_tiny_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import TINY_MODEL  # noqa: E402


def _wait_for(condition, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def test_killed_trainer_takes_its_loader_workers_along(tmp_path):
    store = build_tiny_store(tmp_path / "s.zarr", n=4, short=32, max_long=64)
    cfg = {"model": TINY_MODEL, "data": {"store": store, "batch_size": 2, "num_workers": 1},
           "iters": 1_000_000, "log_every": 1000, "checkpoint_every": 1_000_000, "device": "cpu"}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    trainer = subprocess.Popen(PRN + ["train", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    family: list[psutil.Process] = []
    try:
        parent = psutil.Process(trainer.pid)

        def workers() -> list[psutil.Process]:
            # a worker is a child of the fork server, which is the trainer's child (forkserver context)
            kids = parent.children(recursive=True)
            return [p for p in kids if p.ppid() != trainer.pid] and kids

        family = _wait_for(workers, 120, "the trainer's DataLoader worker")
        assert any(p.ppid() != trainer.pid for p in family)  # the worker itself, not only the fork server
        time.sleep(1.0)  # training under way
        os.kill(trainer.pid, signal.SIGKILL)
        trainer.wait(timeout=10)
        t0 = time.monotonic()
        _wait_for(lambda: not _alive(family), 10, f"{[p.pid for p in _alive(family)]} to exit")
        assert time.monotonic() - t0 < 10
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
        for p in _alive(family):  # only what this test started
            p.kill()


def _listeners(pid: int) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def test_local_build_listens_on_loopback_and_reports_its_dashboard(tmp_path, monkeypatch):
    import prn_data.build as build_module

    monkeypatch.setattr(build_module, "_bokeh_installed", lambda: True)  # as when Bokeh is installed
    before = _listeners(os.getpid())
    seen: dict = {}

    def on_dashboard(url: str) -> None:
        seen["url"] = url
        seen["listening"] = _listeners(os.getpid()) - before

    monkeypatch.chdir(tmp_path)  # the synthetic scenes go to ./cache
    result = build(BuildConfig("synthetic:1", "train", out="s.zarr", workers=1), on_dashboard=on_dashboard)
    assert result.ok and result.built == 1
    assert seen["listening"], "the cluster opened no listener"
    assert {ip for ip, _ in seen["listening"]} == {"127.0.0.1"}, seen["listening"]
    ports = {port for _, port in seen["listening"]}
    assert seen["url"].startswith("http://127.0.0.1:") and seen["url"].endswith("/status")
    assert int(seen["url"].split(":")[2].split("/")[0]) in ports
    assert _listeners(os.getpid()) - before == set()  # all closed after the build
