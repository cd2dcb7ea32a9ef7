"""The Zarr v3 store of PRN inputs and targets (DESIGN §5, issue 3): schema, create, open, write, read.

One group per (dataset, split, base network). Every array's first axis is the sample; maps are padded to a
fixed ``canvas`` (a multiple of 32) and the valid ``size (h, w)`` is stored per sample.

Layout (array paths are fixed by issue 3; stored dtype → decoded in-memory dtype; codecs measured in
``benchmarks/build.py``: zstd level 1 unless noted):

==========================  =======================  =============================================
path                        stored                   decoded by :meth:`Store.read_sample`
==========================  =======================  =============================================
``image``                   (N, 3, H, W) uint8       uint8 RGB; zstd (lossless, default), or the
                                                     ``prn.image`` codec: JPEG XL lossless / JPEG q90
``size``, ``orig_size``     (N, 2) int32             ``(h, w)`` tuples of int
``image_id``, ``file_name`` (N,) string              str
``done``                    (N,) bool                set last for each sample
``checksum``                (N,) uint64              digest of the sample's stored bytes (:func:`checksum`)
``gt/semantic``             (N, H, W) uint8          uint8, 255 = ignore (also the padding)
``gt/center``               (N, 1, H, W) uint16      float32 = q / 1024 (error ≤ 4.9e-4)
``gt/center_offset``        (N, 2, H, W) int16       float32 px = q / 16 (error ≤ 1/32 px)
``gt/box_offset``           (N, 4, H, W) int16       float32 px = q / 16
``gt/foreground``           (N, H, W) uint8          uint8
``gt/*_weight``             (N, H, W) uint8 codes    float32 = ``lut[q]`` (exact; lut in attributes)
``gt/panoptic``             (N, H, W) int32          int32, VOID = -1 (also the padding)
``gt/segments``             (N,) string (JSON)       list of dicts (COCO conventions)
``base/instance``           (N, 7, H, W) int16       float32; channel 0 (heatmap) q / 1024, 1–6 q / 16
``base/semantic``           (N, C, H/4, W/4) uint16  float32 = q / 1024 (error ≤ 4.9e-4); zstd level 3
``base/panoptic``           (N, H, W) int32          int32
``base/segments``           (N,) string (JSON)       list of dicts (with ``score`` when given)
==========================  =======================  =============================================

(int32 replaces int16 for offsets when the canvas has a side ≥ 2048 px.)

Each map array is chunked one sample per chunk inside shards of ``shard_size`` samples (sharding codec,
default 256: ≈ 60 files per 1000 samples). A shard is assembled from already-compressed chunks
(:func:`encode_sample`, :meth:`Store.write_shard`) and written whole, by one writer, in one store ``set``
(atomic on a local disk: zarr-python's LocalStore writes through a temporary file), because zarr-python 3
loses data on concurrent partial-shard writes (DESIGN §8). The small per-sample arrays (size, ids,
segments, checksum, done) are unsharded with :data:`SMALL_CHUNK` samples per chunk and written only by the
build's driver process after a shard's writer has returned, ``done`` last (:meth:`Store.write_meta`).

Every array carries ``dimension_names`` and an ``encoding`` attribute (``raw``, ``scale`` with
``scale``, ``lut`` with ``lut``, ``json`` or ``str``) so that other readers can decode without this module;
``xarray.open_zarr(url)`` (root) and ``xarray.open_zarr(url, group="gt")`` open it.

Read API (used by ``prn info/show/stats/verify`` and ``prn_model.data``)::

    store = open_store("cache/coco-val2017-simulated.zarr")   # or http(s)://, s3://, a .zip, zip://...
    store.attrs, store.categories, store.canvas, len(store), store.done, store.has_base
    d = store.read_sample(i)              # crop=True: maps cropped to the sample's valid size
    b = store.read_batch([i, j, k])       # padded canvas, stacked (B, ...) arrays, decoded
    c = store.read_codes(i, paths)        # stored (quantised) dtypes: the training loader's fast path
    store.verify_sample(i)                # recompute the checksum from the stored bytes
    store.failures                        # samples the last build could not make (index, file, error)

Reading a map goes around zarr's codec pipeline when the array has exactly the layout written here
(sharding, bytes + zstd, index at the end with CRC32C; checked per array): a read-only handle caches each
shard's index after one suffix read, then reads a sample's chunk with one range request and decompresses
it straight into its destination. Through zarr, a sample cost ~3× as much CPU, and ``read_batch``'s
former integer-array (orthogonal) selection was ~30× slower than per-sample reads: it fetched only the
right bytes, but zarr-python 3.1 filled a shard-sized intermediate buffer (peak memory 67 → 750 MB for two
``base/semantic`` samples of a 2-sample store).

Opening for reading never writes. A store of another :data:`SCHEMA` version, or a folder that is not a
prn store, raises :class:`~prn_data.errors.StoreError`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import StoreError
from .location import local_path, zarr_store
from .records import IGNORE_LABEL, VOID, CategorySet

SCHEMA = 1
SMALL_CHUNK = 1024
DEFAULT_SHARD_SIZE = 256
HEATMAP_SCALE = 1.0 / 1024  # uint16 steps: within 1e-3 (issue 3), exact in binary floating point
OFFSET_SCALE = 1.0 / 16  # int16 fixed point: ±2047 px at 1/16 px steps
PROB_SCALE = 1.0 / 1024
IMAGE_CODECS = ("zstd", "jpegxl", "jpeg")
_MAX_U64 = 2**64 - 1


# --------------------------------------------------------------------------------------------- schema

@dataclass(frozen=True)
class ArrayDef:
    """One array of the schema: per-sample shape (after the sample axis), stored dtype and encoding."""

    path: str
    shape: tuple[int, ...]
    dims: tuple[str, ...]
    dtype: str
    fill: Any = 0
    encoding: str = "raw"  # raw | scale | lut | json | str
    scale: tuple[float, ...] | None = None  # per channel (len 1 = all channels)
    lut: tuple[float, ...] | None = None
    sharded: bool = True
    codec: str = "zstd1"

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


def schema(canvas: tuple[int, int], num_classes: int, has_base: bool, small_weight: float = 3.0,
           image_codec: str = "zstd") -> list[ArrayDef]:
    """The arrays of a store with the given canvas ``(H, W)`` (multiples of 4) and class count."""
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
        ArrayDef("gt/center_offset", (2, H, W), ("dydx",) + yx, off_dtype, encoding="scale",
                 scale=(OFFSET_SCALE,)),
        ArrayDef("gt/box_offset", (4, H, W), ("tblr",) + yx, off_dtype, encoding="scale", scale=(OFFSET_SCALE,)),
        ArrayDef("gt/foreground", hw, yx, "uint8"),
        ArrayDef("gt/semantic_weight", hw, yx, "uint8", encoding="lut", lut=sem_lut),
        ArrayDef("gt/center_weight", hw, yx, "uint8", encoding="lut", lut=(0.0, 1.0)),
        ArrayDef("gt/offset_weight", hw, yx, "uint8", encoding="lut", lut=(0.0, 1.0)),
        ArrayDef("gt/panoptic", hw, yx, "int32", fill=VOID),
        ArrayDef("gt/segments", (), (), "str", fill="[]", encoding="json", sharded=False),
    ]
    if has_base:
        defs += [
            ArrayDef("base/instance", (7, H, W), ("instance_channel",) + yx, off_dtype, encoding="scale",
                     scale=(HEATMAP_SCALE,) + (OFFSET_SCALE,) * 6),
            ArrayDef("base/semantic", (num_classes, H // 4, W // 4), ("class", "height4", "width4"), "uint16",
                     encoding="scale", scale=(PROB_SCALE,), codec="zstd3"),
            ArrayDef("base/panoptic", hw, yx, "int32", fill=VOID),
            ArrayDef("base/segments", (), (), "str", fill="[]", encoding="json", sharded=False),
        ]
    return defs


def _codecs(codec: str, dtype: str) -> tuple[Any, tuple]:
    """(serializer, compressors) of a named inner codec (choices measured in benchmarks/build.py):

    ``zstd1``: zstd level 1, the default (on these maps as small as level 3, or smaller, and 2–5× faster);
    ``zstd3``: zstd level 3 (``base/semantic``: 16 % smaller than level 1); ``blosc-zstd``, ``blosc-lz4``:
    Blosc byte-shuffle (larger here); ``jpeg``: lossy JPEG (quality 90) of an RGB image chunk.
    """
    import zarr.codecs as zc

    if codec in ("zstd1", "zstd3", "zstd9"):
        return "auto", (zc.ZstdCodec(level=int(codec[-1])),)
    if codec == "blosc-zstd":
        return "auto", (zc.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),)
    if codec == "blosc-lz4":
        return "auto", (zc.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)
    if codec in ("jpeg", "jpegxl"):
        return _image_codec_class()(format=codec, quality=90), ()
    raise StoreError(f"unknown codec {codec!r}; choose one of zstd1, zstd3, zstd9, blosc-zstd, blosc-lz4, jpeg")


_IMAGE_CODEC = None


def _image_codec_class():
    """The ``prn.image`` zarr v3 array→bytes codec (created and registered on first use): a ``(1, 3, H, W)``
    uint8 chunk as one image file via imagecodecs — ``format="jpeg"`` (lossy, libjpeg-turbo, ``quality``)
    or ``"jpegxl"`` (lossless JPEG XL). Opt-in via ``--image-codec``; zarr readers outside prn need it
    registered (``import prn_data.store``)."""
    global _IMAGE_CODEC
    if _IMAGE_CODEC is not None:
        return _IMAGE_CODEC
    from dataclasses import dataclass as _dc

    from zarr.abc.codec import ArrayBytesCodec
    from zarr.registry import register_codec

    @_dc(frozen=True)
    class ImageCodec(ArrayBytesCodec):
        is_fixed_size = False
        format: str = "jpeg"
        quality: int = 90

        @classmethod
        def from_dict(cls, data):
            conf = data.get("configuration", {})
            return cls(format=str(conf.get("format", "jpeg")), quality=int(conf.get("quality", 90)))

        def to_dict(self):
            return {"name": "prn.image", "configuration": {"format": self.format, "quality": self.quality}}

        async def _decode_single(self, chunk_bytes, chunk_spec):
            import imagecodecs

            dec = imagecodecs.jpeg8_decode if self.format == "jpeg" else imagecodecs.jpegxl_decode
            rgb = dec(chunk_bytes.to_bytes())  # (H, W, 3)
            arr = np.ascontiguousarray(rgb.transpose(2, 0, 1)).reshape(chunk_spec.shape)
            return chunk_spec.prototype.nd_buffer.from_ndarray_like(arr)

        async def _encode_single(self, chunk_array, chunk_spec):
            import imagecodecs

            a = np.asarray(chunk_array.as_ndarray_like()).reshape(chunk_spec.shape[-3:])
            hwc = np.ascontiguousarray(a.transpose(1, 2, 0))
            if self.format == "jpeg":
                blob = imagecodecs.jpeg8_encode(hwc, level=self.quality)
            else:
                blob = imagecodecs.jpegxl_encode(hwc, lossless=True, effort=1)
            return chunk_spec.prototype.buffer.from_bytes(bytes(blob))

        def compute_encoded_size(self, input_byte_length, _chunk_spec):
            raise NotImplementedError

    register_codec("prn.image", ImageCodec)
    _IMAGE_CODEC = ImageCodec
    return _IMAGE_CODEC


# --------------------------------------------------------------------------------------------- opening

class Store:
    """An open prn store. Build through :func:`create_store`, read through :func:`open_store`."""

    def __init__(self, url: str, group, zstore, mode: str):
        self.url = url
        self.group = group
        self.zstore = zstore
        self.mode = mode
        self.attrs: dict = dict(group.attrs)
        self.categories = CategorySet.from_json(self.attrs["categories"])
        self.canvas: tuple[int, int] = tuple(int(v) for v in self.attrs["canvas"])
        self.shard_size = int(self.attrs["shard_size"])
        self.has_base = bool(self.attrs.get("base") not in (None, "none"))
        self.defs = {d.path: d for d in schema(self.canvas, len(self.categories), self.has_base,
                                               self.attrs["target_params"]["small_instance_weight"],
                                               self.attrs["image_codec"])}
        self._arrays: dict = {}
        self._sizes: np.ndarray | None = None
        # Read-only handles cache what a training reader asks for again and again: each shard's chunk
        # index (one small suffix read per shard and array, then one range read per chunk) and blocks of
        # the small per-sample arrays. A handle open for writing caches nothing (the build rewrites both).
        self._index_cache: dict[tuple[str, int], np.ndarray] = {}
        self._small_cache: dict[tuple[str, int], np.ndarray] = {}
        self._direct: dict[str, bool] = {}
        self._direct_zstd: dict[str, bool] = {}

    # -- basic facts
    def __len__(self) -> int:
        return int(self.attrs["n_samples"])

    def __repr__(self) -> str:
        return f"Store({self.url!r}, n={len(self)}, canvas={self.canvas}, base={self.attrs.get('base')!r})"

    def array(self, path: str):
        """The zarr array at ``path`` (cached)."""
        if path not in self._arrays:
            try:
                self._arrays[path] = self.group[path]
            except KeyError:
                raise StoreError(f"{self.url}: array {path!r} is missing") from None
        return self._arrays[path]

    @property
    def done(self) -> np.ndarray:
        """``(N,) bool``: samples completely written."""
        return np.asarray(self.array("done")[:], dtype=bool)

    @property
    def sizes(self) -> np.ndarray:
        """``(N, 2) int32`` valid ``(h, w)`` per sample (read once)."""
        if self._sizes is None or self.mode != "r":
            self._sizes = np.asarray(self.array("size")[:], dtype=np.int32)
        return self._sizes

    @property
    def failures(self) -> list[dict]:
        """Samples the last build could not make: ``[{"index", "file", "error"}]`` (root attribute
        ``failures``, rewritten at the end of every build run)."""
        return list(self.attrs.get("failures", []))

    @property
    def map_paths(self) -> list[str]:
        """Paths of the sharded per-sample map arrays, in schema order."""
        return [p for p, d in self.defs.items() if d.sharded]

    # -- reading
    def _check_index(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range 0..{len(self) - 1}")
        return i

    def read_raw(self, i: int) -> dict[str, Any]:
        """Stored (still quantised) values of sample ``i`` on the padded canvas, every array but ``done``
        and ``checksum``."""
        i = self._check_index(i)
        paths = [p for p in self.defs if p != "done" and p != "checksum"]
        out = self.read_codes(i, [p for p in paths if self.defs[p].sharded])
        for p in paths:
            if not self.defs[p].sharded:
                out[p] = self._small(p, i)
        return {p: out[p] for p in paths}

    def read_sample(self, i: int, crop: bool = True, arrays: Iterable[str] | None = None) -> dict[str, Any]:
        """Sample ``i`` decoded to the in-memory dtypes (module table). ``crop=False`` keeps the canvas.

        ``arrays`` restricts the read to some paths (``size`` is always read). Reading a sample whose
        ``done`` is False raises :class:`StoreError`.
        """
        i = self._check_index(i)
        want = [p for p in dict.fromkeys(["size", *(arrays or self.defs)]) if p != "done"]
        for p in want:
            if p not in self.defs:
                raise StoreError(f"{self.url}: no array {p!r} in this store")
        if not self.is_done(i):
            raise StoreError(f"{self.url}: sample {i} is not done (build incomplete or failed)")
        raw = self.read_codes(i, [p for p in want if self.defs[p].sharded])
        out = {}
        for p in want:
            d = self.defs[p]
            out[p] = decode(d, raw[p] if d.sharded else self._small(p, i))
        if crop:
            out = crop_sample(out, out["size"])
        return out

    def is_done(self, i: int) -> bool:
        """Whether sample ``i`` is completely written (a cached True stays True; False is re-read)."""
        return bool(self._small("done", i))

    def _small(self, path: str, i: int) -> Any:
        """Value ``i`` of a small (unsharded) array; read-only handles read and keep whole chunks."""
        if self.mode != "r":
            return self.array(path)[i]
        block = i // SMALL_CHUNK
        vals = self._small_cache.get((path, block))
        if vals is None or (path == "done" and not vals[i - block * SMALL_CHUNK]):
            a = self.array(path)
            vals = self._small_cache[(path, block)] = np.asarray(a[block * SMALL_CHUNK : (block + 1) * SMALL_CHUNK])
        return vals[i - block * SMALL_CHUNK]

    def _is_direct(self, path: str) -> bool:
        """Whether ``path``'s chunks can be read without zarr's codec pipeline: one sample per chunk inside
        ``shard_size`` shards, chunk codecs little-endian bytes (+ zstd), shard index at the end with
        CRC32C — exactly what :func:`_create_array` writes with the zstd codecs."""
        ok = self._direct.get(path)
        if ok is None:
            import zarr.codecs as zc

            d = self.defs[path]
            ok = False
            try:
                codecs = self.array(path).metadata.codecs
                if len(codecs) == 1 and isinstance(codecs[0], zc.ShardingCodec):
                    sc = codecs[0]
                    inner = list(sc.codecs)
                    ok = (tuple(sc.chunk_shape) == (1,) + d.shape
                          and tuple(self.array(path).shards or ()) == (self.shard_size,) + d.shape
                          and str(getattr(sc.index_location, "value", sc.index_location)) == "end"
                          and [type(c) for c in sc.index_codecs] == [zc.BytesCodec, zc.Crc32cCodec]
                          and len(inner) in (1, 2) and isinstance(inner[0], zc.BytesCodec)
                          and (np.dtype(d.dtype).itemsize == 1
                               or str(getattr(inner[0].endian, "value", inner[0].endian)) == "little")
                          and (len(inner) == 1 or isinstance(inner[1], zc.ZstdCodec)))
                    self._direct_zstd[path] = len(inner) == 2
            except (AttributeError, TypeError):
                ok = False
            self._direct[path] = ok
        return ok

    def read_codes(self, i: int, paths: Sequence[str], out: Mapping[str, np.ndarray] | None = None
                   ) -> dict[str, np.ndarray]:
        """Stored values (quantised dtypes, padded canvas) of sample ``i``'s map arrays ``paths``.

        The fast path for training: per array one range read of the chunk (shard indices are cached by a
        read-only handle) and one zstd decompression straight into the result — no whole-shard reads and
        none of zarr's per-call buffers. ``out[path]`` (C-contiguous, the array's per-sample shape and
        stored dtype) is filled in place when given, e.g. a slice of a batch. Arrays written with other
        codecs (the image codec, Blosc) go through zarr. Returns ``{path: array}``.
        """
        import asyncio

        from zarr.abc.store import RangeByteRequest, SuffixByteRequest
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        i = self._check_index(i)
        out = dict(out or {})
        res: dict[str, np.ndarray] = {}
        direct = [p for p in paths if self._is_direct(p)]
        for p in paths:
            if p not in direct:
                v = np.asarray(self.array(p)[i])
                if p in out:
                    out[p][...] = v
                    v = out[p]
                res[p] = v
        if not direct:
            return res
        S, shard, slot = self.shard_size, i // self.shard_size, i % self.shard_size
        proto = default_buffer_prototype()
        keys = {p: f"{p}/c/{shard}" + "/0" * len(self.defs[p].shape) for p in direct}
        need = [p for p in direct if (p, shard) not in self._index_cache]

        async def gather(reqs):
            return await asyncio.gather(*(self.zstore.get(k, prototype=proto, byte_range=r) for k, r in reqs))

        index: dict[str, np.ndarray | None] = {p: self._index_cache.get((p, shard)) for p in direct}
        if need:
            tails = sync(gather([(keys[p], SuffixByteRequest(16 * S + 4)) for p in need]))
            for p, tail in zip(need, tails):
                index[p] = None if tail is None else _parse_index(tail.to_bytes(), S, keys[p])
                if tail is not None and self.mode == "r":
                    self._index_cache[(p, shard)] = index[p]
        spans = {}
        for p in direct:
            ix = index[p]
            if ix is not None and int(ix[slot, 0]) != _MAX_U64:
                off, nb = int(ix[slot, 0]), int(ix[slot, 1])
                spans[p] = RangeByteRequest(off, off + nb)
        blobs = dict(zip(spans, sync(gather([(keys[p], r) for p, r in spans.items()])))) if spans else {}
        for p in direct:
            d = self.defs[p]
            dst = out.get(p)
            if dst is None:
                dst = np.empty(d.shape, dtype=d.dtype)
            blob = blobs.get(p)
            if blob is None:  # an empty slot reads as the fill value, as zarr does
                dst[...] = d.fill
            else:
                _decompress_into(blob.to_bytes(), dst, self._direct_zstd[p], keys[p])
            res[p] = dst
        return res

    def read_batch(self, indices: Sequence[int], arrays: Iterable[str] | None = None) -> dict[str, Any]:
        """Samples ``indices`` on the padded canvas, stacked: ``(B, ...)`` decoded arrays, lists for strings
        and segments. Each sample's chunks are read alone (one range read per chunk, never a whole shard)
        and decompressed into the stacked array; decoding to floats is one pass over the batch."""
        idx = [self._check_index(i) for i in indices]
        bad = [i for i in idx if not self.is_done(i)]
        if bad:
            raise StoreError(f"{self.url}: samples {bad} are not done")
        paths = [p for p in (arrays or self.defs) if p != "done"]
        for p in paths:
            if p not in self.defs:
                raise StoreError(f"{self.url}: no array {p!r} in this store")
        maps = [p for p in paths if self.defs[p].sharded]
        stacked = {p: np.empty((len(idx),) + self.defs[p].shape, dtype=self.defs[p].dtype) for p in maps}
        for b, i in enumerate(idx):
            self.read_codes(i, maps, out={p: stacked[p][b] for p in maps})
        out: dict[str, Any] = {}
        for p in paths:
            d = self.defs[p]
            if d.sharded:
                out[p] = decode(d, stacked[p], batched=True)
            elif d.encoding in ("json", "str"):
                out[p] = [decode(d, self._small(p, i)) for i in idx]
            else:
                out[p] = decode(d, np.stack([np.asarray(self._small(p, i)) for i in idx]), batched=True)
        return out

    def chunk_bytes(self, path: str, i: int) -> bytes | None:
        """The encoded bytes of sample ``i``'s chunk of map array ``path`` (two range reads: the shard's
        index, then the chunk), or None for an empty slot."""
        from zarr.abc.store import RangeByteRequest, SuffixByteRequest
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        i = self._check_index(i)
        d, S = self.defs[path], self.shard_size
        key = f"{path}/c/{i // S}" + "/0" * len(d.shape)
        proto = default_buffer_prototype()
        tail = sync(self.zstore.get(key, prototype=proto, byte_range=SuffixByteRequest(16 * S + 4)))
        if tail is None:
            return None
        off, nb = _parse_index(tail.to_bytes(), S, key)[i % S]
        if off == _MAX_U64:
            return None
        blob = sync(self.zstore.get(key, prototype=proto, byte_range=RangeByteRequest(off, off + nb)))
        return None if blob is None else blob.to_bytes()

    def sample_checksum(self, i: int) -> int:
        """Recompute sample ``i``'s checksum from its stored bytes (map chunks) and values (small arrays)."""
        i = self._check_index(i)
        values: dict[str, Any] = {}
        for p, d in self.defs.items():
            if p in ("done", "checksum"):
                continue
            values[p] = self.chunk_bytes(p, i) if d.sharded else self.array(p)[i]
        return checksum(self.defs.values(), values)

    def verify_sample(self, i: int) -> bool:
        """True when sample ``i`` is done and its stored checksum matches its stored bytes and values."""
        i = self._check_index(i)
        return bool(self.array("done")[i]) and int(self.array("checksum")[i]) == self.sample_checksum(i)

    # -- writing (build only)
    def write_shard(self, shard: int, samples: Mapping[int, Mapping[str, bytes | None]],
                    keep: Iterable[int] = ()) -> None:
        """Write shard ``shard`` of every map array whole, in one ``set`` per array.

        ``samples`` maps a sample index to its encoded chunks (``{path: bytes}``, see
        :func:`encode_sample`); indices listed in ``keep`` (samples already done) keep the bytes they have
        in the existing shard; every other slot of the shard is left empty (reads as the fill value).
        """
        if self.mode == "r":
            raise StoreError(f"{self.url}: opened read-only")
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        S = self.shard_size
        base = shard * S
        keep = [int(i) for i in keep]
        proto = default_buffer_prototype()
        for path in self.map_paths:
            d = self.defs[path]
            key = f"{path}/c/{shard}" + "/0" * len(d.shape)
            old = _parse_shard(sync(self.zstore.get(key, prototype=proto)), S, key) if keep else {}
            chunks: list[bytes | None] = [None] * S
            for i in keep:
                chunks[i - base] = old.get(i - base)
                if chunks[i - base] is None:
                    raise StoreError(f"{self.url}: sample {i} is marked done but its {path} chunk is missing")
            for i, enc in samples.items():
                chunks[i - base] = enc[path]
            blob = _assemble_shard(chunks, len(d.shape))
            sync(self.zstore.set(key, proto.buffer.from_bytes(blob)))

    def write_meta(self, indices: Sequence[int], meta: Sequence[Mapping[str, Any]]) -> None:
        """Driver only: write the small per-sample arrays of ``indices``, then ``checksum``, ``done`` last."""
        if not len(indices):
            return
        idx = np.asarray(indices, dtype=np.int64)
        for p in ("size", "orig_size", "image_id", "file_name", "gt/segments", "base/segments", "checksum"):
            if p not in self.defs:
                continue
            d = self.defs[p]
            vals = [m[p] for m in meta]
            arr = np.asarray([str(v) for v in vals], dtype=object) if d.dtype == "str" else np.asarray(vals, dtype=d.dtype)
            self.array(p).set_orthogonal_selection((idx,) + (slice(None),) * len(d.shape), arr)
        self.array("done").set_orthogonal_selection((idx,), np.ones(len(idx), dtype=bool))

    def set_attrs(self, **values: Any) -> None:
        """Update root attributes (build only)."""
        self.group.attrs.update(values)
        self.attrs.update(values)

    def consolidate(self) -> None:
        """Consolidate metadata (once, at the end of a build: DESIGN §8)."""
        import warnings

        import zarr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "consolidated metadata is not in the v3 spec" — known, chosen
            zarr.consolidate_metadata(self.zstore)


