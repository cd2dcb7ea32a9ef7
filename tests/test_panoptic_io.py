"""COCO panoptic PNG encoding: id = R + 256·G + 256²·B, hand-checked bytes, every PNG mode Pillow reads;
image modes and the size limit checked from the header."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from prn_data import panoptic_io
from prn_data.datasets.common import read_label_png
from prn_data.errors import DatasetError
from prn_data.panoptic_io import decode_png, id2rgb, image_size, read_image, read_rgb_ids, rgb2id, write_rgb_ids


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


# -- modes other than 8-bit RGB, and size limits (README "Datasets") ---------------------------------------


def test_16bit_grey_image_keeps_its_high_byte(tmp_path):
    grey = np.array([[0, 255, 256, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16"  # what Pillow opens a 16-bit grey PNG as
    rgb = read_image(tmp_path / "g16.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 5, 3)
    assert rgb[..., 0].tolist() == [[0, 0, 1, 156, 255]]  # v >> 8 (Pillow's convert would give 0, 255, 255, 255, 255)
    assert (rgb == rgb[..., :1]).all()


@pytest.mark.parametrize("mode", ["LA", "P", "CMYK", "1", "RGBA"])
def test_8bit_modes_convert_as_pillow_does(tmp_path, mode):
    x = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / ("m.jpg" if mode == "CMYK" else "m.png")
    Image.fromarray(x, "RGB").convert(mode).save(path)
    with Image.open(path) as im:
        assert im.mode == mode
        expect = np.asarray(im.convert("RGB"))
    got = read_image(path)
    assert got.dtype == np.uint8 and got.shape == (5, 7, 3)
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("mode, dtype", [("I", np.int32), ("F", np.float32)])
def test_32bit_and_float_images_are_refused_naming_the_file(tmp_path, mode, dtype):
    Image.fromarray(np.array([[0, 70000], [3, 4]], dtype=dtype), mode).save(tmp_path / "deep.tif")
    with pytest.raises(DatasetError, match=r"deep\.tif: .*mode " + mode):
        read_image(tmp_path / "deep.tif")


def test_16bit_panoptic_png_is_refused_not_clipped(tmp_path):
    Image.fromarray(np.array([[300, 7]], dtype=np.uint16)).save(tmp_path / "p16.png")
    with pytest.raises(DatasetError, match=r"p16\.png: .*8 bits per channel, this one 16"):
        read_rgb_ids(tmp_path / "p16.png")


def _bomb_png(path, h: int, w: int) -> None:
    """A valid 1-bit grey PNG of ``h`` x ``w`` zero pixels, written row by row (small on disk)."""
    z = zlib.compressobj(9)
    row = bytes(1 + (w + 7) // 8)  # filter byte + packed bits
    data = b"".join(z.compress(row) for _ in range(h)) + z.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def test_oversized_png_is_refused_from_its_header(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    _bomb_png(bomb, 15000, 15000)  # 225 M pixels: 0.7 GB as RGB, 0.9 GB as int32 ids
    assert bomb.stat().st_size < 100_000
    assert image_size(bomb) == (15000, 15000)

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(panoptic_io.imagecodecs, "spng_decode", no_decode)
    monkeypatch.setattr(panoptic_io.cv2, "imread", no_decode)
    monkeypatch.setattr(Image.Image, "load", no_decode)
    for read in (decode_png, read_rgb_ids, read_image, read_label_png):
        with pytest.raises(DatasetError) as info:
            read(bomb)
        assert info.value.path == str(bomb)
        assert info.value.problem.startswith("image is 15000x15000 (HxW), 225,000,000 pixels: over the limit of "
                                             "89,478,485"), info.value


def test_size_limit_is_the_module_constant(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "a.jpg")
    write_rgb_ids(tmp_path / "a.png", np.ones((4, 5), np.int64))
    assert read_image(tmp_path / "a.jpg").shape == (4, 5, 3)
    monkeypatch.setattr(panoptic_io, "MAX_PIXELS", 19)
    for read, path in ((read_image, "a.jpg"), (read_rgb_ids, "a.png"), (read_label_png, "a.png")):
        with pytest.raises(DatasetError, match=r"20 pixels: over the limit of 19"):
            read(tmp_path / path)
    monkeypatch.setattr(panoptic_io, "MAX_PIXELS", 20)
    assert read_rgb_ids(tmp_path / "a.png").shape == (4, 5)
