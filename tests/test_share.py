"""prn_data.share: pack / unpack a store as one zip that zarr opens in place."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from prn_data.errors import PrnError
from prn_data.share import list_store_files, pack, unpack, zarr_store


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
