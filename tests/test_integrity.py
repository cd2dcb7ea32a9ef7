"""A damaged store is never read silently (README "Sharing stores"): every chunk ends with its CRC32C
(zarr's ``crc32c`` codec, so plain zarr readers check it too), a missing chunk of a done sample is an
error, a whole-sample read checks the sample checksum, and a store built before per-chunk checksums still
reads, checked by its sample checksum. Each damage is made on disk in a tiny built store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

import prn_data.build
from prn_data.errors import StoreError
from prn_data.store import DamagedSample, create_store, open_store
from prn_data.store.schema import inner_codecs
from prn_data.store.shards import Layout, decompress_into, parse_index
from prn_data.testing import PRN, build_tiny_store
from prn_model.data import StoreDataset, make_loader
from prn_model.sampler import TrainSampler

from helpers import tiny_config

N = 4


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A tiny store as `prn build` makes it now: 4 samples, canvas 32×64, one shard."""
    return Path(build_tiny_store(tmp_path_factory.mktemp("integrity") / "s.zarr", n=N, short=32, max_long=64))


@pytest.fixture(scope="module")
def built_old(tmp_path_factory) -> Path:
    """The same store built the way prn built stores before per-chunk checksums (no crc32c codec)."""
    mp = pytest.MonkeyPatch()
    real = prn_data.build.create_store
    mp.setattr(prn_data.build, "create_store", lambda *a, **k: real(*a, **k, crc32c=False))
    try:
        return Path(build_tiny_store(tmp_path_factory.mktemp("integrity-old") / "old.zarr", n=N, short=32,
                                     max_long=64))
    finally:
        mp.undo()


@pytest.fixture
def store(built, tmp_path) -> Path:
    """A fresh copy of the built store to damage."""
    return Path(shutil.copytree(built, tmp_path / "s.zarr"))


def _shard_file(root: Path, path: str) -> Path:
    ndim = len(json.loads((root / path / "zarr.json").read_text())["shape"])
    return root / path / "c" / "0" / Path(*(["0"] * (ndim - 1)))


def _span(root: Path, path: str, i: int) -> tuple[int, int]:
    """(offset, nbytes) of sample ``i``'s chunk of map array ``path`` in its shard file."""
    blob = _shard_file(root, path).read_bytes()
    off, nb = parse_index(blob, open_store(root).shard_size)[i].tolist()
    return int(off), int(nb)


def _prn(*args, cwd: Path, check: bool = False) -> subprocess.CompletedProcess:
    """``prn ARGS`` with a wide terminal (rich wraps an error line at the terminal width otherwise)."""
    proc = subprocess.run(PRN + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env=dict(os.environ, COLUMNS="1000"))
    assert not check or proc.returncode == 0, proc.stderr
    return proc


def _flip_silently(root: Path, path: str, i: int, crc: bool = True) -> None:
    """Flip one byte inside sample ``i``'s zstd chunk of ``path`` at a place where the chunk still
    decompresses to the right length with other values: the damage that used to read silently."""
    f = _shard_file(root, path)
    blob = bytearray(f.read_bytes())
    off, nb = _span(root, path, i)
    payload_end = off + nb - (4 if crc else 0)
    d = open_store(root).defs[path]
    good = np.empty(d.shape, d.dtype)
    decompress_into(bytes(blob[off:payload_end]), good, zstd=True)
    for pos in range(payload_end - 1, off + 8, -1):  # from the end: literals, past the frame header
        trial = bytearray(blob[off:payload_end])
        trial[pos - off] ^= 0x10
        out = np.empty(d.shape, d.dtype)
        try:
            decompress_into(bytes(trial), out, zstd=True)
        except StoreError:
            continue
        if not np.array_equal(out, good):
            blob[pos] ^= 0x10
            f.write_bytes(bytes(blob))
            return
    raise AssertionError(f"no silent flip found in {path} sample {i}")


def _where(root: Path, i: int, image_id: str, array: str | None) -> str:
    return rf"{root}: sample {i} \(image id {image_id}\)" + (rf", array {array}: " if array else ": ")


# ---------------------------------------------------------------------------------------------- format


