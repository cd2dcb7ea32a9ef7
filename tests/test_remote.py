"""Remote stores for real, on loopback only (README "Sharing stores"): an ``s3://`` store built, resumed, read,
trained on, evaluated and packed through moto's S3 server; HTTP servers that stall, die mid-read or ignore
byte ranges; ``prn build --out http://…`` refused before any work. Every server here listens on 127.0.0.1."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import s3fs
from moto.server import ThreadedMotoServer

from prn_data.build import BuildConfig, build
from prn_data.errors import StoreError
from prn_data.inspect import store_info
from prn_data.location import (RETRIES_ENV, TIMEOUT_ENV, RemotePolicy, http_supports_ranges, remote_policy,
                               zarr_store)
from prn_data.share import pack
from prn_data.resize import ResizePolicy
from prn_data.store import open_store
from prn_data.testing import build_sample_store, run_prn
from prn_model.evaluate import evaluate_store
from prn_model.train import train

from helpers import tiny_config
from http_serving import Behaviour, free_port, serve

BUCKET = "prn-test"
N = 5  # samples of the S3 store: shards of 2 → [0, 1] [2, 3] [4]
MISSING = 2  # the sample whose image is hidden during the first build


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The CLI's error line (exit 2, no traceback, one line on a wide terminal)."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps at 80 columns in a pipe; keep each message on one line


def _same_samples(a: str, b: str) -> None:
    sa, sb = open_store(a), open_store(b)
    assert len(sa) == len(sb) and sa.done.tolist() == sb.done.tolist()
    for i in range(len(sa)):
        x, y = sa.read_sample(i), sb.read_sample(i)
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], np.ndarray):
                np.testing.assert_array_equal(x[k], y[k], err_msg=f"sample {i} {k}")
            else:
                assert x[k] == y[k], (i, k)


# --------------------------------------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on a free loopback port, with fake credentials in the environment (inherited by every
    ``prn`` subprocess); botocore reads the endpoint from ``AWS_ENDPOINT_URL_S3``."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": endpoint, "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(k, raising=False)
        s3fs.S3FileSystem.clear_instance_cache()  # none made before with another endpoint
        s3fs.S3FileSystem().mkdir(BUCKET)
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from prn_data.datasets.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("remote") / "scenes"
    write_synthetic(root, "train", N)
    return root


def _build_args(scenes: Path, out: str) -> list[str]:
    return ["build", f"coco:{scenes}", "--split", "train", "--base", "simulated", "--out", out, "--shard-size", "2",
            "--short", "32", "--max-long", "64", "--scheduler", "threads", "--workers", "1"]


def _build_config(scenes: Path, out: str) -> BuildConfig:
    """What :func:`_build_args` asks ``prn build`` for."""
    return BuildConfig(dataset=f"coco:{scenes}", split="train", base="simulated", out=out, shard_size=2,
                       policy=ResizePolicy(short=32, max_long=64), scheduler="threads", workers=1)


@pytest.fixture(scope="module")
def s3_store(s3_endpoint, scenes) -> dict:
    """``s3://prn-test/train.zarr`` built with one sample failing (its image hidden), then resumed by
    ``prn build`` once the image is back; and the same store built locally in one go."""
    url = f"s3://{BUCKET}/train.zarr"
    image = sorted((scenes / "train").glob("*.png"))[MISSING]
    hidden = image.with_name(image.name + ".away")
    image.rename(hidden)
    try:
        first = build(_build_config(scenes, url))
    finally:
        hidden.rename(image)
    second = run_prn(*_build_args(scenes, url), check=False)
    local = scenes.parent / "local.zarr"
    assert build(_build_config(scenes, str(local))).ok
    return {"url": url, "local": str(local), "first": first, "second": second}


def test_build_on_s3_is_sharded_and_resumes(s3_store):
    first, second = s3_store["first"], s3_store["second"]
    assert (first.built, first.skipped, [f["index"] for f in first.failures]) == (N - 1, 0, [MISSING])
    assert second.returncode == 0, second.stderr
    assert f"{s3_store['url']}: 1 built, {N - 1} already done, 0 failed of {N}" in second.stderr
    fs = s3fs.S3FileSystem()
    shards = sorted(p.rsplit("/", 1)[-1] for p in fs.find(f"{BUCKET}/train.zarr/gt/panoptic/c"))
    assert len(shards) == 3  # one object per shard of 2, the resumed shard rewritten whole
    # Resumed on S3, it holds exactly what one uninterrupted local build holds.
    _same_samples(s3_store["url"], s3_store["local"])
    st = open_store(s3_store["url"])
    assert st.failures == [] and st.attrs["complete"] is True


def test_info_and_verify_read_s3(s3_store):
    info = json.loads(run_prn("info", "--json", s3_store["url"]).stdout)
    local = store_info(s3_store["local"])
    assert info["summary"] == local["summary"] and info["summary"]["samples_done"] == N
    assert [(a["path"], a["shape"], a["codecs"]) for a in info["arrays"]] == [
        (a["path"], a["shape"], a["codecs"]) for a in local["arrays"]]
    out = run_prn("verify", s3_store["url"]).stdout
    assert out.strip().startswith("OK") and f"{N} samples checked" in out


@pytest.mark.slow
def test_train_and_evaluate_read_s3(s3_store, tmp_path):
    # In this process (build, info, verify and pack run as commands above): what the commands run.
    run = tmp_path / "run"
    assert train(tiny_config(s3_store["url"], run, iters=2), show_progress=False)["step"] == 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2] and (run / "model.pt").is_file()
    res = evaluate_store(s3_store["url"], checkpoint=run / "model.pt", out=tmp_path / "eval", device="cpu")
    assert res["images"] == N and {"base", "prn"} <= set(res)
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["images"] == N
    # The base network's figures come from stored data alone: the same as the local store's, exactly.
    local = evaluate_store(s3_store["local"], base_only=True, out=tmp_path / "local")
    assert res["base"]["All"] == local["base"]["All"]


def test_pack_reads_s3(s3_store, tmp_path):
    z = tmp_path / "train.zip"
    assert Path(run_prn("pack", s3_store["url"], z).stdout.strip().splitlines()[-1]) == z
    fs = s3fs.S3FileSystem()
    root = f"{BUCKET}/train.zarr/"
    objects = {p[len(root):]: fs.cat_file(p) for p in fs.find(root)}
    with zipfile.ZipFile(z) as zf:
        assert sorted(zf.namelist()) == sorted(objects)
        assert all(zf.read(name) == data for name, data in objects.items())
    assert store_info(str(z))["summary"] == store_info(s3_store["local"])["summary"]
    _same_samples(str(z), s3_store["local"])


# ------------------------------------------------------------------------------------------------ HTTP


@pytest.fixture(scope="module")
def coco_store(tmp_path_factory) -> Path:
    """The shipped COCO sample built once per session (2 samples, one shard)."""
    return build_sample_store(tmp_path_factory)


@pytest.fixture
def short_waits(monkeypatch) -> RemotePolicy:
    monkeypatch.setenv(TIMEOUT_ENV, "0.5")
    monkeypatch.setenv(RETRIES_ENV, "1")
    return remote_policy()


def test_policy_from_the_environment(monkeypatch):
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    monkeypatch.delenv(RETRIES_ENV, raising=False)
    assert remote_policy() == RemotePolicy(timeout=30.0, retries=2)  # the README's defaults
    monkeypatch.setenv(TIMEOUT_ENV, "2.5")
    monkeypatch.setenv(RETRIES_ENV, "0")
    assert remote_policy() == RemotePolicy(timeout=2.5, retries=0)
    for env, bad in ((TIMEOUT_ENV, "abc"), (TIMEOUT_ENV, "0"), (TIMEOUT_ENV, "nan"), (RETRIES_ENV, "-1"),
                     (RETRIES_ENV, "1.5")):
        monkeypatch.setenv(env, bad)
        with pytest.raises(StoreError, match=f"{env}='{bad}'"):
            remote_policy()
        monkeypatch.delenv(env)


def test_a_stopped_server_ends_verify_with_an_error_naming_the_url(coco_store, tmp_path, monkeypatch):
    # `python -m http.server` in its own process, stopped with SIGSTOP: the kernel still accepts connections,
    # nothing answers. Before, `prn verify` waited for good.
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              cwd=coco_store.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/{coco_store.name}"
    try:
        deadline = time.monotonic() + 20
        while True:  # wait until it serves
            try:
                http_supports_ranges(url, RemotePolicy(timeout=1, retries=0))
                break
            except StoreError:
                assert time.monotonic() < deadline, "http.server did not start"
                time.sleep(0.1)
        os.kill(server.pid, signal.SIGSTOP)
        monkeypatch.setenv(TIMEOUT_ENV, "1")
        monkeypatch.setenv(RETRIES_ENV, "1")
        t0 = time.monotonic()
        proc = run_prn("verify", url, check=False)
        elapsed = time.monotonic() - t0
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.terminate()
        server.wait(10)
    line = _one_line_error(proc)
    assert url in line and "no answer within 1 s" in line and "2 tries" in line, line
    assert elapsed < 30, elapsed  # 2 tries × 1 s + the command's start-up


@pytest.mark.parametrize("ranges", [True, False])
def test_a_stalled_read_times_out_after_the_tries(coco_store, short_waits, ranges):
    behaviour = Behaviour()
    with serve(coco_store.parent, ranges=ranges, behaviour=behaviour) as root:
        url = f"{root}/{coco_store.name}"
        store = open_store(url)  # opens while the server answers
        behaviour.stall.set()
        asked = len(behaviour.paths)
        t0 = time.monotonic()
        with pytest.raises(StoreError) as err:
            store.read_sample(0)
        elapsed = time.monotonic() - t0
        behaviour.stall.clear()
    msg = str(err.value)
    assert msg.startswith(url) and "no answer within 0.5 s" in msg and "2 tries" in msg, msg
    assert len(behaviour.paths) - asked == 2  # the request and one retry, no more
    assert behaviour.paths[-1] == behaviour.paths[-2] and "/c/" in behaviour.paths[-1]
    assert elapsed < 5, elapsed  # 2 × 0.5 s + one 0.25 s pause, with room for a loaded machine


def test_the_range_probe_times_out(coco_store, short_waits):
    behaviour = Behaviour()
    with serve(coco_store.parent, ranges=True, behaviour=behaviour) as root:
        behaviour.stall.set()
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="probing byte ranges failed .no answer within 0.5 s. after 2 tries"):
            http_supports_ranges(f"{root}/{coco_store.name}")
        assert time.monotonic() - t0 < 5
        behaviour.stall.clear()


@pytest.mark.parametrize("command", ["show", "evaluate"])
def test_a_server_killed_mid_read_is_one_line_naming_the_url(coco_store, short_waits, tmp_path, command):
    # The server answers the metadata, then dies at the first sample chunk a command asks for: later
    # connections are refused.
    behaviour = Behaviour(die_on=r"/panoptic/c/")
    with serve(coco_store.parent, ranges=True, behaviour=behaviour) as root:
        url = f"{root}/{coco_store.name}"
        args = (["show", url, "0", "--out", tmp_path / "x.png"] if command == "show"
                else ["evaluate", "--store", url, "--base-only", "--out", tmp_path / "eval"])
        t0 = time.monotonic()
        proc = run_prn(*args, check=False)
        elapsed = time.monotonic() - t0
    assert behaviour.dead.is_set()
    line = _one_line_error(proc)
    assert line.startswith(f"error: {url}: reading ") and "after 2 tries" in line, line
    assert "/c/" in line, line  # a sample's chunk (reads of one sample's arrays run concurrently)
    assert elapsed < 60, elapsed
    assert not (tmp_path / "x.png").exists()


def test_zip_over_a_server_without_byte_ranges(coco_store, tmp_path, monkeypatch):
    # `python -m http.server` ignores Range: the zip is downloaded once to a temporary file.
    served = tmp_path / "served"
    served.mkdir()
    pack(coco_store, served / "coco.zip")
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with serve(served, ranges=False) as root:
        for url in (f"{root}/coco.zip", f"zip::{root}/coco.zip"):
            assert store_info(url)["summary"] == store_info(str(coco_store))["summary"]
            _same_samples(url, str(coco_store))
        zs = zarr_store(f"{root}/coco.zip")
        assert [p.suffix for p in temp.iterdir()] == [".zip"]  # one download, while the store is open
        del zs
        gc.collect()
        assert list(temp.iterdir()) == []  # and removed with it
        out = run_prn("verify", f"{root}/coco.zip").stdout
    assert out.strip().startswith("OK") and "2 samples checked" in out


def test_build_to_http_is_refused_before_any_work(tmp_path):
    # A dataset that does not exist: the --out error comes first, so nothing was read or generated.
    t0 = time.monotonic()
    proc = run_prn("build", f"coco:{tmp_path / 'nothing'}", "--split", "train", "--out",
                   "http://127.0.0.1:9/stores/x.zarr", check=False)
    line = _one_line_error(proc)
    assert line == ("error: http://127.0.0.1:9/stores/x.zarr: HTTP stores are read-only; build locally or to "
                    "s3://… and share that"), line
    assert time.monotonic() - t0 < 30
    with pytest.raises(StoreError, match="HTTP stores are read-only"):
        zarr_store("https://127.0.0.1:9/x.zarr", "r+")
