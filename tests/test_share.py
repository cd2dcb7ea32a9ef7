"""prn_data.share: pack / unpack a store as one zip that zarr opens in place; a store served over HTTP
(``python -m http.server``, which ignores byte ranges, and a range-capable server) reads like the local one."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from prn_data.errors import PrnError
from prn_data.inspect import store_info
from prn_data.location import http_supports_ranges, whole_object_ranges, zarr_store
from prn_data.share import list_store_files, pack, unpack
from prn_data.testing import build_sample_store, run_prn
from prn_data.verify import verify_store

from http_serving import serve


def _tiny_store(path: Path) -> np.ndarray:
    g = zarr.open_group(path, mode="w")
    g.attrs["prn_schema"] = 1
    a = g.create_array("gt/panoptic", shape=(6, 8, 8), chunks=(1, 8, 8), shards=(3, 8, 8), dtype="int32")
    data = np.arange(6 * 64, dtype=np.int32).reshape(6, 8, 8)
    a[:] = data
    return data


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {rel: (root / rel).read_bytes() for rel in list_store_files(root)}


def test_pack_unpack_round_trip(tmp_path):
    data = _tiny_store(tmp_path / "s.zarr")
    z = pack(tmp_path / "s.zarr", tmp_path / "s.zip")
    with zipfile.ZipFile(z) as zf:
        infos = zf.infolist()
        assert sorted(i.filename for i in infos) == list_store_files(tmp_path / "s.zarr")
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
    # Opened in place, read-only, from the zip and through fsspec's zip:: protocol.
    for url in (str(z), "zip::file://" + str(z)):
        g = zarr.open_group(zarr_store(url), mode="r")
        assert g.attrs["prn_schema"] == 1
        np.testing.assert_array_equal(g["gt/panoptic"][:], data)
    out = unpack(z, tmp_path / "back.zarr")
    assert _tree_bytes(out) == _tree_bytes(tmp_path / "s.zarr")
    assert not (tmp_path / "s.zip.partial").exists() and not (tmp_path / "back.zarr.partial").exists()


def test_whole_object_ranges_slices_like_the_store(tmp_path):
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import LocalStore

    (tmp_path / "obj").write_bytes(bytes(range(100)))
    inner = LocalStore(tmp_path, read_only=True)
    wrapped = whole_object_ranges(inner, max_cache_bytes=150)
    proto = default_buffer_prototype()

    def get(store, rng):
        buf = sync(store.get("obj", proto, rng))
        return buf.to_bytes()

    for rng in (RangeByteRequest(10, 20), OffsetByteRequest(95), SuffixByteRequest(4), None):
        assert get(wrapped, rng) == get(inner, rng)
    assert get(wrapped, SuffixByteRequest(4)) == bytes([96, 97, 98, 99])
    assert sync(wrapped.get("missing", proto, RangeByteRequest(0, 1))) is None


def test_pack_deflated_still_opens(tmp_path):
    data = _tiny_store(tmp_path / "s.zarr")
    z = pack(tmp_path / "s.zarr", tmp_path / "d.zip", compression="deflated")
    with zipfile.ZipFile(z) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}
    np.testing.assert_array_equal(zarr.open_group(zarr_store(str(z)), mode="r")["gt/panoptic"][:], data)


def test_pack_refusals(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(PrnError, match="no zarr.json"):
        pack(tmp_path / "plain", tmp_path / "p.zip")
    _tiny_store(tmp_path / "s.zarr")
    pack(tmp_path / "s.zarr", tmp_path / "s.zip")
    with pytest.raises(PrnError, match="already exists"):
        pack(tmp_path / "s.zarr", tmp_path / "s.zip")
    with pytest.raises(PrnError, match="inside the store"):
        pack(tmp_path / "s.zarr", tmp_path / "s.zarr" / "x.zip")
    with pytest.raises(PrnError, match="unknown compression"):
        pack(tmp_path / "s.zarr", tmp_path / "t.zip", compression="lzma")


def test_unpack_refusals(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("zarr.json", "{}")
        zf.writestr("../outside.txt", "x")
    with pytest.raises(PrnError, match="outside.txt"):
        unpack(evil, tmp_path / "o.zarr")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "o.zarr").exists()
    notstore = tmp_path / "n.zip"
    with zipfile.ZipFile(notstore, "w") as zf:
        zf.writestr("readme.txt", "x")
    with pytest.raises(PrnError, match="no zarr.json"):
        unpack(notstore, tmp_path / "n.zarr")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(PrnError, match="not a zip"):
        unpack(tmp_path / "junk.zip", tmp_path / "j.zarr")
    with pytest.raises(PrnError, match="not a zip"):
        zarr_store(str(tmp_path / "junk.zip"))
    with pytest.raises(PrnError, match="no such store"):
        zarr_store(str(tmp_path / "missing.zarr"))


# ---------------------------------------------------------------------------------------------- real store


@pytest.fixture(scope="session")
def built_store(tmp_path_factory) -> Path:
    return build_sample_store(tmp_path_factory)


def _assert_same_samples(a_url: str, b_url: str) -> None:
    """Every done sample of two stores equal, array for array (and every other decoded value)."""
    from prn_data.store import open_store

    a, b = open_store(a_url), open_store(b_url)
    assert len(a) == len(b) == 2 and a.done.all() and b.done.all()
    for i in range(len(a)):
        x, y = a.read_sample(i), b.read_sample(i)
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], np.ndarray):
                assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape, k
                np.testing.assert_array_equal(x[k], y[k], err_msg=f"sample {i} {k}")
            else:
                assert x[k] == y[k], (i, k)


def test_pack_info_verify_unpack_real_store(built_store, tmp_path):
    z = tmp_path / "coco.zip"
    assert Path(run_prn("pack", built_store, z).stdout.strip().splitlines()[-1]) == z
    local = store_info(str(built_store))
    zipped = store_info(str(z))
    assert zipped["summary"] == local["summary"] and zipped["provenance"] == local["provenance"]
    assert [(r["path"], r["shape"], r["codecs"]) for r in zipped["arrays"]] == [
        (r["path"], r["shape"], r["codecs"]) for r in local["arrays"]
    ]
    assert verify_store(str(z)).ok
    _assert_same_samples(str(z), str(built_store))
    back = tmp_path / "back.zarr"
    run_prn("unpack", z, back)
    assert _tree_bytes(back) == _tree_bytes(built_store)


@pytest.fixture
def http_root(built_store):
    """A server with ``python -m http.server``'s behaviour (ranges ignored) over the built store's folder."""
    with serve(built_store.parent, ranges=False) as url:
        yield url


def test_store_over_http(built_store, http_root):
    url = f"{http_root}/{built_store.name}"
    remote = json.loads(run_prn("info", "--json", url).stdout)
    local = store_info(str(built_store))
    # Same store, same figures (stored bytes included) whether read from disk or over HTTP.
    assert remote["summary"] == local["summary"] and remote["arrays"] == local["arrays"]
    proc = run_prn("verify", url)
    assert proc.stdout.strip().startswith("OK") and "2 samples checked" in proc.stdout
    # http.server ignores Range; the shard-of-2 reads only come out right through the whole-object adapter.
    assert not http_supports_ranges(url)
    _assert_same_samples(url, str(built_store))


@pytest.fixture
def range_http_root(built_store, tmp_path):
    """A byte-range-capable HTTP server serving the built store and its packed zip."""
    pack(built_store, tmp_path / "coco.zip")
    shutil.copytree(built_store, tmp_path / built_store.name)
    with serve(tmp_path, ranges=True) as url:
        yield url


def test_store_and_zip_over_a_range_capable_server(built_store, range_http_root):
    url = f"{range_http_root}/{built_store.name}"
    assert http_supports_ranges(url)  # the plain fsspec path, no whole-object adapter
    _assert_same_samples(url, str(built_store))
    # The packed zip opens in place over HTTP (fsspec reads its central directory and members by range).
    zurl = f"zip::{range_http_root}/coco.zip"
    assert store_info(zurl)["summary"] == store_info(str(built_store))["summary"]
    rep = verify_store(zurl)
    assert rep.ok and rep.checked == 2
    _assert_same_samples(zurl, str(built_store))
