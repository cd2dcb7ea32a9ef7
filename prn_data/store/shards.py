"""The bytes of a shard: assembling one from encoded chunks, parsing its index, checking and decompressing a
chunk.

A map array's shard is zarr's ``sharding_indexed`` layout as :func:`~prn_data.store.create.create_array`
declares it: the chunks' bytes back to back, then the index (uint64 ``(offset, nbytes)`` per chunk, little
endian, ``(2⁶⁴−1, 2⁶⁴−1)`` for an empty one) and its CRC32C. Each chunk of a store built with per-chunk
checksums ends with the CRC32C of its compressed bytes (zarr's ``crc32c`` codec, little endian). The build
assembles whole shards (:func:`assemble_shard`, one writer per shard: README "The store (Zarr v3)"); a
reader of an array with this layout (:func:`shard_layout`) reads a sample's chunk with one range request,
checks its CRC32C (:func:`check_crc32c`) and, for plain bytes + zstd, decompresses it straight into its
destination (:func:`decompress_into`), around zarr's codec pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
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


class ChunkError(StoreError):
    """A chunk or shard index is damaged or missing; the message says what, the reader says where."""


def crc32c_bytes(data: bytes | np.ndarray) -> bytes:
    """The CRC32C of ``data`` as zarr's ``crc32c`` codec appends it: 4 bytes, little endian."""
    view = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    # a NumPy view: google_crc32c takes it without a copy (and hashes ~25 GB/s here, SSE4.2)
    return np.uint32(google_crc32c.value(view)).astype("<u4").tobytes()


def check_crc32c(blob: bytes) -> np.ndarray:
    """The payload of a chunk that ends with its CRC32C (a ``uint8`` view of ``blob``, no copy); a
    :class:`ChunkError` when the stored and computed checksums differ."""
    if len(blob) < 4:
        raise ChunkError(f"damaged chunk ({len(blob)} bytes, shorter than its checksum)")
    payload = np.frombuffer(blob, dtype=np.uint8)[:-4]
    if crc32c_bytes(payload) != blob[-4:]:
        raise ChunkError("damaged chunk (CRC32C mismatch)")
    return payload


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
    return b"".join(parts) + ib + crc32c_bytes(ib)


def parse_index(tail: bytes, n_chunks: int, key: str | None = None) -> np.ndarray:
    """``(n_chunks, 2)`` (offset, nbytes) from a shard's last ``16·n + 4`` bytes, CRC32C checked
    (:class:`ChunkError`, prefixed with ``key`` when given)."""
    where = f"{key}: " if key else ""
    isize = 16 * n_chunks
    if len(tail) < isize + 4:
        raise ChunkError(f"{where}shard truncated ({len(tail)} bytes)")
    ib, crc = tail[-isize - 4 : -4], tail[-4:]
    if crc32c_bytes(ib) != crc:
        raise ChunkError(f"{where}shard index checksum mismatch (damaged shard)")
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


@dataclass(frozen=True)
class Layout:
    """How a map array's chunks are stored inside prn's shard layout (:func:`shard_layout`): ``direct`` when
    they are plain little-endian bytes, ``zstd``-compressed or not, which prn decompresses itself (else
    zarr's codec pipeline decodes them); ``crc32c`` when each ends with its CRC32C."""

    direct: bool
    zstd: bool
    crc32c: bool


def shard_layout(array: zarr.Array, d: ArrayDef, shard_size: int) -> Layout | None:
    """The :class:`Layout` of ``array`` when it is sharded as :func:`~prn_data.store.create.create_array`
    makes it (one sample per chunk, ``shard_size`` per shard, index at the end with CRC32C), so that a
    reader can find a sample's chunk bytes itself; ``None`` when not."""
    try:
        codecs = array.metadata.codecs
        if len(codecs) != 1 or not isinstance(codecs[0], zc.ShardingCodec):
            return None
        sc = codecs[0]
        inner = list(sc.codecs)
        if not (tuple(sc.chunk_shape) == (1,) + d.shape
                and tuple(array.shards or ()) == (shard_size,) + d.shape
                and str(getattr(sc.index_location, "value", sc.index_location)) == "end"
                and [type(c) for c in sc.index_codecs] == [zc.BytesCodec, zc.Crc32cCodec]):
            return None
        crc = bool(inner) and isinstance(inner[-1], zc.Crc32cCodec)
        body = inner[:-1] if crc else inner
        direct = (len(body) in (1, 2) and isinstance(body[0], zc.BytesCodec)
                  and (np.dtype(d.dtype).itemsize == 1
                       or str(getattr(body[0].endian, "value", body[0].endian)) == "little")
                  and (len(body) == 1 or isinstance(body[1], zc.ZstdCodec)))
    except (AttributeError, TypeError):
        return None
    return Layout(direct=direct, zstd=direct and len(body) == 2, crc32c=crc)


def ends_with_crc32c(array: zarr.Array) -> bool:
    """Whether ``array``'s chunks (an unsharded array's) end with zarr's ``crc32c`` codec."""
    try:
        codecs = array.metadata.codecs
    except AttributeError:
        return False
    return bool(codecs) and isinstance(codecs[-1], zc.Crc32cCodec)


def decompress_into(blob: bytes | np.ndarray, dst: np.ndarray, zstd: bool) -> None:
    """One chunk's bytes (zstd-compressed when ``zstd``; little-endian, C order) into ``dst`` in place.
    A chunk that does not decode to exactly ``dst.nbytes`` bytes is a :class:`ChunkError`."""
    target = dst if dst.flags.c_contiguous else np.empty(dst.shape, dtype=dst.dtype)
    flat = target.reshape(-1).view(np.uint8)  # a view of target: decompressing into it fills dst
    src = np.frombuffer(blob, dtype=np.uint8) if isinstance(blob, (bytes, bytearray)) else blob
    try:
        if not zstd:
            n = len(src)
            if n == flat.size:
                flat[:] = src
        elif _zstd_into is not None:
            n = len(_zstd_into(src, out=flat))  # imagecodecs returns the filled part: its length is checked
        else:
            Zstd().decode(src, out=flat)  # raises only when the chunk is larger than dst
            n = flat.size
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ChunkError(f"damaged chunk ({exc})") from None
    if n != flat.size:
        raise ChunkError(f"chunk decodes to {n} bytes, expected {flat.size}")
    if target is not dst:
        dst[...] = target
