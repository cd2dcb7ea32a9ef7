"""Loader batches in reusable slabs (prn_model.slabs) equal the batches made in fresh memory, never change under
the trainer while it holds them, and the thread counts prn chooses (README "Parallelism") are applied: loader
workers, `prn evaluate`, `prn refine`."""

from __future__ import annotations

import json
import os

import pytest
import torch

from prn_data import heap
from prn_data.testing import build_tiny_store, run_prn
from prn_model.augment import AugmentConfig, GridMaskConfig
from prn_model.batch import collate, decode_batch
from prn_model.data import StoreDataset, make_loader
from prn_model.devices import ThreadsError, intra_op_threads, resolve_threads
from prn_model.sampler import TrainSampler
from prn_model.slabs import SlabBatch, pool

CFG = AugmentConfig(flip_prob=0.5, gridmask=GridMaskConfig(prob=0.5, d_min=8, d_max=16))


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    return build_tiny_store(tmp_path_factory.mktemp("store") / "tiny.zarr")


class Reporting(StoreDataset):
    """A StoreDataset whose batches also say, from the process that made them, torch's thread count and how
    many batches went into a reused slab."""

    def __getitem__(self, key):
        b = super().__getitem__(key)
        info = {"_threads": torch.get_num_threads(), "_reused": pool().reused, "_pid": os.getpid(),
                "_heap": heap._state}
        (b.extra if isinstance(b, SlabBatch) else b).update(info)
        return b


def _batches(ds, workers: int, n: int, **kw) -> list[dict]:
    it = iter(make_loader(ds, 2, TrainSampler(len(ds), seed=5), num_workers=workers, **kw))
    out = [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in next(it).items()} for _ in range(n)]
    del it
    return out


@pytest.mark.parametrize("decode", ["loader", "device"])
def test_slab_batches_equal_fresh_memory_batches(store_url, decode):
    """The new path (slabs, in-process and from a worker; flips fused into the copy of kept codes) gives the
    batches of the old one (fresh memory per batch, each sample flipped on its own, then collated)."""
    ds = StoreDataset(store_url, CFG, seed=6, decode=decode)
    keys = list(range(6, 18))  # epochs 1 and 2: some flipped, some masked
    ref = collate([ds[k] for k in keys])  # per-sample path: codes flipped by apply_flip / decoded one by one
    ds.reuse_memory = False
    old = ds[keys]
    ds.reuse_memory = True
    new = ds[keys]
    assert set(new) == set(old) == set(ref)
    for key in ref:
        assert new[key].dtype == ref[key].dtype and torch.equal(new[key], ref[key]), key
        assert torch.equal(new[key], old[key]), key
    if decode == "device":
        assert new["center_offset"].dtype == torch.int16
        plain = decode_batch(collate([StoreDataset(store_url, CFG, seed=6)[k] for k in keys]), {})
        for key, t in decode_batch(new, ds.decode_spec).items():
            assert torch.equal(t, plain[key]), key
    # through a real worker, against the old path in this process
    ds.reuse_memory = False
    before = _batches(ds, 0, 3)
    ds.reuse_memory = True
    for b0, b1 in zip(before, _batches(ds, 1, 3)):
        for key, t in b0.items():
            assert torch.equal(t, b1[key]), key


def test_a_held_batch_is_never_overwritten_and_free_slabs_are_reused(store_url):
    ds = Reporting(store_url, CFG, seed=7)
    it = iter(make_loader(ds, 2, TrainSampler(len(ds), seed=7), num_workers=1))
    held = next(it)
    snapshot = {k: v.clone() for k, v in held.items() if isinstance(v, torch.Tensor)}
    view = held["instance"][0, 2]  # a view alone keeps the slab busy too
    view_before = view.clone()
    del held
    last = None
    for _ in range(12):  # more batches than the worker keeps slabs: it must reuse the ones given back
        last = next(it)
    assert last["_pid"] != os.getpid() and last["_reused"] > 0
    assert torch.equal(view, view_before)
    del view
    del it
    # in this process: a held batch keeps its slab; one dropped is written again
    p = pool()
    a = ds[[0, 1]]
    a_image = a["image"].clone()
    reused = p.reused
    b = ds[[2, 3]]
    assert torch.equal(a["image"], a_image) and b["image"].data_ptr() != a["image"].data_ptr()
    del a
    c = ds[[4, 5]]
    assert p.reused > reused and torch.equal(c["image"], collate([ds[4], ds[5]])["image"])


def test_loader_workers_run_at_the_configured_threads(store_url):
    ds = Reporting(store_url)
    assert {b["_threads"] for b in _batches(ds, 1, 2)} == {1}  # the default
    assert {b["_threads"] for b in _batches(ds, 1, 2, worker_threads=2)} == {2}


@pytest.mark.skipif(not heap.is_glibc(), reason="the heap thresholds are glibc's")
def test_loader_workers_keep_freed_blocks(store_url):
    # a fresh worker process has set glibc's thresholds before its first read (prn_data/heap.py)
    ds = Reporting(store_url, CFG)
    assert {b["_heap"] for b in _batches(ds, 1, 2)} == {True}


def test_threads_setting(monkeypatch):
    monkeypatch.delenv("PRN_THREADS", raising=False)
    assert resolve_threads() == 1 and resolve_threads(3) == 3
    monkeypatch.setenv("PRN_THREADS", "2")
    assert resolve_threads() == 2 and resolve_threads(1) == 1
    before = torch.get_num_threads()
    with intra_op_threads() as n:
        assert n == 2 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    monkeypatch.setenv("PRN_THREADS", "many")
    with pytest.raises(ThreadsError, match="PRN_THREADS='many'"):
        resolve_threads()
    with pytest.raises(ThreadsError, match="--threads=0"):
        resolve_threads(0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from helpers import tiny_trained_run

    return tiny_trained_run(tmp_path_factory.mktemp("threads"))


def test_evaluate_and_refine_apply_the_thread_count(trained, tmp_path, monkeypatch):
    store, ckpt = trained
    p = run_prn("evaluate", "--store", store, "--checkpoint", ckpt, "--device", "cpu", "--threads", "2", "--json")
    assert json.loads(p.stdout)["threads"] == 2
    monkeypatch.setenv("PRN_THREADS", "3")
    p = run_prn("evaluate", "--store", store, "--checkpoint", ckpt, "--device", "cpu", "--json")
    assert json.loads(p.stdout)["threads"] == 3
    monkeypatch.delenv("PRN_THREADS")

    from prn_model.refine import refine_to_folder

    before = torch.get_num_threads()
    summary = refine_to_folder("synthetic:2", "simulated", ckpt, tmp_path / "r", split="val", threads=2)
    assert summary["threads"] == 2 and summary["images"] == 2 and torch.get_num_threads() == before
    summary = refine_to_folder("synthetic:2", "simulated", ckpt, tmp_path / "r1", split="val")
    assert summary["threads"] == 1
    monkeypatch.setenv("PRN_THREADS", "0")
    p = run_prn("refine", "--checkpoint", ckpt, "--images", "synthetic:2", "--split", "val", "--base", "simulated",
                "--out", tmp_path / "r2", check=False)
    assert p.returncode == 2 and "PRN_THREADS=0: expected a whole number" in p.stderr and "Traceback" not in p.stderr