def open_store(url: str | Path, mode: str = "r") -> Store:
    """Open the prn store at ``url`` (a folder, a ``.zip`` file, ``zip://…``, ``http(s)://…`` or any fsspec
    URL). ``mode="r"`` never writes; ``"r+"`` is for the build. Raises :class:`StoreError` for a folder that
    is not a prn store or one of another schema version."""
    import warnings

    import zarr

    url = str(url)
    _image_codec_class()  # a store may use it; zarr resolves codecs by name when opening arrays
    if mode not in ("r", "r+"):
        raise StoreError(f"mode must be 'r' or 'r+', got {mode!r}")
    zstore = zarr_store(url, mode)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            group = zarr.open_group(zstore, mode=mode, zarr_format=3, use_consolidated=None if mode == "r" else False)
    except Exception as exc:
        raise StoreError(f"{url}: not a prn store (no Zarr v3 group: {type(exc).__name__})") from None
    version = group.attrs.get("prn_schema")
    if version is None:
        raise StoreError(f"{url}: not a prn store (Zarr group without a 'prn_schema' attribute)")
    if version != SCHEMA:
        raise StoreError(f"{url}: prn store schema version {version}, but this prn reads version {SCHEMA}; "
                         "rebuild it with `prn build --overwrite` or use a matching prn version")
    try:
        return Store(url, group, zstore, mode)
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"{url}: damaged prn store attributes ({exc})") from None


