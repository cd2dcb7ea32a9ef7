"""A sample as the store writes it: its map chunks encoded with the arrays' own codecs, and its checksum.

:func:`encode_sample` is what a build worker runs per sample; the chunks then go into a shard assembled
whole (:meth:`~prn_data.store.core.Store.write_shard`) and the small values, checksum included, are written
by the build's driver (:meth:`~prn_data.store.core.Store.write_meta`).
"""

from __future__ import annotations

import hashlib
import threading
import zlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import MemoryStore

from .codes import encode_map
from .schema import ZSTD_CODECS, ArrayDef, inner_codecs
from .shards import crc32c_bytes


def checksum(defs: Iterable[ArrayDef], values: Mapping[str, Any]) -> int:
    """Digest of one sample as stored: BLAKE2b-64 over, for every array but ``done``/``checksum`` in schema
    order, its path and the CRC-32 (zlib) of its data — the encoded chunk bytes of a map array (1–2 MB a
    sample, so hashing costs ~1 ms rather than ~15 ms for the ~30 MB of decoded maps; it also catches a
    damaged compressed chunk that would still decode), the little-endian values of ``size``/``orig_size``,
    the UTF-8 of strings — as an unsigned int. A missing chunk hashes as empty."""
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
    in-memory zarr array), so the bytes can be placed in a shard assembled by
    :meth:`~prn_data.store.core.Store.write_shard`. Not thread-safe: use one per thread
    (:func:`chunk_encoder`)."""

    def __init__(self, defs: Iterable[ArrayDef]):
        self._arrays: dict[str, tuple[zarr.Array, MemoryStore, str]] = {}
        self._direct: dict[str, tuple[Zstd, bool]] = {}
        for d in defs:
            if not d.sharded:
                continue
            if d.codec in ZSTD_CODECS:
                self._direct[d.path] = (Zstd(level=int(d.codec[-1]), checksum=False), d.crc32c)
                continue
            mem = MemoryStore()
            serializer, compressors = inner_codecs(d.codec, d.crc32c)
            a = zarr.create_array(mem, shape=(1,) + d.shape, chunks=(1,) + d.shape, dtype=d.dtype,
                                  fill_value=d.fill, serializer=serializer, compressors=compressors,
                                  config={"write_empty_chunks": True})
            self._arrays[d.path] = (a, mem, "c/0" + "/0" * len(d.shape))

    def encode(self, path: str, chunk: np.ndarray) -> bytes:
        """The encoded bytes of one sample's chunk of ``path`` (padded, stored dtype)."""
        direct = self._direct.get(path)
        if direct is not None:
            # plain bytes + zstd (+ crc32c): the same bytes zarr's ZstdCodec and Crc32cCodec write, without
            # their per-call overhead (tests/test_integrity.py compares the two byte for byte)
            zstd, crc = direct
            blob = zstd.encode(np.ascontiguousarray(chunk, dtype=chunk.dtype.newbyteorder("<")))
            return blob + crc32c_bytes(blob) if crc else blob
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
    chunks = {d.path: enc.encode(d.path, encode_map(d, maps[d.path])) for d in defs if d.sharded}
    meta = dict(meta)
    meta["checksum"] = checksum(defs, chunks | meta)
    return chunks, meta