def test_chunks_are_zarrs_own_bytes_and_plain_zarr_checks_them(store):
    """What the build's direct encoder wrote is byte for byte what zarr's codec pipeline writes for the
    declared codecs (bytes, zstd, crc32c); zarr reads it, and raises on a flipped byte."""
    st = open_store(store)
    g = zarr.open_group(str(store), mode="r")
    for p in st.map_paths:
        a = g[p]
        assert a.metadata.to_dict()["codecs"][0]["configuration"]["codecs"][-1] == {"name": "crc32c"}, p
        value = a[1]  # zarr's own pipeline decodes the build's bytes
        np.testing.assert_array_equal(value, st.read_codes(1, [p])[p], err_msg=p)
        d = st.defs[p]
        mem = MemoryStore()
        serializer, compressors = inner_codecs(d.codec, crc32c=True)
        one = zarr.create_array(mem, shape=(1,) + d.shape, chunks=(1,) + d.shape, dtype=d.dtype, fill_value=d.fill,
                                serializer=serializer, compressors=compressors)
        one[0] = value
        key = "c/0" + "/0" * len(d.shape)
        from zarr.core.sync import sync

        want = sync(mem.get(key, prototype=default_buffer_prototype())).to_bytes()
        assert st.chunk_bytes(p, 1) == want, p
    for p in ("size", "orig_size", "image_id", "gt/segments", "checksum", "done"):
        assert g[p].metadata.to_dict()["codecs"][-1] == {"name": "crc32c"}, p
    assert g["size"][:].shape == (N, 2) and str(g["image_id"][2]) == "train_000002"

    _flip_silently(store, "gt/center", 2)
    g = zarr.open_group(str(store), mode="r")
    g["gt/center"][1]  # the other samples' chunks are intact
    with pytest.raises(ValueError, match="checksum"):
        g["gt/center"][2]


# ------------------------------------------------------------------------------------ (a) flipped byte


@pytest.mark.parametrize("path", ["gt/center", "image"])
def test_a_flipped_byte_in_a_map_chunk_is_named(store, path):
    _flip_silently(store, path, 2)
    st = open_store(store)
    where = _where(store, 2, "train_000002", path) + r"damaged chunk \(CRC32C mismatch\)"
    with pytest.raises(DamagedSample, match=where) as err:
        st.read_sample(2)
    assert (err.value.index, err.value.image_id, err.value.array) == (2, "train_000002", path)
    with pytest.raises(DamagedSample, match=where):
        st.read_sample(2, arrays=[path])
    with pytest.raises(DamagedSample, match=where):
        st.read_codes(2, [path])
    with pytest.raises(DamagedSample, match=where):
        st.read_batch([0, 2])
    st.read_sample(1)  # other samples read as before
    ds = StoreDataset(str(store))
    with pytest.raises(DamagedSample, match=where):
        ds[2]
    with pytest.raises(DamagedSample, match=where):
        for _ in make_loader(ds, 2, TrainSampler(N, seed=0), num_workers=0):
            pass


def test_a_worker_raises_the_damage_as_itself_or_skips_it(store):
    """Through a DataLoader worker the trainer gets the DamagedSample itself, not torch's traceback text;
    with ``skip_bad`` the next sample takes its place and the batch lists the skipped one."""
    _flip_silently(store, "gt/center", 2)
    ds = StoreDataset(str(store))
    with pytest.raises(DamagedSample, match=_where(store, 2, "train_000002", "gt/center")) as err:
        for _ in make_loader(ds, 2, TrainSampler(N, seed=0), num_workers=1):
            pass
    assert "\n" not in str(err.value)
    ds = StoreDataset(str(store), skip_bad=True)
    batches = list(make_loader(ds, 2, [0, 1, 2, 3], num_workers=1))
    assert [b["index"].tolist() for b in batches] == [[0, 1], [3, 3]]
    assert "_skipped" not in batches[0] and batches[1]["_skipped"] == [
        {"index": 2, "image_id": "train_000002", "array": "gt/center", "reason": "damaged chunk (CRC32C mismatch)",
         "replaced_by": 3}]


# ---------------------------------------------------------------------------------- (b) missing chunk


def test_a_deleted_shard_is_an_error_for_done_samples_only(store):
    _shard_file(store, "gt/center").unlink()
    st = open_store(store)
    missing = r"chunk missing \(its shard file or its slot in the shard is gone\)"
    for i in range(N):
        with pytest.raises(DamagedSample, match=_where(store, i, f"train_00000{i}", "gt/center") + missing):
            st.read_sample(i, arrays=["gt/center"])
    with pytest.raises(DamagedSample, match=missing):
        StoreDataset(str(store))[0]
    st.read_sample(0, arrays=["gt/panoptic"])  # the other arrays' shards are intact
    # a sample that is not done: its empty slot reads as the fill value, as zarr reads it
    zarr.open_group(str(store), mode="r+")["done"][3] = False
    st = open_store(store)
    assert (st.read_codes(3, ["gt/center"])["gt/center"] == 0).all()
    with pytest.raises(StoreError, match="sample 3 is not done"):
        st.read_sample(3)