def create_store(url: str | Path, *, n: int, canvas: tuple[int, int], categories: CategorySet, attrs: Mapping,
                 has_base: bool, shard_size: int = DEFAULT_SHARD_SIZE, image_codec: str = "zstd",
                 small_weight: float = 3.0, overwrite: bool = False) -> Store:
    """Create an empty store of ``n`` samples (every ``done`` False) and return it open for writing.

    ``attrs`` are extra root attributes (dataset, split, policy, target params, base …). An existing
    store at ``url`` is an error unless ``overwrite``.
    """
    import zarr

    url = str(url)
    if canvas[0] % 4 or canvas[1] % 4:
        raise StoreError(f"canvas {canvas} must be a multiple of 4")
    if image_codec not in IMAGE_CODECS:
        raise StoreError(f"unknown image codec {image_codec!r}; choose one of {', '.join(IMAGE_CODECS)}")
    zstore = zarr_store(url, "w")
    from zarr.core.sync import sync

    if not overwrite and sync(zstore.exists("zarr.json")):
        raise StoreError(f"{url}: a store already exists (use --overwrite to replace it)")
    if overwrite and (local_path(url) is not None) and local_path(url).exists():
        import shutil

        path = local_path(url)
        if any(path.iterdir()) and not _looks_like_prn_store(path, creating_too=True):
            raise StoreError(f"{url}: refusing to overwrite a folder that is not a prn store")
        shutil.rmtree(path)
        zstore = zarr_store(url, "w")
    root_attrs = dict(attrs) | {
        "prn_schema": SCHEMA,
        "n_samples": int(n),
        "canvas": [int(canvas[0]), int(canvas[1])],
        "shard_size": int(shard_size),
        "image_codec": image_codec,
        "categories": categories.to_json(),
        "num_classes": len(categories),
        "failures": [],
    }
    # prn_schema goes in last: a creation cut short leaves a group that is not (yet) a prn store
    group = zarr.create_group(zstore, zarr_format=3, overwrite=overwrite, attributes={"prn_creating": True})
    for d in schema(canvas, len(categories), has_base, small_weight, image_codec):
        _create_array(group, d, n, shard_size)
    group.attrs.put(root_attrs)
    return Store(url, group, zstore, "r+")


