"""The store's schema: the arrays of a prn store, their stored dtypes and encodings, and the codec choices.

One group per (dataset, split, base network); every array's first axis is the sample. Maps are padded to a
fixed canvas and chunked one sample per chunk inside shards; the small per-sample arrays are unsharded
(README "The store (Zarr v3)" and "Choices where the issues were silent").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import zarr.codecs as zc
from zarr.abc.codec import ArrayBytesCodec, BytesBytesCodec

from ..errors import StoreError
from ..records import IGNORE_LABEL, VOID
from .image_codec import ImageCodec

SCHEMA = 1
SMALL_CHUNK = 1024
DEFAULT_SHARD_SIZE = 256
HEATMAP_SCALE = 1.0 / 1024  # uint16 steps: within 1e-3, exact in binary floating point
OFFSET_SCALE = 1.0 / 16  # int16 fixed point: ±2047 px at 1/16 px steps
PROB_SCALE = 1.0 / 1024
IMAGE_CODECS = ("zstd", "jpegxl", "jpeg")
#: Inner codecs that are plain little-endian bytes + zstd at the level their name ends with.
ZSTD_CODECS = ("zstd1", "zstd3", "zstd9")


@dataclass(frozen=True)
class ArrayDef:
    """One array of the schema: per-sample shape (after the sample axis), stored dtype and encoding."""

    path: str
    shape: tuple[int, ...]
    dims: tuple[str, ...]
    dtype: str
    fill: int | bool | str = 0
    encoding: str = "raw"  # raw | scale | lut | json | str
    scale: tuple[float, ...] | None = None  # per channel (len 1 = all channels)
    lut: tuple[float, ...] | None = None
    sharded: bool = True
    codec: str = "zstd1"
    #: Whether each chunk ends with zarr's ``crc32c`` codec (every array of a store built since per-chunk
    #: checksums; root attribute ``chunk_checksum``). An old store's arrays have none.
    crc32c: bool = True

    @property
    def ndim(self) -> int:
        return 1 + len(self.shape)

    def attrs(self) -> dict:
        a: dict = {"encoding": self.encoding}
        if self.scale is not None:
            a["scale"] = list(self.scale)
        if self.lut is not None:
            a["lut"] = list(self.lut)
        return a


def schema(canvas: tuple[int, int], num_classes: int, has_base: bool, *, small_weight: float = 3.0,
           image_codec: str = "zstd", crc32c: bool = True) -> list[ArrayDef]:
    """The arrays of a store with the given canvas ``(H, W)`` (multiples of 4) and class count; ``crc32c``
    False describes a store built before per-chunk checksums."""
    H, W = canvas
    hw, yx = (H, W), ("height", "width")
    off_dtype = "int16" if max(H, W) < 2048 else "int32"  # int16 at 1/16 px holds |offset| ≤ 2047 px
    sem_lut = (0.0, 1.0, float(small_weight)) if small_weight not in (0.0, 1.0) else (0.0, 1.0)
    defs = [
        ArrayDef("image", (3, H, W), ("rgb",) + yx, "uint8", codec="zstd1" if image_codec == "zstd" else image_codec),
        ArrayDef("size", (2,), ("yx",), "int32", sharded=False),
        ArrayDef("orig_size", (2,), ("yx",), "int32", sharded=False),
        ArrayDef("image_id", (), (), "str", fill="", encoding="str", sharded=False),
        ArrayDef("file_name", (), (), "str", fill="", encoding="str", sharded=False),
        ArrayDef("checksum", (), (), "uint64", sharded=False),
        ArrayDef("done", (), (), "bool", fill=False, sharded=False),
        ArrayDef("gt/semantic", hw, yx, "uint8", fill=IGNORE_LABEL),
        ArrayDef("gt/center", (1, H, W), ("heatmap",) + yx, "uint16", encoding="scale", scale=(HEATMAP_SCALE,)),
        ArrayDef("gt/center_offset", (2, H, W), ("axis",) + yx, off_dtype, encoding="scale",
                 scale=(OFFSET_SCALE,)),
        ArrayDef("gt/box_offset", (4, H, W), ("channel",) + yx, off_dtype, encoding="scale", scale=(OFFSET_SCALE,)),
        ArrayDef("gt/foreground", hw, yx, "uint8"),
        ArrayDef("gt/semantic_weight", hw, yx, "uint8", encoding="lut", lut=sem_lut),
        ArrayDef("gt/center_weight", hw, yx, "uint8", encoding="lut", lut=(0.0, 1.0)),
        ArrayDef("gt/offset_weight", hw, yx, "uint8", encoding="lut", lut=(0.0, 1.0)),
        ArrayDef("gt/panoptic", hw, yx, "int32", fill=VOID),
        ArrayDef("gt/segments", (), (), "str", fill="[]", encoding="json", sharded=False),
    ]
    if has_base:
        defs += [
            ArrayDef("base/instance", (7, H, W), ("channel",) + yx, off_dtype, encoding="scale",
                     scale=(HEATMAP_SCALE,) + (OFFSET_SCALE,) * 6),
            ArrayDef("base/semantic", (num_classes, H // 4, W // 4), ("class", "height4", "width4"), "uint16",
                     encoding="scale", scale=(PROB_SCALE,), codec="zstd3"),
            ArrayDef("base/panoptic", hw, yx, "int32", fill=VOID),
            ArrayDef("base/segments", (), (), "str", fill="[]", encoding="json", sharded=False),
        ]
    return defs if crc32c else [replace(d, crc32c=False) for d in defs]


def inner_codecs(codec: str, crc32c: bool = False) -> tuple[ArrayBytesCodec | str, tuple[BytesBytesCodec, ...]]:
    """``(serializer, compressors)`` of a named inner codec (choices measured in benchmarks/build.py),
    followed by zarr's ``crc32c`` codec when ``crc32c`` (README "Sharing stores": each chunk then ends with
    the CRC32C of its compressed bytes, checked by every reader, zarr's included):

    ``zstd1``: zstd level 1, the default (on these maps as small as level 3, or smaller, and 2–5× faster);
    ``zstd3``: zstd level 3 (``base/semantic``: 16 % smaller than level 1); ``blosc-zstd``, ``blosc-lz4``:
    Blosc byte-shuffle (larger here); ``jpeg``: lossy JPEG (quality 90) of an RGB image chunk; ``jpegxl``:
    lossless JPEG XL of it (:class:`~prn_data.store.image_codec.ImageCodec`).
    """
    crc: tuple[BytesBytesCodec, ...] = (zc.Crc32cCodec(),) if crc32c else ()
    if codec in ZSTD_CODECS:
        return "auto", (zc.ZstdCodec(level=int(codec[-1])),) + crc
    if codec == "blosc-zstd":
        return "auto", (zc.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),) + crc
    if codec == "blosc-lz4":
        return "auto", (zc.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),) + crc
    if codec in ("jpeg", "jpegxl"):
        return ImageCodec(format=codec, quality=90), crc
    raise StoreError(f"unknown codec {codec!r}; choose one of zstd1, zstd3, zstd9, blosc-zstd, blosc-lz4, jpeg")