def test_an_empty_slot_of_a_done_sample_is_an_error(store):
    """A shard rewritten without one done sample's chunk (its index slot empty)."""
    from prn_data.store.shards import assemble_shard, parse_shard

    f = _shard_file(store, "base/semantic")
    chunks = parse_shard(default_buffer_prototype().buffer.from_bytes(f.read_bytes()), 256, "x")
    f.write_bytes(assemble_shard([None if j == 1 else chunks.get(j) for j in range(256)], 3))
    with pytest.raises(DamagedSample, match=_where(store, 1, "train_000001", "base/semantic") + "chunk missing"):
        open_store(store).read_batch([0, 1])


# ------------------------------------------------------------------------------------ (c) small arrays


@pytest.mark.parametrize("path, read", [("size", ["size"]), ("gt/segments", ["gt/segments"])])
def test_a_damaged_small_chunk_is_named(store, path, read):
    f = store / path / "c" / ("0/0" if path == "size" else "0")  # (N, 2) chunks are c/k/0, (N,) ones c/k
    blob = bytearray(f.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    f.write_bytes(bytes(blob))
    st = open_store(store)
    with pytest.raises(DamagedSample, match=_where(store, 1, "train_000001", path) + r"damaged chunk \(ValueError: "
                       r"Stored and computed checksum do not match"):
        st.read_sample(1, arrays=read)
    with pytest.raises(DamagedSample, match=path):
        st.read_sample(0)
    with pytest.raises(ValueError, match="checksum"):  # plain zarr too
        zarr.open_group(str(store), mode="r")[path][:]
    if path == "size":
        with pytest.raises(DamagedSample, match=_where(store, 0, "train_000000", "size")):
            StoreDataset(str(store))[0]


def test_a_deleted_small_chunk_of_done_samples_is_an_error(store):
    (store / "gt" / "segments" / "c" / "0").unlink()
    with pytest.raises(DamagedSample, match=_where(store, 2, "train_000002", "gt/segments") + "chunk gt/segments/c/0 "
                       "is missing"):
        open_store(store).read_sample(2, arrays=["gt/segments"])


def test_a_whole_sample_read_checks_the_sample_checksum(store):
    """A value rewritten through zarr (so with a valid CRC32C) is caught where the whole sample is read;
    reads of some arrays check only their chunks (``prn verify`` checks every sample's checksum)."""
    zarr.open_group(str(store), mode="r+")["size"][1] = [16, 20]
    st = open_store(store)
    with pytest.raises(DamagedSample, match=_where(store, 1, "train_000001", None) + "its arrays differ from what "
                       "was written") as err:
        st.read_sample(1)
    assert err.value.array is None
    assert st.read_sample(1, arrays=["gt/panoptic"])["gt/panoptic"].shape == (16, 20)
    assert not st.verify_sample(1) and st.verify_sample(0)


# ------------------------------------------------------------------------------------- old stores


def test_a_store_built_before_chunk_checksums_reads_and_is_checked_by_its_sample_checksum(built_old, tmp_path):
    root = Path(shutil.copytree(built_old, tmp_path / "old.zarr"))
    st = open_store(root)
    assert not st.crc32c and not any(d.crc32c for d in st.defs.values())
    assert st._layout("gt/center") == Layout(direct=True, zstd=True, crc32c=False)
    for i in range(N):
        assert st.read_sample(i)["image_id"] == f"train_00000{i}" and st.verify_sample(i)
    _flip_silently(root, "gt/center", 2, crc=False)
    g = zarr.open_group(str(root), mode="r")
    g["gt/center"][2]  # plain zarr cannot tell: no checksum in the chunk
    st = open_store(root)
    why = _where(root, 2, "train_000002", None) + "its arrays differ from what was written.*rebuild it"
    with pytest.raises(DamagedSample, match=why):
        st.read_codes(2, ["gt/center"])  # every read of an old store checks the sample checksum
    with pytest.raises(DamagedSample, match=why):
        StoreDataset(str(root))[2]
    st.read_codes(1, ["gt/center"])
    _shard_file(root, "gt/center").unlink()
    with pytest.raises(DamagedSample, match=_where(root, 1, "train_000001", "gt/center") + "chunk missing"):
        open_store(root).read_codes(1, ["gt/center"])


def test_resuming_an_old_store_writes_its_own_layout(built_old, tmp_path):
    """A resumed build of a store without chunk checksums writes chunks without them (what its arrays
    declare), so the resumed sample reads through prn and through zarr."""
    from prn_data.build import BuildConfig, build
    from prn_data.resize import ResizePolicy
    from prn_data.targets import TargetParams

    root = Path(shutil.copytree(built_old, tmp_path / "old.zarr"))
    zarr.open_group(str(root), mode="r+")["done"][1] = False
    res = build(BuildConfig(dataset=f"synthetic:{N}", split="train", base="simulated", out=str(root),
                            scheduler="threads", workers=1, policy=ResizePolicy(short=32, max_long=64),
                            params=TargetParams(sigma=2.0)))
    assert res.ok
    st = open_store(root)
    assert st.done.all() and not st.crc32c
    for i in range(N):
        assert st.verify_sample(i)
        np.testing.assert_array_equal(st.read_codes(i, ["gt/center"])["gt/center"],
                                      zarr.open_group(str(root), mode="r")["gt/center"][i])


def test_create_store_without_checksums_matches_the_old_metadata(tmp_path):
    from prn_data.testing import CATS

    attrs = {"dataset": {}, "split": "x", "base": "none", "target_params": {"small_instance_weight": 3.0}}
    old = create_store(tmp_path / "o.zarr", n=2, canvas=(32, 32), categories=CATS, attrs=attrs, has_base=False,
                       crc32c=False)
    assert "chunk_checksum" not in old.attrs
    meta = json.loads((tmp_path / "o.zarr" / "gt" / "center" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"][0]["configuration"]["codecs"]] == ["bytes", "zstd"]
    meta = json.loads((tmp_path / "o.zarr" / "image_id" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["vlen-utf8", "zstd"]


# ------------------------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_show_stats_and_evaluate_stop_on_the_damaged_sample(store, tmp_path):
    _flip_silently(store, "gt/panoptic", 1)
    for args in (("show", store, "1", "--out", tmp_path / "x.png"), ("stats", store),
                 ("evaluate", "--store", store, "--base-only", "--json")):
        proc = _prn(*args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert f"{store}: sample 1 (image id train_000001), array gt/panoptic: damaged chunk (CRC32C mismatch)" \
            in proc.stderr.replace("\n", ""), (args, proc.stderr)
    assert not (tmp_path / "x.png").exists()


def test_evaluate_on_a_store_with_a_deleted_shard_stops(store, tmp_path):
    _shard_file(store, "base/panoptic").unlink()
    proc = _prn("evaluate", "--store", store, "--base-only", "--json", cwd=tmp_path)
    assert proc.returncode == 2 and "array base/panoptic: chunk missing" in proc.stderr.replace("\n", "")


def _train_config(tmp_path: Path, store: Path) -> Path:
    cfg = tiny_config(str(store), tmp_path / "unused", iters=2)  # no workers: test_a_worker_… covers them
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(cfg.to_dict()))
    return path


@pytest.mark.slow
def test_train_stops_on_a_damaged_sample(store, tmp_path):
    _flip_silently(store, "gt/center_offset", 2)
    proc = _prn("train", _train_config(tmp_path, store), "--out", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.replace("\n", "")
    assert "Traceback" not in err and "sample 2 (image id train_000002), array gt/center_offset: damaged " \
        "chunk (CRC32C mismatch)" in err, proc.stderr
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.slow
def test_train_skip_bad_logs_each_skipped_sample_and_goes_on(store, tmp_path):
    _flip_silently(store, "gt/center_offset", 2)
    run = tmp_path / "run"
    proc = _prn("train", _train_config(tmp_path, store), "--out", run, "--skip-bad", cwd=tmp_path, check=True)
    assert (run / "model.pt").is_file()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    skipped = [json.loads(line) for line in (run / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 1  # 4 samples, 2 steps of 2: epoch 0 reads each sample once
    rec = skipped[0]
    assert {k: rec[k] for k in ("index", "image_id", "array", "reason")} == {
        "index": 2, "image_id": "train_000002", "array": "gt/center_offset", "reason": "damaged chunk (CRC32C mismatch)"}
    assert rec["replaced_by"] == 3 and rec["step"] in (1, 2)
    assert "skipped damaged sample 2 (image id train_000002), array gt/center_offset: damaged chunk (CRC32C " \
        "mismatch); sample 3 used instead" in proc.stderr.replace("\n", "")