def _looks_like_prn_store(path: Path, creating_too: bool = False) -> bool:
    """True for a local prn store of any schema version (or, with ``creating_too``, one whose creation was
    cut short)."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    attrs = (meta.get("attributes") or {}) if isinstance(meta, dict) else {}
    return "prn_schema" in attrs or (creating_too and attrs.get("prn_creating") is True)


def _create_array(group, d: ArrayDef, n: int, shard_size: int):
    dims = ("sample",) + d.dims
    if d.dtype == "str":
        return group.create_array(d.path, shape=(n,), chunks=(SMALL_CHUNK,), dtype=str, fill_value=d.fill,
                                  dimension_names=dims, attributes=d.attrs())
    if not d.sharded:
        return group.create_array(d.path, shape=(n,) + d.shape, chunks=(SMALL_CHUNK,) + d.shape, dtype=d.dtype,
                                  fill_value=d.fill, dimension_names=dims, attributes=d.attrs(),
                                  compressors=_codecs("zstd3", d.dtype)[1])
    serializer, compressors = _codecs(d.codec, d.dtype)
    return group.create_array(d.path, shape=(n,) + d.shape, chunks=(1,) + d.shape,
                              shards=(shard_size,) + d.shape, dtype=d.dtype, fill_value=d.fill,
                              dimension_names=dims, attributes=d.attrs(), serializer=serializer,
                              compressors=compressors)


# --------------------------------------------------------------------------------------------- encoding

def encode_maps(defs: Iterable[ArrayDef], sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Quantise and pad one sample's in-memory maps to the stored dtypes on the canvas.

    ``sample`` holds ``image (h, w, 3) uint8`` and the targets / base maps under their array paths at the
    sample's size. Raises :class:`StoreError` for a value the encoding cannot hold (an offset beyond the
    int range, a weight not in the lut).
    """
    return {d.path: _encode_map(d, sample[d.path]) for d in defs if d.sharded}


