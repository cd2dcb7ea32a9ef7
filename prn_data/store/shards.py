"""The bytes of a shard: assembling one from encoded chunks, parsing its index, decompressing a chunk.

A map array's shard is zarr's ``sharding_indexed`` layout as :func:`~prn_data.store.create.create_array`
declares it: the chunks' bytes back to back, then the index (uint64 ``(offset, nbytes)`` per chunk, little
endian, ``(2⁶⁴−1, 2⁶⁴−1)`` for an empty one) and its CRC32C. The build assembles whole shards
(:func:`assemble_shard`, one writer per shard: README "The store (Zarr v3)"); a reader whose arrays have
exactly this layout (:func:`direct_layout`) reads a sample's chunk with one range request and decompresses
it straight into its destination (:func:`decompress_into`), around zarr's codec pipeline.
"""

from __future__ import annotations

from typing import Sequence

import google_crc32c
import numpy as np
import zarr
import zarr.codecs as zc
from numcodecs import Zstd
from zarr.core.buffer import Buffer

from ..errors import StoreError
from .schema import ArrayDef

try:  # libzstd through imagecodecs (already the image codec's library): decompresses into a given buffer
    from imagecodecs import zstd_decode as _zstd_into
except ImportError:  # pragma: no cover - an imagecodecs built without zstd: numcodecs' zstd is the fallback
    _zstd_into = None

#: Offset and size of an empty chunk in a shard's index.
NO_CHUNK = 2**64 - 1


def shard_key(path: str, shard: int, ndim_rest: int) -> str:
    """The store key of shard ``shard`` of map array ``path`` (``ndim_rest`` axes after the sample's)."""
    return f"{path}/c/{shard}" + "/0" * ndim_rest


def index_nbytes(n_chunks: int) -> int:
    """Bytes at the end of a shard of ``n_chunks`` chunks that hold its index and the index's CRC32C."""
    return 16 * n_chunks + 4


def _crc32c(data: bytes) -> bytes:
    return np.uint32(google_crc32c.value(data)).astype("<u4").tobytes()


def assemble_shard(chunks: Sequence[bytes | None], ndim_rest: int) -> bytes:
    """Bytes of a ``sharding_indexed`` shard (index at the end: uint64 (offset, nbytes) per chunk, little
    endian, then its CRC32C) from per-chunk encoded bytes; ``None`` = empty chunk."""
    index = np.full((len(chunks),) + (1,) * ndim_rest + (2,), NO_CHUNK, dtype="<u8")
    flat = index.reshape(len(chunks), 2)
    parts, offset = [], 0
    for j, c in enumerate(chunks):
        if c is None:
            continue
        flat[j] = (offset, len(c))
        parts.append(c)
        offset += len(c)
    ib = index.tobytes()
    return b"".join(parts) + ib + _crc32c(ib)


def parse_index(tail: bytes, n_chunks: int, key: str) -> np.ndarray:
    """``(n_chunks, 2)`` (offset, nbytes) from a shard's last ``16·n + 4`` bytes, CRC32C checked."""
    isize = 16 * n_chunks
    if len(tail) < isize + 4:
        raise StoreError(f"{key}: shard truncated ({len(tail)} bytes)")
    ib, crc = tail[-isize - 4 : -4], tail[-4:]
    if _crc32c(ib) != crc:
        raise StoreError(f"{key}: shard index checksum mismatch (damaged shard)")
    return np.frombuffer(ib, dtype="<u8").reshape(n_chunks, 2)


def parse_shard(buf: Buffer | None, n_chunks: int, key: str) -> dict[int, bytes]:
    """Inverse of :func:`assemble_shard`: ``{slot: bytes}`` of the non-empty chunks (``{}`` if absent)."""
    if buf is None:
        return {}
    blob = buf.to_bytes()
    out = {}
    for j, (off, nb) in enumerate(parse_index(blob, n_chunks, key).tolist()):
        if off != NO_CHUNK:
            out[j] = blob[off : off + nb]
    return out


def direct_layout(array: zarr.Array, d: ArrayDef, shard_size: int) -> bool | None:
    """Whether ``array``'s chunks can be read without zarr's codec pipeline: one sample per chunk inside
    ``shard_size`` shards, chunk codecs little-endian bytes (+ zstd), shard index at the end with CRC32C —
    exactly what :func:`~prn_data.store.create.create_array` writes with the zstd codecs. ``None`` when
    not; else whether the chunks are zstd-compressed."""
    try:
        codecs = array.metadata.codecs
        if len(codecs) != 1 or not isinstance(codecs[0], zc.ShardingCodec):
            return None
        sc = codecs[0]
        inner = list(sc.codecs)
        ok = (tuple(sc.chunk_shape) == (1,) + d.shape
              and tuple(array.shards or ()) == (shard_size,) + d.shape
              and str(getattr(sc.index_location, "value", sc.index_location)) == "end"
              and [type(c) for c in sc.index_codecs] == [zc.BytesCodec, zc.Crc32cCodec]
              and len(inner) in (1, 2) and isinstance(inner[0], zc.BytesCodec)
              and (np.dtype(d.dtype).itemsize == 1
                   or str(getattr(inner[0].endian, "value", inner[0].endian)) == "little")
              and (len(inner) == 1 or isinstance(inner[1], zc.ZstdCodec)))
    except (AttributeError, TypeError):
        return None
    return (len(inner) == 2) if ok else None


def decompress_into(blob: bytes, dst: np.ndarray, zstd: bool, key: str) -> None:
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
            Zstd().decode(blob, out=flat)  # raises only when the chunk is larger than dst
            n = flat.size
    except (RuntimeError, ValueError, TypeError) as exc:
        raise StoreError(f"{key}: damaged chunk ({exc})") from None
    if n != flat.size:
        raise StoreError(f"{key}: chunk decodes to {n} bytes, expected {flat.size}")
    if target is not dst:
        dst[...] = target
