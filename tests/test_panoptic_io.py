"""COCO panoptic PNG encoding: id = R + 256·G + 256²·B, hand-checked bytes, every PNG mode Pillow reads."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from prn_data.errors import DatasetError
from prn_data.panoptic_io import id2rgb, read_rgb_ids, rgb2id, write_rgb_ids


def test_id2rgb_bytes_by_hand():
    ids = np.array([[0, 1, 256], [65536, 16777215, 65793]])
    rgb = id2rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3) and rgb.flags.c_contiguous
    assert rgb.tolist() == [[[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 0, 1], [255, 255, 255], [1, 1, 1]]]
    np.testing.assert_array_equal(rgb2id(rgb), ids)
    # an alpha channel is ignored
    rgba = np.concatenate([rgb, np.full((2, 3, 1), 200, np.uint8)], axis=-1)
    np.testing.assert_array_equal(rgb2id(rgba), ids)
    assert rgb2id(rgb).dtype == np.int32


def test_write_then_read_round_trip(tmp_path):
    ids = np.random.default_rng(3).integers(-1, 1 << 24, (13, 17))
    write_rgb_ids(tmp_path / "a.png", ids)
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == "RGB"
        px = np.asarray(im).astype(np.int64)
    expect = np.maximum(ids, 0)  # negatives (in-memory VOID) are written as 0
    np.testing.assert_array_equal(px[..., 0] + 256 * px[..., 1] + 65536 * px[..., 2], expect)
    np.testing.assert_array_equal(read_rgb_ids(tmp_path / "a.png"), expect)


@pytest.mark.parametrize("mode", ["P", "L", "RGBA"])
def test_other_png_modes_read_as_pillow_converts_them(tmp_path, mode):
    x = np.random.default_rng(1).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    im = Image.fromarray(x, "RGB").convert(mode)
    im.save(tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as back:
        rgb = np.asarray(back.convert("RGB")).astype(np.int64)
    np.testing.assert_array_equal(read_rgb_ids(tmp_path / "m.png"), rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2])


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="missing.png.*missing"):
        read_rgb_ids(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match="junk.png.*unreadable"):
        read_rgb_ids(tmp_path / "junk.png")