def _encode_map(d: ArrayDef, v: Any) -> np.ndarray:
    """One map quantised and padded onto the canvas in its stored dtype (see :func:`encode_maps`)."""
    v = np.asarray(v)
    if d.path == "image":
        v = v.transpose(2, 0, 1)
    if v.shape[:-2] != d.shape[:-2] or v.shape[-2] > d.shape[-2] or v.shape[-1] > d.shape[-1]:
        raise StoreError(f"{d.path}: shape {v.shape} does not fit the store's {d.shape}")
    h, w = v.shape[-2:]
    canvas = np.empty(d.shape, dtype=d.dtype)
    canvas[..., h:, :] = d.fill  # only the padding is filled: the valid region is written once, below
    canvas[..., :h, w:] = d.fill
    _quantise(d, v, canvas[..., :h, :w])
    return canvas


def _quantise(d: ArrayDef, v: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Stored codes of ``v`` written into ``out`` (the valid region of a canvas, stored dtype)."""
    info = np.iinfo(d.dtype) if np.dtype(d.dtype).kind in "iu" else None
    if d.encoding == "raw":
        if v.dtype != np.dtype(d.dtype) and info is not None and v.size and (v.min() < info.min or v.max() > info.max):
            raise StoreError(f"{d.path}: values outside {d.dtype}")
        out[...] = v
        return out
    if d.encoding == "scale":
        # 1/scale is a power of two, so v * (1/scale) in float32 is exact and rounds like v / scale would
        inv = (1.0 / np.asarray(d.scale, dtype=np.float32)).reshape((-1,) + (1,) * (v.ndim - 1))
        q = np.multiply(v, inv, dtype=np.float32)
        if q.size and (q.min() < info.min - 0.5 or q.max() >= info.max + 0.5):
            raise StoreError(f"{d.path}: values {v.min():.4g}..{v.max():.4g} do not fit {d.dtype} at the "
                             f"store's scale")
        np.rint(q, out=out, casting="unsafe")  # round half to even, then the (checked) integer cast
        return out
    if d.encoding == "lut":
        out[...] = 0
        seen = np.zeros(v.shape, dtype=bool)
        for code, value in enumerate(d.lut):
            m = v == np.float32(value)
            seen |= m
            if code:
                out[m] = code
        if not seen.all():
            bad = np.unique(v[~seen])[:5].tolist()
            raise StoreError(f"{d.path}: values {bad} are not among the stored levels {list(d.lut)}")
        return out
    raise StoreError(f"{d.path}: cannot quantise a {d.encoding} array")


def decode(d: ArrayDef, raw: Any, batched: bool = False, out: np.ndarray | None = None) -> Any:
    """Stored value(s) of one sample (or a batch, ``batched=True``) → the in-memory form. Scaled and lut
    maps decode in one pass (``float32(q) × scale``, ``lut[q]``), into ``out`` (float32) when given."""
    if d.encoding == "json":
        return json.loads(str(raw)) if raw not in (None, "") else []
    if d.encoding == "str":
        return str(raw)
    raw = np.asarray(raw)
    if d.path in ("size", "orig_size") and not batched:
        return tuple(int(v) for v in raw)
    if d.encoding == "raw":
        return raw
    if d.encoding == "scale":
        nd = len(d.shape)
        scale = np.asarray(d.scale, dtype=np.float32).reshape((-1,) + (1,) * (nd - 1))
        # q → float32 is exact and the product is float32's, the same bits as astype(float32) * scale
        return np.multiply(raw, scale, out=out, dtype=np.float32, casting="unsafe")
    if d.encoding == "lut":
        return np.take(np.asarray(d.lut, dtype=np.float32), raw, out=out)
    raise StoreError(f"{d.path}: unknown encoding {d.encoding!r}")


def crop_sample(sample: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """Crop decoded canvas maps to the valid ``size = (h, w)`` (``base/semantic`` to ``⌈h/4⌉, ⌈w/4⌉``)."""
    h, w = size
    out = dict(sample)
    for k, v in sample.items():
        if not isinstance(v, np.ndarray) or v.ndim < 2 or k in ("size", "orig_size"):
            continue
        if k == "base/semantic":
            out[k] = v[..., : -(-h // 4), : -(-w // 4)]
        else:
            out[k] = v[..., :h, :w]
    return out


def checksum(defs: Iterable[ArrayDef], values: Mapping[str, Any]) -> int:
    """Digest of one sample as stored: BLAKE2b-64 over, for every array but ``done``/``checksum`` in schema
    order, its path and the CRC-32 (zlib) of its data — the encoded chunk bytes of a map array (1–2 MB a
    sample, so hashing costs ~1 ms rather than ~15 ms for the ~30 MB of decoded maps; it also catches a
    damaged compressed chunk that would still decode), the little-endian values of ``size``/``orig_size``,
    the UTF-8 of strings — as an unsigned int. A missing chunk hashes as empty."""
    import zlib

    h = hashlib.blake2b(digest_size=8)
    for d in defs:
        if d.path in ("done", "checksum"):
            continue
        v = values[d.path]
        if d.sharded:
            data = b"" if v is None else bytes(v)
        elif d.dtype == "str":
            data = str(v).encode("utf-8")
        else:
            data = np.ascontiguousarray(np.asarray(v, dtype=np.dtype(d.dtype).newbyteorder("<")))
        h.update(d.path.encode() + zlib.crc32(data).to_bytes(4, "little"))
    return int.from_bytes(h.digest(), "little")


class ChunkEncoder:
    """Encodes one sample's chunk of an array with exactly the array's own zarr codecs (through a one-chunk
    in-memory zarr array), so the bytes can be placed in a shard assembled by :meth:`Store.write_shard`.
    Not thread-safe: use one per thread (:func:`chunk_encoder`)."""

    def __init__(self, defs: Iterable[ArrayDef]):
        import zarr
        from zarr.storage import MemoryStore

        from numcodecs import Zstd

        self._arrays = {}
        self._direct = {}
        for d in defs:
            if not d.sharded:
                continue
            if d.codec in ("zstd1", "zstd3", "zstd9"):
                self._direct[d.path] = Zstd(level=int(d.codec[-1]), checksum=False)
                continue
            mem = MemoryStore()
            serializer, compressors = _codecs(d.codec, d.dtype)
            a = zarr.create_array(mem, shape=(1,) + d.shape, chunks=(1,) + d.shape, dtype=d.dtype,
                                  fill_value=d.fill, serializer=serializer, compressors=compressors,
                                  config={"write_empty_chunks": True})
            self._arrays[d.path] = (a, mem, "c/0" + "/0" * len(d.shape))

    def encode(self, path: str, chunk: np.ndarray) -> bytes:
        """The encoded bytes of one sample's chunk of ``path`` (padded, stored dtype)."""
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        direct = self._direct.get(path)
        if direct is not None:
            # plain bytes + zstd: the same bytes zarr's ZstdCodec writes, without its per-call overhead
            return direct.encode(np.ascontiguousarray(chunk, dtype=chunk.dtype.newbyteorder("<")))
        a, mem, key = self._arrays[path]
        a[0] = chunk
        return sync(mem.get(key, prototype=default_buffer_prototype())).to_bytes()


_local = threading.local()


def chunk_encoder(defs: Sequence[ArrayDef]) -> ChunkEncoder:
    """A per-thread :class:`ChunkEncoder` for ``defs`` (cached by their identity)."""
    key = tuple(defs)
    cache = getattr(_local, "encoders", None)
    if cache is None:
        cache = _local.encoders = {}
    if key not in cache:
        cache[key] = ChunkEncoder(defs)
    return cache[key]


def encode_sample(defs: Sequence[ArrayDef], maps: Mapping[str, Any], meta: Mapping[str, Any]
                  ) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Encode one sample: ``(chunks, meta)`` where ``chunks`` are the compressed map chunks by path and
    ``meta`` the small arrays' values plus ``checksum`` (:func:`checksum` of exactly what is written)."""
    enc = chunk_encoder(defs)
    # One map at a time (quantise, compress, drop): the next canvas reuses the freed memory instead of
    # first-touching ~25 MB of fresh pages per sample (~10 ms here).
    chunks = {d.path: enc.encode(d.path, _encode_map(d, maps[d.path])) for d in defs if d.sharded}
    meta = dict(meta)
    meta["checksum"] = checksum(defs, chunks | meta)
    return chunks, meta


# --------------------------------------------------------------------------------------------- shards

def _decompress_into(blob: bytes, dst: np.ndarray, zstd: bool, key: str) -> None:
    """One chunk's bytes (zstd-compressed when ``zstd``; little-endian, C order) into ``dst`` in place.
    A chunk that does not decode to exactly ``dst.nbytes`` bytes is a :class:`StoreError`."""
    target = dst if dst.flags.c_contiguous else np.empty(dst.shape, dtype=dst.dtype)
    flat = target.reshape(-1).view(np.uint8)  # a view of target: decompressing into it fills dst
    try:
        if not zstd:
            n = len(blob)
            if n == flat.size:
                flat[:] = np.frombuffer(blob, dtype=np.uint8)
        elif _zstd_into is not None:
            n = len(_zstd_into(blob, out=flat))  # imagecodecs returns the filled part: its length is checked
        else:
            from numcodecs import Zstd

            Zstd().decode(blob, out=flat)  # raises only when the chunk is larger than dst
            n = flat.size
    except (RuntimeError, ValueError, TypeError) as exc:
        raise StoreError(f"{key}: damaged chunk ({exc})") from None
    if n != flat.size:
        raise StoreError(f"{key}: chunk decodes to {n} bytes, expected {flat.size}")
    if target is not dst:
        dst[...] = target


try:  # libzstd through imagecodecs (already the image codec's library): decompresses into a given buffer
    from imagecodecs import zstd_decode as _zstd_into
except ImportError:  # pragma: no cover - numcodecs' zstd is the fallback
    _zstd_into = None


def _assemble_shard(chunks: Sequence[bytes | None], ndim_rest: int) -> bytes:
    """Bytes of a ``sharding_indexed`` shard (index at the end: uint64 (offset, nbytes) per chunk, little
    endian, then its CRC32C) from per-chunk encoded bytes; ``None`` = empty chunk."""
    import google_crc32c

    index = np.full((len(chunks),) + (1,) * ndim_rest + (2,), _MAX_U64, dtype="<u8")
    flat = index.reshape(len(chunks), 2)
    parts, offset = [], 0
    for j, c in enumerate(chunks):
        if c is None:
            continue
        flat[j] = (offset, len(c))
        parts.append(c)
        offset += len(c)
    ib = index.tobytes()
    crc = np.uint32(google_crc32c.value(ib)).astype("<u4").tobytes()
    return b"".join(parts) + ib + crc


def _parse_index(tail: bytes, n_chunks: int, key: str) -> np.ndarray:
    """``(n_chunks, 2)`` (offset, nbytes) from a shard's last ``16·n + 4`` bytes, CRC32C checked."""
    import google_crc32c

    isize = 16 * n_chunks
    if len(tail) < isize + 4:
        raise StoreError(f"{key}: shard truncated ({len(tail)} bytes)")
    ib, crc = tail[-isize - 4 : -4], tail[-4:]
    if np.uint32(google_crc32c.value(ib)).astype("<u4").tobytes() != crc:
        raise StoreError(f"{key}: shard index checksum mismatch (damaged shard)")
    return np.frombuffer(ib, dtype="<u8").reshape(n_chunks, 2)


def _parse_shard(buf, n_chunks: int, key: str) -> dict[int, bytes]:
    """Inverse of :func:`_assemble_shard`: ``{slot: bytes}`` of the non-empty chunks (``{}`` if absent)."""
    if buf is None:
        return {}
    blob = buf.to_bytes()
    out = {}
    for j, (off, nb) in enumerate(_parse_index(blob, n_chunks, key).tolist()):
        if off != _MAX_U64:
            out[j] = blob[off : off + nb]
    return out


__all__ = [
    "SCHEMA", "DEFAULT_SHARD_SIZE", "IMAGE_CODECS", "ArrayDef", "Store", "schema", "open_store",
    "create_store", "encode_maps", "encode_sample", "decode", "crop_sample", "checksum",
]
