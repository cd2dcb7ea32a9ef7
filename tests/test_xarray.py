"""A store as a plain xarray reader sees it: CF-decoded floats, coordinates (README "The store (Zarr v3)")."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from prn_data.store import open_store
from prn_data.store.coords import flag_word
from prn_data.testing import build_tiny_store
from prn_data.verify import verify_store

xr = pytest.importorskip("xarray")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return build_tiny_store(tmp_path_factory.mktemp("xr") / "s.zarr", n=3)


def test_xarray_decodes_floats_and_labels_axes(tiny):
    st = open_store(tiny)
    gt = xr.open_zarr(tiny, group="gt")
    base = xr.open_zarr(tiny, group="base")
    root = xr.open_zarr(tiny)
    ids = [str(v) for v in st.values("image_id")]
    assert [str(v) for v in gt["sample"].values] == ids == [str(v) for v in root["sample"].values]
    assert list(gt["channel"].values) == ["top", "bottom", "left", "right"] and list(gt["axis"].values) == ["dy", "dx"]
    assert list(base["class"].values) == [c.name for c in st.categories]
    for i, image_id in enumerate(ids):
        s = st.read_sample(i, crop=False)
        g = gt.sel(sample=image_id)
        for name in ("center", "center_offset", "box_offset"):
            assert g[name].dtype.kind == "f"
            # a power-of-two scale: xarray's q × scale_factor is prn's float32 q × scale exactly
            np.testing.assert_array_equal(g[name].values, s[f"gt/{name}"])
        np.testing.assert_array_equal(g["box_offset"].sel(channel="top").values, s["gt/box_offset"][0])
        np.testing.assert_array_equal(g["center_offset"].sel(axis="dx").values, s["gt/center_offset"][1])
        np.testing.assert_array_equal(g["semantic"].values, s["gt/semantic"])  # labels stay integers
        b = base.sel(sample=image_id)
        np.testing.assert_array_equal(b["semantic"].values, s["base/semantic"])
        np.testing.assert_array_equal((b["instance"] * b["channel_scale"]).values, s["base/instance"])
        np.testing.assert_array_equal(b["instance"].sel(channel="left").values * 16, s["base/instance"][5] * 256)
    assert gt["box_offset"].attrs["units"] == "pixels"
    flags = gt["semantic"].attrs
    assert flags["flag_values"][-1] == 255 and flags["flag_meanings"].split()[-1] == "ignore"
    assert len(flags["flag_values"]) == len(flags["flag_meanings"].split()) == len(st.categories) + 1
    assert "_FillValue" not in gt["center"].attrs and not np.isnan(gt["center"].values).any()


def test_flag_word():
    assert flag_word("traffic light") == "traffic_light"
    assert flag_word("wall-other-merged") == "wall-other-merged"
    assert flag_word("a/b (c)") == "a_b_c"


def test_store_without_coordinates_still_reads_and_verifies(tiny, tmp_path):
    """A store written before the coordinates and CF attributes: prn reads it as before."""
    old = tmp_path / "old.zarr"
    shutil.copytree(tiny, old)
    g = zarr.open_group(str(old), mode="r+", use_consolidated=False)
    for path in ("sample", "gt/sample", "gt/axis", "gt/channel", "base/sample", "base/channel",
                 "base/channel_scale", "base/class"):
        del g[path]
    for path in ("gt/center", "gt/semantic", "gt/box_offset"):
        a = g[path]
        a.attrs.put({k: v for k, v in a.attrs.items() if k not in ("scale_factor", "units", "flag_values",
                                                                       "flag_meanings")})
    with pytest.warns(UserWarning, match="onsolidated"):  # zarr's "not in the v3 spec" note
        zarr.consolidate_metadata(str(old))
    new, st = open_store(tiny), open_store(old)
    for i in range(len(st)):
        a, b = new.read_sample(i), st.read_sample(i)
        for k in a:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
    assert verify_store(str(old)).ok
    open_store(old, mode="r+").consolidate()  # a resumed build's end: no coordinates to fill, no error
