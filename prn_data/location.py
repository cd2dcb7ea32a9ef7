"""Where a store lives: a local folder, a local or remote ``.zip``, or any fsspec URL (``http(s)://``,
``s3://`` …), turned into a zarr-python 3 store.

Read-only stores never write (no lock files, no metadata updates), so a read-only share or a plain HTTP
server works. Servers that ignore byte-range requests (``python -m http.server``, some CDNs) are detected and
read through :func:`whole_object_ranges`, since fsspec's HTTP ``cat_file`` does not check for ``206``
(fsspec #1140) and zarr's shard-index reads would otherwise get the wrong bytes.
"""

from __future__ import annotations

import urllib.request
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, LocalStore, WrapperStore, ZipStore

from .errors import StoreError


def is_zip_url(url: str) -> bool:
    """True for a URL that names a zip file (``x.zip``, ``file:///x.zip``, ``zip::…``, ``…/x.zip``)."""
    return url.startswith(("zip::", "zip://")) or url.rstrip("/").lower().endswith(".zip")


def is_http_url(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def local_path(url: str) -> Path | None:
    """The local filesystem path of ``url``, or ``None`` when it names a remote resource."""
    if url.startswith("file://"):
        return Path(url[len("file://") :])
    if "://" in url or "::" in url:
        return None
    return Path(url)


def http_supports_ranges(url: str, timeout: float = 10.0) -> bool:
    """Whether the server behind ``url`` (a store root) answers a byte-range request for its ``zarr.json``
    with ``206 Partial Content``. Errors count as "supported": there is nothing to work around then, and
    opening reports the real problem."""
    req = urllib.request.Request(url.rstrip("/") + "/zarr.json", headers={"Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status == 206
    except OSError:
        return True


class WholeObjectRangeStore(WrapperStore):
    """A read-only zarr store whose server ignores byte ranges: every ranged read fetches the whole object
    once (kept in an LRU cache of at most ``max_cache_bytes``) and slices it locally."""

    def __init__(self, store: Store, max_cache_bytes: int = 256 << 20) -> None:
        super().__init__(store)
        self.max_cache_bytes = max_cache_bytes
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached_bytes = 0

    async def _whole(self, key: str, prototype: BufferPrototype) -> bytes | None:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        buf = await self._store.get(key, prototype)
        if buf is None:
            return None
        data = buf.to_bytes()
        self._cache[key] = data
        self._cached_bytes += len(data)
        while self._cached_bytes > self.max_cache_bytes and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= len(dropped)
        return data

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        if byte_range is None:
            return await self._store.get(key, prototype)
        data = await self._whole(key, prototype)
        if data is None:
            return None
        if isinstance(byte_range, RangeByteRequest):
            part = data[byte_range.start : byte_range.end]
        elif isinstance(byte_range, OffsetByteRequest):
            part = data[byte_range.offset :]
        elif isinstance(byte_range, SuffixByteRequest):
            part = data[-byte_range.suffix :] if byte_range.suffix else b""
        else:
            raise ValueError(f"unexpected byte range {byte_range!r}")
        return prototype.buffer.from_bytes(part)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [await self.get(k, prototype, r) for k, r in key_ranges]


def whole_object_ranges(store: Store, max_cache_bytes: int = 256 << 20) -> WholeObjectRangeStore:
    """Wrap a read-only zarr store whose server ignores byte ranges: every ranged read fetches the whole
    object once (kept in an LRU cache of at most ``max_cache_bytes``) and slices it locally, so reading the
    samples of one shard in turn downloads the shard once."""
    return WholeObjectRangeStore(store, max_cache_bytes)


def zarr_store(url: str, mode: str = "r") -> Store:
    """A zarr-python 3 store for ``url`` opened for reading (``mode="r"``) or writing (``"r+"``, ``"w"``).

    Zips open read-only (unpack one to modify it). Raises :class:`StoreError` naming ``url`` when a local
    path for reading does not exist or a file is not a zip.
    """
    url = str(url)
    read_only = mode == "r"
    local = local_path(url)
    if local is not None:
        if local.is_file() or (read_only and local.suffix.lower() == ".zip"):
            if not local.is_file():
                raise StoreError(f"{url}: no such zip file")
            if not zipfile.is_zipfile(local):
                raise StoreError(f"{url}: a file that is not a zip; a store is a folder or a .zip")
            if not read_only:
                raise StoreError(f"{url}: a zipped store opens read-only (unpack it to modify it)")
            return ZipStore(local, mode="r", read_only=True)
        if read_only and not local.is_dir():
            raise StoreError(f"{url}: no such store (not a folder)")
        return LocalStore(local, read_only=read_only)
    if is_zip_url(url) and not read_only:
        raise StoreError(f"{url}: a zipped store opens read-only")
    if is_zip_url(url) and not url.startswith(("zip::", "zip://")):
        url = "zip::" + url
    try:
        store = FsspecStore.from_url(url, read_only=read_only)
    except Exception as exc:  # fsspec raises ImportError / ValueError / protocol-specific errors
        raise StoreError(f"{url}: cannot open ({type(exc).__name__}: {exc})") from None
    if read_only and is_http_url(url) and not http_supports_ranges(url):
        store = whole_object_ranges(store)
    return store
