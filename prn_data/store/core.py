"""The open store: :class:`Store` (read, verify, and the build's writes) and :func:`open_store`.

Read API (used by ``prn info/show/stats/verify``, evaluation and the training loader)::

    store = open_store("cache/coco-val2017-simulated.zarr")   # or http(s)://, s3://, a .zip, zip://...
    store.attrs, store.categories, store.canvas, len(store), store.done, store.has_base
    d = store.read_sample(i)              # crop=True: maps cropped to the sample's valid size
    b = store.read_batch([i, j, k])       # padded canvas, stacked (B, ...) arrays, decoded
    c = store.read_codes(i, paths)        # stored (quantised) dtypes: the training loader's fast path
    store.verify_sample(i)                # recompute the checksum from the stored bytes
    store.failures                        # samples the last build could not make (index, file, error)

Reading a map goes around zarr's codec pipeline when the array has exactly the layout written here
(:func:`~prn_data.store.shards.shard_layout`, checked per array): a read-only handle caches each shard's
index after one suffix read, then reads a sample's chunk with one range request and decompresses it straight
into its destination.

Every read of a done sample is checked (README "Sharing stores"): each chunk's CRC32C (the ``crc32c`` codec
of a store built with per-chunk checksums; ~25 GB/s, so well under 1 % of a training read,
``benchmarks/loader.py``), that no chunk of it is missing (a missing shard or an empty slot is damage, not
fill values), and, when a whole sample is read or the store predates per-chunk checksums, the sample's
stored ``checksum`` over all its chunks and values. A failure is a :class:`DamagedSample` naming the store,
the sample, its image id and the array. Through zarr, a sample cost ~3× as much CPU, and ``read_batch``'s former integer-array
(orthogonal) selection was ~30× slower than per-sample reads: it fetched only the right bytes, but
zarr-python 3.1 filled a shard-sized intermediate buffer (peak memory 67 → 750 MB for two ``base/semantic``
samples of a 2-sample store).

Opening for reading never writes. A store of another :data:`~prn_data.store.schema.SCHEMA` version, or a
folder that is not a prn store, raises :class:`~prn_data.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import zarr
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.abc.store import Store as ZarrStore
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ..errors import StoreError
from ..location import zarr_store
from ..records import CategorySet
from .chunks import checksum
from .codes import crop_sample, decode
from .coords import write_sample_coordinates
from .schema import SCHEMA, SMALL_CHUNK, ArrayDef, schema
from .shards import (NO_CHUNK, ChunkError, Layout, assemble_shard, check_crc32c, decompress_into,
                     ends_with_crc32c, index_nbytes, parse_index, parse_shard, shard_key, shard_layout)

#: What zarr's codecs raise for a chunk that does not decode (a CRC32C mismatch is a ValueError).
_DECODE_ERRORS = (ValueError, RuntimeError, TypeError)


class DamagedSample(StoreError):
    """A done sample that cannot be read as it was written: a chunk that fails its CRC32C or does not
    decode, a missing chunk or shard, or a sample checksum that does not match. ``array`` is ``None``
    when the damage cannot be pinned to one array (a sample checksum mismatch)."""

    def __init__(self, url: str, index: int, image_id: str | None, array: str | None, problem: str):
        self.url, self.index, self.image_id, self.array, self.problem = url, int(index), image_id, array, problem
        who = f"sample {self.index} (image id {image_id})" if image_id else f"sample {self.index}"
        super().__init__(f"{url}: {who}" + (f", array {array}" if array else "") + f": {problem}")

    def __reduce__(self):  # picklable with its fields (a DataLoader worker hands it to the trainer)
        return type(self), (self.url, self.index, self.image_id, self.array, self.problem)

    def to_json(self) -> dict:
        """``{"index", "image_id", "array", "reason"}`` (what ``prn train --skip-bad`` logs)."""
        return {"index": self.index, "image_id": self.image_id, "array": self.array, "reason": self.problem}


class Store:
    """An open prn store. Build through :func:`~prn_data.store.create.create_store`, read through
    :func:`open_store`."""

    def __init__(self, url: str, group: zarr.Group, zstore: ZarrStore, mode: str):
        self.url = url
        self.group = group
        self.zstore = zstore
        self.mode = mode
        self.attrs: dict = dict(group.attrs)
        self.categories = CategorySet.from_json(self.attrs["categories"])
        self.canvas: tuple[int, int] = tuple(int(v) for v in self.attrs["canvas"])
        self.shard_size = int(self.attrs["shard_size"])
        self.has_base = bool(self.attrs.get("base") not in (None, "none"))
        #: Built with a CRC32C at the end of every chunk (root attribute ``chunk_checksum``); an older store
        #: has none, and its reads check the sample checksum instead. A resumed build writes what it has.
        self.crc32c = self.attrs.get("chunk_checksum") == "crc32c"
        self.defs: dict[str, ArrayDef] = {
            d.path: d for d in schema(self.canvas, len(self.categories), self.has_base,
                                      small_weight=self.attrs["target_params"]["small_instance_weight"],
                                      image_codec=self.attrs["image_codec"], crc32c=self.crc32c)}
        self._arrays: dict[str, zarr.Array] = {}
        self._sizes: np.ndarray | None = None
        # Read-only handles cache what a training reader asks for again and again: each shard's chunk
        # index (one small suffix read per shard and array, then one range read per chunk) and blocks of
        # the small per-sample arrays. A handle open for writing caches nothing (the build rewrites both).
        self._index_cache: dict[tuple[str, int], np.ndarray] = {}
        self._small_cache: dict[tuple[str, int], tuple[np.ndarray, bool]] = {}
        # per array, from its metadata: a map array's shard layout; whether a small array's chunks end
        # with a CRC32C
        self._layouts: dict[str, Layout] = {}
        self._crc: dict[str, bool] = {}

    # -- basic facts
    def __len__(self) -> int:
        return int(self.attrs["n_samples"])

    def __repr__(self) -> str:
        return f"Store({self.url!r}, n={len(self)}, canvas={self.canvas}, base={self.attrs.get('base')!r})"

    def array(self, path: str) -> zarr.Array:
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
        return np.asarray(self.values("done"), dtype=bool)

    @property
    def sizes(self) -> np.ndarray:
        """``(N, 2) int32`` valid ``(h, w)`` per sample (read once)."""
        if self._sizes is None or self.mode != "r":
            self._sizes = np.asarray(self.values("size"), dtype=np.int32)
        return self._sizes

    def values(self, path: str) -> np.ndarray:
        """Every value of small array ``path`` (e.g. ``image_id``); a chunk that fails its CRC32C or does not
        decode is a :class:`StoreError` naming the array and its samples."""
        a = self.array(path)
        try:
            return np.asarray(a[:])
        except _DECODE_ERRORS as exc:
            raise StoreError(f"{self.url}: array {path}: a damaged chunk ({type(exc).__name__}: {exc})") from None

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
                out[p] = self.read_value(p, i)
        return {p: out[p] for p in paths}

    def read_sample(self, i: int, crop: bool = True, arrays: Iterable[str] | None = None) -> dict[str, Any]:
        """Sample ``i`` decoded to the in-memory dtypes (module table). ``crop=False`` keeps the canvas.

        ``arrays`` restricts the read to some paths (``size`` is always read). Reading a sample whose
        ``done`` is False raises :class:`StoreError`; a damaged or missing chunk :class:`DamagedSample`.
        Without ``arrays`` (the whole sample) its stored ``checksum`` is checked too.
        """
        i = self._check_index(i)
        want = [p for p in dict.fromkeys(["size", *(arrays or self.defs)]) if p != "done"]
        for p in want:
            if p not in self.defs:
                raise StoreError(f"{self.url}: no array {p!r} in this store")
        if not self.is_done(i):
            raise StoreError(f"{self.url}: sample {i} is not done (build incomplete or failed)")
        maps = [p for p in want if self.defs[p].sharded]
        raw = self._codes(i, maps, {}, whole=arrays is None, small=[p for p in want if p not in maps])
        out = {p: self._decode(i, p, raw[p] if p in raw else self.read_value(p, i)) for p in want}
        if crop:
            out = crop_sample(out, out["size"])
        return out

    def is_done(self, i: int) -> bool:
        """Whether sample ``i`` is completely written (a cached True stays True; False is re-read)."""
        return bool(self.read_value("done", i))

    def read_value(self, path: str, i: int) -> Any:
        """Sample ``i``'s value of small array ``path`` (``size``, ``image_id``, ``gt/segments`` …, as stored),
        checked as :meth:`_small` says; read-only handles read and keep whole chunks."""
        return self._small(path, self._check_index(i))

    def _block(self, path: str, block: int, j: int) -> tuple[np.ndarray, bool]:
        """Values of chunk ``block`` of small array ``path`` and whether the chunk is missing (zarr then
        reads fill values; only a store whose small arrays write every chunk, those with a CRC32C, is asked).
        Read-only handles keep both, except that a ``done`` chunk is read again while its value ``j`` is
        False. A chunk that fails its CRC32C or does not decode raises a :class:`ChunkError`."""
        hit = self._small_cache.get((path, block)) if self.mode == "r" else None
        if hit is not None and not (path == "done" and not hit[0][j]):
            return hit
        d = self.defs[path]
        try:
            vals = np.asarray(self.array(path)[block * SMALL_CHUNK : (block + 1) * SMALL_CHUNK])
        except _DECODE_ERRORS as exc:
            raise ChunkError(f"damaged chunk ({type(exc).__name__}: {exc})") from None
        missing = False
        if path != "done" and self._has_crc(path):
            fill = np.asarray(d.fill, dtype=object if d.dtype == "str" else d.dtype)
            if bool(np.all(vals == fill)):  # all fill values: the chunk may be missing (rare: check)
                missing = not sync(self.zstore.exists(f"{path}/c/{block}" + "/0" * len(d.shape)))
        if self.mode == "r":
            self._small_cache[(path, block)] = (vals, missing)
        return vals, missing

    def _small(self, path: str, i: int) -> Any:
        """Value ``i`` of a small (unsharded) array, checked: its chunk's CRC32C, and for a done sample of a
        store whose small arrays write every chunk (those with a CRC32C), that the chunk exists."""
        block, j = divmod(i, SMALL_CHUNK)
        try:
            vals, missing = self._block(path, block, j)
        except ChunkError as exc:
            raise self._damaged(i, path, str(exc)) from None
        if missing and self.is_done(i):
            raise self._damaged(i, path, f"chunk {path}/c/{block} is missing")
        return vals[j]

    def _has_crc(self, path: str) -> bool:
        """Whether ``path``'s chunks end with a CRC32C (from the array's metadata, not the attributes)."""
        if path not in self._crc:
            if self.defs[path].sharded:
                self._crc[path] = self._layout(path).crc32c
            else:
                self._crc[path] = ends_with_crc32c(self.array(path))
        return self._crc[path]

    def _layout(self, path: str) -> Layout:
        """How ``path``'s chunks are stored (:func:`~prn_data.store.shards.shard_layout`; checked once per
        array). A map array not sharded as prn shards them is a :class:`StoreError`."""
        if path not in self._layouts:
            lay = shard_layout(self.array(path), self.defs[path], self.shard_size)
            if lay is None:
                raise StoreError(f"{self.url}: array {path} is not stored as a prn store's map arrays are "
                                 f"(one sample per chunk, {self.shard_size} per shard, shard index at the end)")
            self._layouts[path] = lay
        return self._layouts[path]

    def _is_direct(self, path: str) -> bool:
        """Whether ``path``'s chunks are read without zarr's codec pipeline."""
        return self._layout(path).direct

    def image_id(self, i: int) -> str | None:
        """Sample ``i``'s image id for messages, or ``None`` when it cannot be read."""
        try:
            block, j = divmod(i, SMALL_CHUNK)
            return str(self._block("image_id", block, j)[0][j]) or None
        except Exception:  # a message about damage must not fail on more damage
            return None

    def _damaged(self, i: int, path: str | None, problem: str) -> DamagedSample:
        return DamagedSample(self.url, i, self.image_id(i), path, problem)

    def _decode(self, i: int, path: str, raw: Any) -> Any:
        """:func:`decode` of sample ``i``'s stored ``raw`` value of ``path``; a JSON value that does not parse
        is a :class:`DamagedSample`."""
        try:
            return decode(self.defs[path], raw)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise self._damaged(i, path, f"value does not decode ({exc})") from None

    def read_codes(self, i: int, paths: Sequence[str], out: Mapping[str, np.ndarray] | None = None
                   ) -> dict[str, np.ndarray]:
        """Stored values (quantised dtypes, padded canvas) of sample ``i``'s map arrays ``paths``.

        The fast path for training: per array one range read of the chunk (shard indices are cached by a
        read-only handle), its CRC32C checked, and one zstd decompression straight into the result — no
        whole-shard reads and none of zarr's per-call buffers. ``out[path]`` (C-contiguous, the array's
        per-sample shape and stored dtype) is filled in place when given, e.g. a slice of a batch. Arrays
        written with other codecs (the image codec, Blosc) are decoded by zarr. An empty slot reads as the
        fill value for a sample that is not done; for a done sample it is a :class:`DamagedSample`, as is a
        damaged chunk. Returns ``{path: array}``.
        """
        i = self._check_index(i)
        return self._codes(i, list(paths), dict(out or {}))

    def _codes(self, i: int, paths: list[str], out: dict[str, np.ndarray], *, whole: bool = False,
               small: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """:meth:`read_codes`; the sample checksum is checked too when ``whole`` (every array is being read)
        or when an array read (``paths``, or the small arrays ``small`` the caller reads) has no CRC32C."""
        blobs = self._fetch(i, paths)
        res: dict[str, np.ndarray] = {}
        done: bool | None = None
        for p in paths:
            d, lay, blob = self.defs[p], self._layout(p), blobs[p]
            dst = out.get(p)
            if blob is None:
                done = self.is_done(i) if done is None else done
                if done:
                    raise self._damaged(i, p, "chunk missing (its shard file or its slot in the shard is gone)")
                if dst is None:
                    dst = np.empty(d.shape, dtype=d.dtype)
                dst[...] = d.fill  # a sample not (yet) written reads as the fill value, as zarr does
                res[p] = dst
                continue
            try:
                payload = check_crc32c(blob) if lay.crc32c else blob
                if lay.direct:
                    if dst is None:
                        dst = np.empty(d.shape, dtype=d.dtype)
                    decompress_into(payload, dst, lay.zstd)
                else:  # zarr's codec pipeline (it checks the CRC32C again, and reads the chunk again)
                    v = np.asarray(self.array(p)[i])
                    if dst is not None:
                        dst[...] = v
                    dst = v if dst is None else dst
            except ChunkError as exc:
                raise self._damaged(i, p, str(exc)) from None
            except _DECODE_ERRORS as exc:
                raise self._damaged(i, p, f"damaged chunk ({type(exc).__name__}: {exc})") from None
            res[p] = dst
        if whole or not all(self._has_crc(p) for p in (*paths, *small)):
            if done is None:
                done = self.is_done(i)
            if done:
                self._check_sample(i, blobs)
        return res

    def _fetch(self, i: int, paths: Sequence[str]) -> dict[str, bytes | None]:
        """The encoded bytes of sample ``i``'s chunk of each map array in ``paths`` (``None`` for a missing
        shard or an empty slot): one suffix read per shard index not yet cached, then one range read per
        chunk, all concurrent."""
        if not paths:
            return {}
        S, shard, slot = self.shard_size, i // self.shard_size, i % self.shard_size
        proto = default_buffer_prototype()
        keys = {p: shard_key(p, shard, len(self.defs[p].shape)) for p in paths}
        need = [p for p in paths if (p, shard) not in self._index_cache]

        async def gather(reqs: list[tuple[str, RangeByteRequest | SuffixByteRequest]]) -> list:
            return await asyncio.gather(*(self.zstore.get(k, prototype=proto, byte_range=r) for k, r in reqs))

        index: dict[str, np.ndarray | None] = {p: self._index_cache.get((p, shard)) for p in paths}
        if need:
            tails = sync(gather([(keys[p], SuffixByteRequest(index_nbytes(S))) for p in need]))
            for p, tail in zip(need, tails):
                try:
                    index[p] = None if tail is None else parse_index(tail.to_bytes(), S)
                except ChunkError as exc:
                    raise self._damaged(i, p, f"{keys[p]}: {exc}") from None
                if tail is not None and self.mode == "r":
                    self._index_cache[(p, shard)] = index[p]
        spans = {}
        for p in paths:
            ix = index[p]
            if ix is not None and int(ix[slot, 0]) != NO_CHUNK:
                off, nb = int(ix[slot, 0]), int(ix[slot, 1])
                spans[p] = RangeByteRequest(off, off + nb)
        got = dict(zip(spans, sync(gather([(keys[p], r) for p, r in spans.items()])))) if spans else {}
        return {p: (None if got.get(p) is None else got[p].to_bytes()) for p in paths}

    def _check_sample(self, i: int, blobs: Mapping[str, bytes | None]) -> None:
        """Compare done sample ``i``'s stored ``checksum`` with the one of its stored chunks (``blobs``, the
        others fetched) and values; a :class:`DamagedSample` when they differ."""
        rest = [p for p in self.map_paths if p not in blobs]
        values: dict[str, Any] = dict(blobs) | self._fetch(i, rest)
        for p, d in self.defs.items():
            if not d.sharded and p not in ("done", "checksum"):
                values[p] = self._small(p, i)
        if checksum(self.defs.values(), values) != int(self._small("checksum", i)):
            why = ("its arrays differ from what was written (sample checksum mismatch; this store has no "
                   "per-chunk checksums to tell which array: rebuild it to get them)") if not self.crc32c else (
                   "its arrays differ from what was written (sample checksum mismatch: a chunk or value was "
                   "replaced after the build)")
            raise self._damaged(i, None, why)

    def read_batch(self, indices: Sequence[int], arrays: Iterable[str] | None = None) -> dict[str, Any]:
        """Samples ``indices`` on the padded canvas, stacked: ``(B, ...)`` decoded arrays, lists for strings
        and segments. Each sample's chunks are read alone (one range read per chunk, never a whole shard)
        and decompressed into the stacked array; decoding to floats is one pass over the batch. Checked as
        :meth:`read_sample` checks a sample."""
        idx = [self._check_index(i) for i in indices]
        bad = [i for i in idx if not self.is_done(i)]
        if bad:
            raise StoreError(f"{self.url}: samples {bad} are not done")
        paths = [p for p in (arrays or self.defs) if p != "done"]
        for p in paths:
            if p not in self.defs:
                raise StoreError(f"{self.url}: no array {p!r} in this store")
        maps = [p for p in paths if self.defs[p].sharded]
        small = [p for p in paths if p not in maps]
        stacked = {p: np.empty((len(idx),) + self.defs[p].shape, dtype=self.defs[p].dtype) for p in maps}
        for b, i in enumerate(idx):
            self._codes(i, maps, {p: stacked[p][b] for p in maps}, whole=arrays is None, small=small)
        out: dict[str, Any] = {}
        for p in paths:
            d = self.defs[p]
            if d.sharded:
                out[p] = decode(d, stacked[p], batched=True)
            elif d.encoding in ("json", "str"):
                out[p] = [self._decode(i, p, self.read_value(p, i)) for i in idx]
            else:
                out[p] = decode(d, np.stack([np.asarray(self.read_value(p, i)) for i in idx]), batched=True)
        return out

    def chunk_bytes(self, path: str, i: int) -> bytes | None:
        """The encoded bytes of sample ``i``'s chunk of map array ``path`` (two range reads: the shard's
        index, then the chunk), or None for an empty slot."""
        i = self._check_index(i)
        d, S = self.defs[path], self.shard_size
        key = shard_key(path, i // S, len(d.shape))
        proto = default_buffer_prototype()
        tail = sync(self.zstore.get(key, prototype=proto, byte_range=SuffixByteRequest(index_nbytes(S))))
        if tail is None:
            return None
        off, nb = parse_index(tail.to_bytes(), S, key)[i % S]
        if off == NO_CHUNK:
            return None
        blob = sync(self.zstore.get(key, prototype=proto, byte_range=RangeByteRequest(off, off + nb)))
        return None if blob is None else blob.to_bytes()

    def sample_checksum(self, i: int) -> int:
        """Recompute sample ``i``'s checksum from its stored bytes (map chunks) and values (small arrays).

        Reads as :meth:`read_codes` does: the map chunks in one concurrent batch of range reads, the shard
        indices and the small arrays' chunks once per shard or chunk on a read-only handle (``prn verify``
        of a whole store then reads each small chunk once, not once per sample: a bounded number of
        objects per sample, README "At COCO scale")."""
        i = self._check_index(i)
        values: dict[str, Any] = dict(self._fetch(i, self.map_paths))
        for p, d in self.defs.items():
            if not d.sharded and p not in ("done", "checksum"):
                values[p] = self._small(p, i)
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
        S = self.shard_size
        base = shard * S
        keep = [int(i) for i in keep]
        proto = default_buffer_prototype()
        for path in self.map_paths:
            d = self.defs[path]
            key = shard_key(path, shard, len(d.shape))
            old = parse_shard(sync(self.zstore.get(key, prototype=proto)), S, key) if keep else {}
            chunks: list[bytes | None] = [None] * S
            for i in keep:
                chunks[i - base] = old.get(i - base)
                if chunks[i - base] is None:
                    raise StoreError(f"{self.url}: sample {i} is marked done but its {path} chunk is missing")
            for i, enc in samples.items():
                chunks[i - base] = enc[path]
            blob = assemble_shard(chunks, len(d.shape))
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
            # every chunk is written, even one of fill values only ("[]" segments): a reader then knows a
            # missing chunk of a done sample for damage
            self.array(p).with_config({"write_empty_chunks": True}).set_orthogonal_selection(
                (idx,) + (slice(None),) * len(d.shape), arr)
        self.array("done").set_orthogonal_selection((idx,), np.ones(len(idx), dtype=bool))

    def set_attrs(self, **values: Any) -> None:
        """Update root attributes (build only)."""
        self.group.attrs.update(values)
        self.attrs.update(values)

    def consolidate(self) -> None:
        """Consolidate metadata (once, at the end of a build: consolidated metadata goes stale when arrays
        are added after it, README "The store (Zarr v3)"), after copying the image ids into the groups'
        ``sample`` coordinates for xarray readers (:mod:`~prn_data.store.coords`)."""
        write_sample_coordinates(self.group, self.values("image_id"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "consolidated metadata is not in the v3 spec" — known, chosen
            zarr.consolidate_metadata(self.zstore)


def open_store(url: str | Path, mode: str = "r") -> Store:
    """Open the prn store at ``url`` (a folder, a ``.zip`` file, ``zip://…``, ``http(s)://…`` or any fsspec
    URL). ``mode="r"`` never writes; ``"r+"`` is for the build. Raises :class:`StoreError` for a folder that
    is not a prn store or one of another schema version."""
    url = str(url)
    if mode not in ("r", "r+"):
        raise StoreError(f"mode must be 'r' or 'r+', got {mode!r}")
    zstore = zarr_store(url, mode)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            group = zarr.open_group(zstore, mode=mode, zarr_format=3, use_consolidated=None if mode == "r" else False)
    except StoreError:  # a remote store that did not answer (prn_data.location names the URL and the key)
        raise
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
