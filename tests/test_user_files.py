"""No user file is overwritten or deleted, and a store's metadata never decides where anything is written
(README "Sharing stores", "Training"): paths recorded in a store are only read; unpack, pack, build and train
refuse targets that are not theirs; a hostile zip is refused before a byte is written."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import struct
import subprocess
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from prn_data.build import BuildConfig, build
from prn_data.datasets import open_recorded
from prn_data.errors import PrnError, StoreError
from prn_data.lock import build_lock, lock_path
from prn_data.resize import ResizePolicy
from prn_data.share import MAX_RATIO, pack, unpack
from prn_data.store import open_store
from prn_data.targets import TargetParams
from prn_data.testing import PRN
from prn_model.checkpoint import read_checkpoint
from prn_model.config import load_config, override
from prn_model.evaluate import evaluate_store
from prn_model.train import TrainingError, train

from helpers import tiny_config

SMALL = ResizePolicy(short=64, max_long=96)


def run_prn(*args, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``prn ARGS`` as a user runs it, wide enough that rich does not wrap an error message."""
    proc = subprocess.run(PRN + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env=dict(os.environ, COLUMNS="1000"))
    if check and proc.returncode != 0:
        raise AssertionError(f"prn {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes (what must not change)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line_error(proc, *needles: str) -> str:
    """The command failed with prn's one-line error (exit 2, no traceback) holding every needle."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert "Traceback" not in text, text
    flat = " ".join(text.split())
    for n in needles:
        assert n in flat, (n, text)
    return flat


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory) -> Path:
    """A 2-sample synthetic store (simulated base) built in its own folder, its scenes in that folder's
    cache/synthetic/train-2."""
    root = tmp_path_factory.mktemp("synthetic-store")
    with contextlib.chdir(root):
        res = build(BuildConfig(dataset="synthetic:2", split="train", base="simulated", out=str(root / "s.zarr"),
                                scheduler="threads", workers=1, shard_size=2, policy=SMALL,
                                params=TargetParams(sigma=2.0)))
    assert res.ok
    return root / "s.zarr"


def _point_dataset_at(store: Path, victim: Path) -> None:
    """Edit the store's ``dataset`` attribute as a hostile maker would: root, options.root and every gt path
    now name ``victim``."""
    meta = json.loads((store / "zarr.json").read_text())
    d = meta["attributes"]["dataset"]
    old = d["root"]
    d["root"] = d["options"]["root"] = str(victim)
    d["gt"] = {k: v.replace(old, str(victim)) if isinstance(v, str) else v for k, v in d["gt"].items()}
    (store / "zarr.json").write_text(json.dumps(meta))


@pytest.fixture
def hostile(synthetic_store, tmp_path) -> tuple[Path, Path, Path]:
    """(store, victim, workdir): a copy of the synthetic store whose dataset paths name ``victim``, a user's
    folder holding its own annotations/panoptic_train.json, and an empty working folder."""
    store = tmp_path / "s.zarr"
    shutil.copytree(synthetic_store, store)
    victim = tmp_path / "victim"
    (victim / "annotations").mkdir(parents=True)
    (victim / "annotations" / "panoptic_train.json").write_text('{"mine": true}')
    (victim / "notes.txt").write_text("the user's")
    _point_dataset_at(store, victim)
    work = tmp_path / "work"
    work.mkdir()
    return store, victim, work


# ------------------------------------------------------------------- §3 store metadata decides no write


def test_deep_verify_never_writes_where_the_store_points(hostile):
    store, victim, work = hostile
    before = _tree(victim)
    proc = run_prn("verify", store, "--deep", "2", cwd=work)
    assert proc.stdout.strip().startswith("OK") and "2 recomputed" in proc.stdout
    assert _tree(victim) == before
    # the scenes were generated again under the working folder's cache/regenerated/, nowhere else
    regen = list((work / "cache" / "regenerated").iterdir())
    assert len(regen) == 1 and regen[0].name.startswith("synthetic-train-2-")
    assert sorted(p.name for p in (regen[0] / "train").iterdir()) == ["train_000000.png", "train_000001.png"]


def test_evaluate_never_writes_where_the_store_points(hostile):
    store, victim, work = hostile
    before = _tree(victim)
    res = json.loads(run_prn("evaluate", "--store", store, "--base-only", "--device", "cpu", "--json",
                             cwd=work).stdout)
    assert _tree(victim) == before
    assert res["scored"] == "original" and res["images"] == 2
    assert "cache/regenerated/synthetic-train-2-" in res["ground_truth"]
    assert 0 < res["base"]["All"]["pq"] <= 1
    # --gt names a folder to read, never one to generate into: the user's folder is refused, untouched
    with contextlib.chdir(work), pytest.raises(PrnError, match=f"{victim}: not a complete generation"):
        evaluate_store(str(store), base_only=True, gt=victim)
    assert _tree(victim) == before


def test_recorded_dataset_is_read_where_complete(synthetic_store, tmp_path):
    desc = open_store(str(synthetic_store)).attrs["dataset"]
    recorded = Path(desc["root"])
    before = {p: p.stat().st_mtime_ns for p in recorded.rglob("*")}
    with contextlib.chdir(tmp_path):
        ds = open_recorded(desc, max_samples=2)
        assert Path(ds.root) == recorded and ds.keys() == ["train_000000", "train_000001"]
        # a synthetic:1000 store of 2 samples regenerates 2 scenes, not 1000
        big = dict(desc, spec="synthetic:1000", options=dict(desc["options"], root=str(tmp_path / "nothing")))
        assert len(open_recorded(big, max_samples=2)) == 2
        with pytest.raises(PrnError, match="not a plain name"):
            open_recorded(dict(big, split="../../escape"), max_samples=2)
    assert {p: p.stat().st_mtime_ns for p in recorded.rglob("*")} == before
    assert not (tmp_path / "nothing").exists() and not (tmp_path.parent / "escape").exists()


# ------------------------------------------------------------------------------ §4 unpack and pack


@pytest.fixture(scope="module")
def packed(synthetic_store, tmp_path_factory) -> Path:
    return pack(synthetic_store, tmp_path_factory.mktemp("packed") / "s.zip")


def test_unpack_overwrites_only_a_prn_store(packed, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    proc = run_prn("unpack", packed, mine, "--overwrite", check=False)
    _one_line_error(proc, str(mine), "not a prn store")
    assert _tree(mine) == {"thesis.tex": b"years of work"}
    # a prn store is replaced, and only once the new one is complete
    store = tmp_path / "store.zarr"
    unpack(packed, store)
    (store / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                 "attributes": {"prn_schema": 1}}))
    run_prn("unpack", packed, store, "--overwrite")
    assert len(open_store(str(store))) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "store.zarr"]  # no temporary left


def test_unpack_leaves_a_partial_folder_it_did_not_make(packed, tmp_path):
    partial = tmp_path / "out.zarr.partial"
    partial.mkdir()
    (partial / "keep.txt").write_text("the user's")
    out = unpack(packed, tmp_path / "out.zarr")
    assert len(open_store(str(out))) == 2
    assert _tree(partial) == {"keep.txt": b"the user's"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr", "out.zarr.partial"]


def test_unpack_onto_a_file_or_the_working_folder(packed, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    _one_line_error(run_prn("unpack", packed, f, "--overwrite", check=False), f"{f}: is a file")
    with pytest.raises(StoreError, match="already exists"):
        unpack(packed, f)
    assert f.read_text() == "mine"
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_text("a")
    with contextlib.chdir(work):
        with pytest.raises(StoreError, match="already exists"):
            unpack(packed, ".")
        for target in (".", "..", "sub/.."):
            with pytest.raises(StoreError, match="working folder"):
                unpack(packed, target, overwrite=True)
    assert _tree(work) == {"a.txt": b"a"}


def _zip_with(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name, and writes it
        for name, data, kind in members:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=kind)
    return path


def test_unpack_checks_a_hostile_zip_first(tmp_path, monkeypatch):
    meta = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"prn_schema": 1}}).encode()
    out = tmp_path / "out.zarr"

    def refused(z: Path, match: str) -> None:
        with pytest.raises(StoreError, match=match):
            unpack(z, out)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in tmp_path.glob("*.zip"))

    # two zarr.json: which one is the store's? (today: exit 0 and a store that does not open)
    dup = _zip_with(tmp_path / "dup.zip", [("zarr.json", meta, zipfile.ZIP_STORED),
                                           ("zarr.json", b"{}", zipfile.ZIP_STORED)])
    refused(dup, "'zarr.json' appears twice")
    # a STORED member whose central directory claims 200 MB
    big = _zip_with(tmp_path / "big.zip", [("zarr.json", meta, zipfile.ZIP_STORED),
                                           ("image/c/0/0/0/0", b"x" * 100, zipfile.ZIP_STORED)])
    raw = bytearray(big.read_bytes())
    cd = raw.rindex(b"PK\x01\x02")  # the last central directory entry: image/c/0/0/0/0
    raw[cd + 24 : cd + 28] = struct.pack("<I", 200_000_000)
    big.write_bytes(bytes(raw))
    refused(big, "declares 200000000 bytes but stores 100")
    # a deflated member that expands 1000×: a zip bomb
    bomb = _zip_with(tmp_path / "bomb.zip", [("zarr.json", meta, zipfile.ZIP_STORED),
                                             ("gt/panoptic/c/0/0/0", bytes(20 << 20), zipfile.ZIP_DEFLATED)])
    refused(bomb, f"over {MAX_RATIO}×")
    # an honest zip on a disk without room for it
    ok = _zip_with(tmp_path / "ok.zip", [("zarr.json", meta, zipfile.ZIP_STORED),
                                         ("image/c/0/0/0/0", bytes(4096), zipfile.ZIP_STORED)])
    monkeypatch.setattr("prn_data.share.shutil.disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 0, 1000))
    refused(ok, "needs 0.0 MB, but the disk has only 0.0 MB")
    monkeypatch.undo()
    assert sorted(p.relative_to(out).as_posix() for p in unpack(ok, out).rglob("*") if p.is_file()) == [
        "image/c/0/0/0/0", "zarr.json"]


def test_pack_refuses_a_link_out_of_the_store(synthetic_store, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(synthetic_store, store)
    secret = tmp_path / "hostname"
    secret.write_text("my-machine")
    (store / "image" / "notes").symlink_to(secret)
    proc = run_prn("pack", store, tmp_path / "s.zip", check=False)
    _one_line_error(proc, str(store / "image" / "notes"), "outside the store")
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob(".s.zip*"))
    # a link that stays inside the store packs the file it names
    (store / "image" / "notes").unlink()
    (store / "image" / "notes").symlink_to(store / "zarr.json")
    with zipfile.ZipFile(pack(store, tmp_path / "s.zip")) as zf:
        assert zf.read("image/notes") == (store / "zarr.json").read_bytes()


# ------------------------------------------------------------------------------------------ §4 train


@pytest.fixture(scope="module")
def train_store(synthetic_store) -> str:
    return str(synthetic_store)


def test_train_refuses_a_folder_that_is_not_a_run(train_store, tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    cfg_text = (f"# my settings\nmodel: {json.dumps(tiny_config(train_store, run).model)}\n"
                f"data: {{store: {train_store}, batch_size: 2, num_workers: 0}}\niters: 1\ndevice: cpu\n")
    (run / "config.yaml").write_text(cfg_text)
    (run / "model.pt").write_bytes(b"my own weights")
    before = _tree(run)
    proc = run_prn("train", run / "config.yaml", "--out", run, check=False)
    _one_line_error(proc, str(run), "not a prn run", "config.yaml", "another --out")
    assert _tree(run) == before
    with pytest.raises(TrainingError, match="not a prn run"):
        train(override(load_config(run / "config.yaml"), out=str(run)), resume=True, show_progress=False)
    assert _tree(run) == before


@pytest.fixture(scope="module")
def finished_run(train_store, tmp_path_factory) -> Path:
    """A 2-step run with a checkpoint after each step."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(tiny_config(train_store, out, iters=2, checkpoint_every=1, **{"data.batch_size": 1}), show_progress=False)
    return out


@pytest.mark.parametrize("change,named", [
    ({"optim.lr": 0.003}, "optim.lr (--lr): recorded 0.001, now 0.003"),
    ({"seed": 7}, "seed (--seed): recorded 0, now 7"),
    ({"data.batch_size": 2}, "data.batch_size (--batch-size): recorded 1, now 2"),
    ({"data.store": "other.zarr"}, "data.store (--store): recorded"),
])
def test_resume_with_a_changed_setting_is_refused(train_store, finished_run, tmp_path, change, named):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    cfg = tiny_config(train_store, run, iters=2, checkpoint_every=1, **{"data.batch_size": 1})
    before = _tree(run)
    with pytest.raises(TrainingError) as err:
        train(override(cfg, **change), resume=True, show_progress=False)
    assert named in str(err.value) and str(run / "checkpoints" / "step_0000002.pt") in str(err.value)
    assert _tree(run) == before
    # settings that only change where, how fast or how verbosely it runs may change
    got = train(override(cfg, log_every=2, keep_checkpoints=1, **{"data.skip_bad": True}), resume=True,
                show_progress=False)
    assert got["step"] == 2 and load_config(run / "config.yaml").data.skip_bad


def test_truncated_newest_checkpoint_names_the_previous_one(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    ck = run / "checkpoints"
    newest, previous = ck / "step_0000002.pt", ck / "step_0000001.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a copy cut short
    cfg = read_checkpoint(previous)["config"]
    proc = run_prn("train", run / "config.yaml", "--out", run, "--resume", "--iters", "2", check=False)
    _one_line_error(proc, str(newest), "not a loadable checkpoint", f"previous checkpoint {previous} is intact",
                    f"mv {newest} {newest}.damaged", "--resume")
    # following the advice resumes from step 1
    newest.rename(newest.with_name(newest.name + ".damaged"))
    got = train(override(load_config(run / "config.yaml"), out=str(run)), resume=True, show_progress=False)
    assert got["step"] == 2 and got["last_metrics"]["step"] == 2
    assert cfg["seed"] == load_config(run / "config.yaml").seed
    torch.testing.assert_close(read_checkpoint(run / "model.pt")["model"], read_checkpoint(ck / "step_0000002.pt")["model"])


# ------------------------------------------------------------------------------- §8 build --out, lock


def test_build_out_a_zip_a_file_or_a_link(tmp_path):
    args = ["build", "synthetic:2", "--split", "train", "--base", "none", "--short", "64", "--max-long", "96",
            "--workers", "1", "--scheduler", "threads"]
    proc = run_prn(*args, "--out", tmp_path / "x.zip", cwd=tmp_path, check=False)
    _one_line_error(proc, "not a zip", f"prn pack {tmp_path / 'x.zarr'} {tmp_path / 'x.zip'}")
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "cache").exists()
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    (tmp_path / "link").symlink_to(f)
    (tmp_path / "dead").symlink_to(tmp_path / "nowhere")
    for out, problem in ((f, "is a file"), (tmp_path / "link", "is a file"), (tmp_path / "dead", "does not exist")):
        with pytest.raises(StoreError, match=problem):
            build(BuildConfig(dataset="synthetic:2", split="train", out=str(out), policy=SMALL))
    assert f.read_text() == "mine" and not (tmp_path / "nowhere").exists()
    # a link to a folder is built through
    (tmp_path / "real").mkdir()
    (tmp_path / "dlink").symlink_to(tmp_path / "real")
    with contextlib.chdir(tmp_path):
        res = build(BuildConfig(dataset="synthetic:2", split="train", out=str(tmp_path / "dlink"), policy=SMALL,
                                scheduler="threads", workers=1))
    assert res.ok and len(open_store(str(tmp_path / "real"))) == 2 and (tmp_path / "dlink").is_symlink()


def test_lock_on_a_full_disk_is_a_one_line_error(tmp_path, monkeypatch):
    store = tmp_path / "s.zarr"

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("prn_data.lock.os.write", full)
    with pytest.raises(StoreError, match=r"s\.zarr: cannot write the build lock .*s\.zarr\.lock \(No space left on device\)"):
        with build_lock(str(store)):
            pass
    assert not lock_path(str(store)).exists()
    monkeypatch.undo()
    # a file of the user's that happens to be named <store>.lock is neither overwritten nor deleted
    lock_path(str(store)).write_text("my notes")
    with pytest.raises(StoreError, match="is not a prn build lock"):
        with build_lock(str(store)):
            pass
    assert lock_path(str(store)).read_text() == "my notes"
