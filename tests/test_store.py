"""The Zarr store on its own: schema, encodings, whole-shard writes, reads, opening errors (README "The store")."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from prn_data.errors import StoreError
from prn_data.records import Category, CategorySet
from prn_data.store import (
    SCHEMA,
    create_store,
    encode_maps,
    encode_sample,
    open_store,
)

CANVAS = (32, 48)
CATS = CategorySet([Category(1, "thing", True, 0), Category(7, "road", False, 1), Category(9, "car", True, 2)])


def _maps(seed: int, size: tuple[int, int], with_base: bool = True) -> dict:
    """One sample's in-memory maps with hand-chosen values at ``size`` (dtypes of the contracts)."""
    rng = np.random.default_rng(seed)
    h, w = size
    pan = np.full((h, w), 7000, np.int32)
    pan[2:9, 3:12] = 1001
    pan[0, 0] = -1
    maps = {
        "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "gt/semantic": np.where(pan == 1001, 0, np.where(pan < 0, 255, 1)).astype(np.uint8),
        "gt/center": (rng.random((1, h, w)) * (pan == 1001)).astype(np.float32),
        "gt/center_offset": (rng.normal(0, 40, (2, h, w))).astype(np.float32),
        "gt/box_offset": rng.integers(0, 30, (4, h, w)).astype(np.float32),
        "gt/foreground": (pan == 1001).astype(np.uint8),
        "gt/semantic_weight": np.where(pan == 1001, 3.0, np.where(pan < 0, 0.0, 1.0)).astype(np.float32),
        "gt/center_weight": (pan >= 0).astype(np.float32),
        "gt/offset_weight": (pan == 1001).astype(np.float32),
        "gt/panoptic": pan,
    }
    if with_base:
        probs = rng.random((3, -(-h // 4), -(-w // 4))).astype(np.float32)
        maps |= {
            "base/instance": np.concatenate([rng.random((1, h, w)), rng.normal(0, 30, (6, h, w))]).astype(np.float32),
            "base/semantic": probs / probs.sum(0, keepdims=True),
            "base/panoptic": pan.copy(),
        }
    return maps


def _meta(i: int, size, with_base: bool = True) -> dict:
    segs = [{"id": 1001, "category_id": 1, "iscrowd": 0, "isthing": 1, "area": 63, "bbox": [3, 2, 9, 7]}]
    m = {"size": list(size), "orig_size": [size[0] * 2, size[1] * 2], "image_id": f"img{i}",
         "file_name": f"img{i}.jpg", "gt/segments": json.dumps(segs)}
    if with_base:
        m["base/segments"] = json.dumps([dict(segs[0], score=0.75)])
    return m


def _attrs() -> dict:
    return {"dataset": {"spec": "test"}, "split": "val", "base": "simulated",
            "target_params": {"sigma": 8.0, "small_instance_area": 4096, "small_instance_weight": 3.0}}


def _new(tmp_path: Path, n=5, shard=2, base=True, image_codec="zstd"):
    return create_store(tmp_path / "s.zarr", n=n, canvas=CANVAS, categories=CATS,
                        attrs=_attrs() | ({} if base else {"base": "none"}), has_base=base, shard_size=shard,
                        image_codec=image_codec)


def _write(store, indices, sizes, shard, keep=(), base=True):
    defs = list(store.defs.values())
    chunks, metas = {}, []
    for i in indices:
        c, m = encode_sample(defs, _maps(i, sizes[i], base), _meta(i, sizes[i], base))
        chunks[i] = c
        metas.append(m)
    store.write_shard(shard, chunks, keep=keep)
    store.write_meta(list(indices), metas)


SIZES = {0: (32, 48), 1: (20, 30), 2: (17, 45), 3: (32, 10), 4: (5, 6)}


def test_roundtrip_every_array_within_its_tolerance(tmp_path):
    st = _new(tmp_path)
    for k in range(3):
        _write(st, [i for i in (2 * k, 2 * k + 1) if i < 5], SIZES, k)
    st.consolidate()
    ro = open_store(tmp_path / "s.zarr")
    assert len(ro) == 5 and ro.canvas == CANVAS and ro.has_base and ro.done.all()
    assert [c.name for c in ro.categories] == ["thing", "road", "car"]
    for i, size in SIZES.items():
        want, got = _maps(i, size), ro.read_sample(i)
        assert got["size"] == size and got["orig_size"] == (size[0] * 2, size[1] * 2)
        assert got["image_id"] == f"img{i}" and got["file_name"] == f"img{i}.jpg"
        assert got["gt/segments"][0]["bbox"] == [3, 2, 9, 7] and got["base/segments"][0]["score"] == 0.75
        np.testing.assert_array_equal(got["image"], want["image"].transpose(2, 0, 1))
        for k in ("gt/semantic", "gt/foreground", "gt/panoptic", "base/panoptic", "gt/semantic_weight",
                  "gt/center_weight", "gt/offset_weight"):
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
            np.testing.assert_array_equal(got[k], want[k])  # integer maps and weights: exact
        for k, tol in (("gt/center", 1e-3), ("gt/center_offset", 1 / 16), ("gt/box_offset", 1 / 16),
                       ("base/semantic", 1e-3)):
            assert got[k].dtype == np.float32 and got[k].shape == want[k].shape
            assert np.abs(got[k] - want[k]).max() <= tol, k
        inst = got["base/instance"]
        assert np.abs(inst[0] - want["base/instance"][0]).max() <= 1e-3
        assert np.abs(inst[1:] - want["base/instance"][1:]).max() <= 1 / 16
        assert ro.verify_sample(i)


def test_quantisation_steps_hand_computed(tmp_path):
    st = _new(tmp_path, n=1, shard=1)
    m = _maps(0, CANVAS)
    m["gt/center"][0, 0, :3] = [0.5, 0.3, 1.0]  # 512/1024; round(307.2)=307 → 0.2998046875; 1024/1024
    m["gt/center_offset"][0, 0, :3] = [1.03, -2.0, 100.47]  # 16.48→16 → 1.0; -32 → -2; 1607.52→1608 → 100.5
    enc = encode_maps(list(st.defs.values()), m)
    assert enc["gt/center"].dtype == np.uint16 and enc["gt/center"][0, 0, :3].tolist() == [512, 307, 1024]
    assert enc["gt/center_offset"].dtype == np.int16 and enc["gt/center_offset"][0, 0, :3].tolist() == [16, -32, 1608]
    assert enc["gt/semantic_weight"][3, 5] == 2  # weight 3 is level 2 of the lut (0, 1, 3)
    c, meta = encode_sample(list(st.defs.values()), m, _meta(0, CANVAS))
    st.write_shard(0, {0: c})
    st.write_meta([0], [meta])
    got = st.read_sample(0)
    assert got["gt/center"][0, 0, :3].tolist() == [0.5, 0.2998046875, 1.0]
    assert got["gt/center_offset"][0, 0, :3].tolist() == [1.0, -2.0, 100.5]


def test_unencodable_values_are_store_errors(tmp_path):
    st = _new(tmp_path, n=1, shard=1)
    defs = list(st.defs.values())
    m = _maps(0, CANVAS)
    m["gt/semantic_weight"][0, 0] = 2.0
    with pytest.raises(StoreError, match=r"gt/semantic_weight.*\[2\.0\]"):
        encode_maps(defs, m)
    m = _maps(0, CANVAS)
    m["gt/box_offset"][0, 0, 0] = 5000.0  # 80000 at 1/16 px does not fit int16
    with pytest.raises(StoreError, match="gt/box_offset"):
        encode_maps(defs, m)


def test_padding_reads_fill_values_and_batch_is_stacked(tmp_path):
    st = _new(tmp_path)
    _write(st, [0, 1], SIZES, 0)
    full = st.read_sample(1, crop=False)
    h, w = SIZES[1]
    assert full["gt/panoptic"].shape == CANVAS and (full["gt/panoptic"][h:, :] == -1).all()
    assert (full["gt/semantic"][:, w:] == 255).all() and (full["image"][:, h:, :] == 0).all()
    assert full["base/semantic"].shape == (3, 8, 12)
    b = st.read_batch([1, 0])
    assert b["gt/panoptic"].shape == (2,) + CANVAS and b["size"].tolist() == [[20, 30], [32, 48]]
    np.testing.assert_array_equal(b["gt/center"][0], full["gt/center"])
    assert b["image_id"] == ["img1", "img0"]
    with pytest.raises(StoreError, match="not done"):
        st.read_batch([0, 2])


def test_shard_rewrite_keeps_done_samples_bytes(tmp_path):
    """Resuming a shard: a done sample keeps its exact bytes; an empty slot reads as padding, not done."""
    st = _new(tmp_path, n=4, shard=4)
    _write(st, [0, 2], SIZES, 0)
    key = tmp_path / "s.zarr" / "image" / "c" / "0" / "0" / "0" / "0"
    assert key.is_file()
    assert st.done.tolist() == [True, False, True, False]
    with pytest.raises(StoreError, match="sample 1 is not done"):
        st.read_sample(1)
    before = {i: st.read_raw(i) for i in (0, 2)}
    _write(st, [1], SIZES, 0, keep=[0, 2])
    assert st.done.tolist() == [True, True, True, False]
    for i in (0, 2):
        after = st.read_raw(i)
        for k in before[i]:
            np.testing.assert_array_equal(np.asarray(after[k]), np.asarray(before[i][k]))
        assert st.verify_sample(i)
    assert st.verify_sample(1) and not st.verify_sample(3)
    assert (st.array("gt/panoptic")[3] == -1).all()


def test_checksum_detects_a_changed_value(tmp_path):
    st = _new(tmp_path, n=2, shard=2)
    _write(st, [0, 1], SIZES, 0)
    assert st.verify_sample(0)
    st.array("gt/semantic")[0, 0, 0] = 77  # a partial write, fine for this single-writer test
    assert not st.verify_sample(0) and st.verify_sample(1)


def test_files_per_sample_and_xarray(tmp_path):
    xr = pytest.importorskip("xarray")
    st = _new(tmp_path, n=5, shard=2)
    for k in range(3):
        _write(st, [i for i in (2 * k, 2 * k + 1) if i < 5], SIZES, k)
    st.consolidate()
    chunk_files = [p for p in (tmp_path / "s.zarr").rglob("*") if p.is_file() and p.name != "zarr.json"]
    # 13 sharded map arrays × 3 shards + 8 small arrays × 1 chunk + 8 coordinate arrays × 1 chunk (sample ×3,
    # gt/axis, gt/channel, base/channel, base/channel_scale, base/class)
    assert len(chunk_files) == 13 * 3 + 8 + 8
    root = xr.open_zarr(tmp_path / "s.zarr")
    assert root["image"].dims == ("sample", "rgb", "height", "width") and root.sizes["sample"] == 5
    gt = xr.open_zarr(tmp_path / "s.zarr", group="gt")
    assert gt["center"].attrs["scale"] == [1 / 1024] and gt["center"].encoding["scale_factor"] == 1 / 1024
    assert int(gt["panoptic"][1, 2, 3]) == 1001
    base = xr.open_zarr(tmp_path / "s.zarr", group="base")
    assert base["semantic"].dims == ("sample", "class", "height4", "width4")


def test_zip_and_file_url(tmp_path):
    st = _new(tmp_path, n=2, shard=2, base=False)
    _write(st, [0, 1], SIZES, 0, base=False)
    st.consolidate()
    zpath = tmp_path / "s.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_STORED) as z:
        for p in sorted((tmp_path / "s.zarr").rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(tmp_path / "s.zarr").as_posix())
    for url in (str(zpath), f"zip://::file://{zpath}", f"file://{tmp_path / 's.zarr'}"):
        ro = open_store(url)
        assert not ro.has_base and ro.done.all()
        np.testing.assert_array_equal(ro.read_sample(1)["gt/panoptic"], _maps(1, SIZES[1], False)["gt/panoptic"])
        assert "base/instance" not in ro.read_sample(0)
    with pytest.raises(StoreError, match="opens read-only"):
        open_store(zpath, mode="r+")


def test_open_for_reading_never_writes(tmp_path):
    st = _new(tmp_path, n=2, shard=2)
    _write(st, [0, 1], SIZES, 0)
    snap = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (tmp_path / "s.zarr").rglob("*")}
    ro = open_store(tmp_path / "s.zarr")
    ro.read_sample(0), ro.read_batch([0, 1]), ro.done
    with pytest.raises(StoreError, match="read-only"):
        ro.write_shard(0, {})
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (tmp_path / "s.zarr").rglob("*")} == snap


def test_not_a_store_and_schema_mismatch(tmp_path):
    with pytest.raises(StoreError, match="no such store"):
        open_store(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    with pytest.raises(StoreError, match="not a prn store"):
        open_store(tmp_path / "plain")
    import zarr

    zarr.create_group(str(tmp_path / "other.zarr"), attributes={"title": "someone else's"})
    with pytest.raises(StoreError, match="not a prn store.*prn_schema"):
        open_store(tmp_path / "other.zarr")
    with pytest.raises(StoreError, match="not a prn store"):
        create_store(tmp_path / "plain", n=1, canvas=CANVAS, categories=CATS, attrs=_attrs(), has_base=False,
                     overwrite=True)
    assert (tmp_path / "plain" / "notes.txt").is_file()
    _new(tmp_path, n=1, shard=1)
    meta_path = tmp_path / "s.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["prn_schema"] = SCHEMA + 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA + 1}.*reads version {SCHEMA}"):
        open_store(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="already exists"):
        _new(tmp_path, n=1, shard=1)


def test_jpeg_image_codec_is_lossy_but_self_consistent(tmp_path):
    st = _new(tmp_path, n=1, shard=1, base=False, image_codec="jpeg")
    m = _maps(0, CANVAS, False)
    yy, xx = np.mgrid[: CANVAS[0], : CANVAS[1]]
    m["image"] = np.stack([yy * 4, xx * 4, (yy + xx) * 2], -1).astype(np.uint8)  # smooth: JPEG's good case
    c, meta = encode_sample(list(st.defs.values()), m, _meta(0, CANVAS, False))
    assert len(c["image"]) < m["image"].nbytes
    st.write_shard(0, {0: c})
    st.write_meta([0], [meta])
    ro = open_store(tmp_path / "s.zarr")
    img = ro.read_sample(0)["image"]
    assert np.abs(img.astype(int) - m["image"].transpose(2, 0, 1)).mean() < 3
    assert ro.verify_sample(0)  # the checksum covers what a reader decodes


def test_jpegxl_image_codec_is_lossless(tmp_path):
    st = _new(tmp_path, n=1, shard=1, base=False, image_codec="jpegxl")
    m = _maps(3, (20, 30), False)
    c, meta = encode_sample(list(st.defs.values()), m, _meta(3, (20, 30), False))
    st.write_shard(0, {0: c})
    st.write_meta([0], [meta])
    ro = open_store(tmp_path / "s.zarr")
    assert ro.array("image").metadata.to_dict()["codecs"][0]["configuration"]["codecs"][0]["name"] == "prn.image"
    np.testing.assert_array_equal(ro.read_sample(0)["image"], m["image"].transpose(2, 0, 1))
    assert ro.verify_sample(0)


def test_open_over_http_read_only(tmp_path):
    from http_serving import serve

    st = _new(tmp_path, n=3, shard=2)
    _write(st, [0, 1], SIZES, 0)
    _write(st, [2], SIZES, 1)
    st.consolidate()
    for ranges in (True, False):  # a range-capable server, and one like `python -m http.server`
        with serve(tmp_path, ranges=ranges) as url:
            ro = open_store(f"{url}/s.zarr")
            assert ro.done.tolist() == [True, True, True]
            got = ro.read_sample(2)
            np.testing.assert_array_equal(got["gt/panoptic"], _maps(2, SIZES[2])["gt/panoptic"])
            assert got["image_id"] == "img2" and ro.verify_sample(1)
            with pytest.raises(StoreError, match="read-only"):
                ro.write_shard(0, {})


def _counting(store):
    """Wrap a read-only store's zarr store so every ``get`` is recorded as ``(key, bytes returned)``."""
    calls = []
    inner = store.zstore

    class Counting:
        def __getattr__(self, name):
            return getattr(inner, name)

        async def get(self, key, prototype, byte_range=None):
            buf = await inner.get(key, prototype=prototype, byte_range=byte_range)
            calls.append((key, 0 if buf is None else len(buf.to_bytes())))
            return buf

    store.zstore = Counting()
    return calls


def test_direct_chunk_reads_equal_zarr_and_read_only_what_a_sample_needs(tmp_path):
    st = _new(tmp_path, n=5, shard=4)
    _write(st, [0, 1, 2, 3], SIZES, 0)
    _write(st, [4], SIZES, 1)
    st.consolidate()
    ro = open_store(tmp_path / "s.zarr")
    assert all(ro._is_direct(p) for p in ro.map_paths)  # the zstd layout the build writes
    for i in range(5):
        codes = ro.read_codes(i, ro.map_paths)
        for p in ro.map_paths:
            want = ro.array(p)[i]  # zarr's own codec pipeline
            assert codes[p].dtype == want.dtype and codes[p].shape == want.shape, p
            np.testing.assert_array_equal(codes[p], want, err_msg=p)
    # decoding in place into a caller's buffer (a batch row)
    buf = np.zeros((2,) + ro.defs["gt/box_offset"].shape, np.int16)
    got = ro.read_codes(3, ["gt/box_offset"], out={"gt/box_offset": buf[1]})
    assert np.shares_memory(got["gt/box_offset"], buf) and (buf[0] == 0).all()
    np.testing.assert_array_equal(buf[1], ro.array("gt/box_offset")[3])

    # One sample = one index read per array (then cached) + one chunk read per array; never a whole shard.
    ro = open_store(tmp_path / "s.zarr")
    calls = _counting(ro)
    ro.read_codes(1, ["base/instance", "gt/center"])
    shard_bytes = (tmp_path / "s.zarr" / "base" / "instance" / "c" / "0" / "0" / "0" / "0").stat().st_size
    index_bytes = 16 * 4 + 4
    assert len(calls) == 4 and sorted(n for _, n in calls)[:2] == [index_bytes, index_bytes]
    chunk = max(n for k, n in calls if k.startswith("base/instance"))
    assert chunk == len(ro.chunk_bytes("base/instance", 1)) < shard_bytes - index_bytes
    calls.clear()
    ro.read_codes(2, ["base/instance", "gt/center"])  # same shard: indices cached
    assert len(calls) == 2 and all(n > index_bytes for _, n in calls)
    calls.clear()
    b = ro.read_batch([2, 0], arrays=["gt/center"])
    assert len(calls) == 2  # two chunks, no shard re-read
    np.testing.assert_array_equal(b["gt/center"][0], ro.read_sample(2, crop=False)["gt/center"])


def test_a_damaged_chunk_is_a_store_error(tmp_path):
    st = _new(tmp_path, n=2, shard=2)
    _write(st, [0, 1], SIZES, 0)
    ro = open_store(tmp_path / "s.zarr")
    key = "gt/center/c/0/0/0/0"
    from numcodecs import Zstd
    from zarr.core.buffer import default_buffer_prototype

    from prn_data.store.shards import assemble_shard, crc32c_bytes, parse_shard

    path = tmp_path / "s.zarr" / key
    chunks = parse_shard(default_buffer_prototype().buffer.from_bytes(path.read_bytes()), 2, key)
    short = Zstd(level=1).encode(np.zeros(10, np.uint16))  # valid zstd with a valid CRC32C, wrong length
    path.write_bytes(assemble_shard([chunks[0], short + crc32c_bytes(short)], 3))
    ro.read_sample(0)
    with pytest.raises(StoreError, match=r"s.zarr: sample 1 \(image id img1\), array gt/center: chunk decodes to "
                                         r"20 bytes, expected 3072"):
        ro.read_sample(1)


def test_decode_is_one_pass_and_matches_the_two_step_formula():
    from prn_data.store import decode, schema

    d = {x.path: x for x in schema((8, 8), 3, True)}
    q = np.array([[[-32752, -1, 0, 1, 16, 32752]]], dtype=np.int16).repeat(7, 0)
    got = decode(d["base/instance"], q)
    want = q.astype(np.float32) * np.array([1 / 1024] + [1 / 16] * 6, np.float32)[:, None, None]
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert got[1, 0].tolist() == [-2047.0, -0.0625, 0.0, 0.0625, 1.0, 2047.0]
    assert got[0, 0, -1] == np.float32(32752 / 1024)
    out = np.empty((8, 8), np.float32)
    lut = decode(d["gt/semantic_weight"], np.array([[0, 1, 2]] * 8, np.uint8)[:, [0, 1, 2, 0, 1, 2, 0, 1]], out=out)
    assert lut is out and out[0].tolist() == [0.0, 1.0, 3.0, 0.0, 1.0, 3.0, 0.0, 1.0]


def test_mirrored_decode_equals_decoding_then_mirroring():
    """decode(..., mirror=...) reverses the valid columns and reorders/negates channels in the same pass."""
    from prn_data.store import Mirror, decode, schema

    d = {x.path: x for x in schema((4, 8), 3, True)}
    rng = np.random.default_rng(0)
    q = rng.integers(-300, 300, (7, 4, 8)).astype(np.int16)
    w, chans, neg = 5, (0, 1, 2, 3, 4, 6, 5), (2,)
    got = decode(d["base/instance"], q, mirror=Mirror(w, chans, neg))
    plain = decode(d["base/instance"], q)
    want = plain.copy()
    for k, c in enumerate(chans):
        want[k, :, :w] = (-1 if k in neg else 1) * plain[c, :, w - 1 :: -1]
    assert got.dtype == np.float32 and np.array_equal(got, want)
    codes = rng.integers(0, 3, (4, 8)).astype(np.uint8)
    out = np.empty((4, 8), np.float32)
    lut = decode(d["gt/semantic_weight"], codes, out=out, mirror=Mirror(w))
    want = decode(d["gt/semantic_weight"], codes)
    want[:, :w] = want[:, w - 1 :: -1]
    assert lut is out and np.array_equal(out, want)
