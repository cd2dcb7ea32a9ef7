"""A build killed mid-way (SIGKILL) resumes to exactly the store an uninterrupted build gives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from prn_data.build import BuildConfig, build
from prn_data.errors import StoreError
from prn_data.resize import ResizePolicy
from prn_data.store import open_store

N = 16
PRN = Path(sys.executable).with_name("prn")


@pytest.fixture()
def scenes(tmp_path) -> Path:
    from prn_data.datasets.synthetic import write_synthetic

    write_synthetic(tmp_path / "scenes", "train", N)
    return tmp_path / "scenes"


def _done(url: Path) -> np.ndarray | None:
    """``done`` of a store being written (a cheap poll), or None while it is not a prn store yet."""
    try:
        return open_store(url).done
    except StoreError:
        return None


def _assert_done_are_complete(url: Path) -> np.ndarray:
    """Every sample marked done is complete: its stored bytes match the checksum written with it."""
    st = open_store(url)
    done = st.done
    for i in np.flatnonzero(done):
        assert st.verify_sample(int(i)), f"sample {i} is done but incomplete"
    return done


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, scenes):
    out = tmp_path / "killed.zarr"
    cmd = [str(PRN), "build", f"coco:{scenes}", "--split", "train", "--base", "simulated", "--out", str(out),
           "--workers", "1", "--shard-size", "2", "--short", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    seen_partial = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            done = _done(out)
            if done is not None and 2 <= done.sum() < N:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole build, as an OOM kill or a lost node would
                seen_partial = int(done.sum())
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert seen_partial is not None, "the build finished before it could be killed"
    assert (tmp_path / "killed.zarr.lock").exists()  # left behind by the killed build, but no longer locked
    done = _assert_done_are_complete(out)
    assert seen_partial <= done.sum() < N  # still incomplete, and nothing done was lost

    kw = dict(dataset=f"coco:{scenes}", split="train", base="simulated", scheduler="threads", workers=1,
              shard_size=2, policy=ResizePolicy(short=0))
    resumed = build(BuildConfig(out=str(out), **kw))
    assert resumed.ok and resumed.skipped == int(done.sum()) and resumed.built == N - int(done.sum())
    assert not (tmp_path / "killed.zarr.lock").exists()
    clean = build(BuildConfig(out=str(tmp_path / "clean.zarr"), **kw))
    assert clean.ok and clean.built == N

    a, b = open_store(out), open_store(tmp_path / "clean.zarr")
    assert a.done.all() and b.done.all()
    for path in a.defs:
        np.testing.assert_array_equal(a.array(path)[:], b.array(path)[:], err_msg=path)
    for key in ("canvas", "categories", "resize_policy", "target_params", "dataset", "n_samples", "base"):
        assert a.attrs[key] == b.attrs[key], key


def test_store_cut_short_while_being_created_is_recreated(tmp_path, scenes):
    import zarr

    out = tmp_path / "half.zarr"
    g = zarr.create_group(str(out), attributes={"prn_creating": True})  # as create_store leaves it if killed
    g.create_array("image", shape=(1,), dtype="uint8")
    with pytest.raises(StoreError, match="not a prn store"):
        open_store(out)
    res = build(BuildConfig(f"coco:{scenes}", "train", out=str(out), scheduler="threads", workers=1, limit=2,
                            policy=ResizePolicy(short=0)))
    assert res.ok and res.built == 2 and open_store(out).done.all()


def test_a_second_build_of_a_store_being_built_is_refused(tmp_path, scenes):
    """Two builds would write the same shards at once (zarr loses data then): the second one stops with an
    error naming the store and the first build's process, before writing anything; once that process is
    gone, however it ended, building works again."""
    out = tmp_path / "busy.zarr"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom prn_data.lock import build_lock\n"
         "with build_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        p = subprocess.run([str(PRN), "build", f"coco:{scenes}", "--split", "train", "--out", str(out), "--limit", "2",
                            "--workers", "1", "--short", "0"], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, COLUMNS="400"))
        assert p.returncode == 2, p.stdout + p.stderr
        assert "busy.zarr: another prn build is writing this store" in p.stderr and f"pid {holder.pid}" in p.stderr
        assert "Traceback" not in p.stderr
        assert not out.exists()  # nothing written
    finally:
        holder.kill()
        holder.wait()
    res = build(BuildConfig(f"coco:{scenes}", "train", out=str(out), scheduler="threads", workers=1, limit=2,
                            policy=ResizePolicy(short=0)))
    assert res.ok and res.built == 2 and not (tmp_path / "busy.zarr.lock").exists()


def test_a_file_system_without_flock_builds_unlocked_with_a_warning(tmp_path, monkeypatch):
    import errno

    import prn_data.lock as lock_mod

    def refuse(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_mod.fcntl, "flock", refuse)
    with pytest.warns(UserWarning, match="cannot lock"):
        with lock_mod.build_lock(str(tmp_path / "nfs.zarr")) as held:
            assert held is None
