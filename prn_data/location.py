"""Where a store lives: a local folder, a local or remote ``.zip``, or any fsspec URL (``http(s)://``,
``s3://`` …), turned into a zarr-python 3 store.

Read-only stores never write (no lock files, no metadata updates), so a read-only share or a plain HTTP
server works. Servers that ignore byte-range requests (``python -m http.server``, some CDNs) are detected and
read through :func:`whole_object_ranges`, since fsspec's HTTP ``cat_file`` does not check for ``206``
(fsspec #1140) and zarr's shard-index reads would otherwise get the wrong bytes; a ``.zip`` on such a server
is downloaded once to a temporary file (a zip's members can only be found by seeking).

Every remote request has a connect and a read timeout and a bounded number of tries (README "Sharing
stores": ``PRN_REMOTE_TIMEOUT``, ``PRN_REMOTE_RETRIES``), then raises :class:`StoreError` naming the URL, so
a stalled or vanished server ends a command with an error instead of blocking it for good.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
import weakref
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, TypeVar

import aiohttp
import fsspec
import fsspec.config
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, LocalStore, WrapperStore, ZipStore

from .errors import StoreError

T = TypeVar("T")

TIMEOUT_ENV = "PRN_REMOTE_TIMEOUT"
RETRIES_ENV = "PRN_REMOTE_RETRIES"
DEFAULT_TIMEOUT = 30.0
"""Seconds to wait for a connection, and then for each read from it (not for a whole object)."""
DEFAULT_RETRIES = 2
"""Further tries of a remote request that failed for a reason that may pass (timeout, lost connection, 5xx)."""


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


def require_writable(url: str) -> None:
    """Refuse, before any work, a store URL that cannot be written: HTTP(S) servers are read-only here.
    Raises :class:`StoreError` naming ``url``."""
    inner = url[len("zip::") :] if url.startswith("zip::") else url
    if is_http_url(inner):
        raise StoreError(f"{url}: HTTP stores are read-only; build locally or to s3://… and share that")


@dataclass(frozen=True)
class RemotePolicy:
    """How long a remote request may wait and how often it is tried (README "Sharing stores")."""

    timeout: float = DEFAULT_TIMEOUT  # seconds: to connect, then per read from the socket
    retries: int = DEFAULT_RETRIES  # further tries after the first

    @property
    def tries(self) -> int:
        return self.retries + 1

    def pause(self, attempt: int) -> float:
        """Seconds to wait before try ``attempt + 2``: 0.25, 0.5, 1 … at most 4."""
        return min(0.25 * 2**attempt, 4.0)

    def describe(self) -> str:
        return (f"{self.tries} tries, {self.timeout:g} s timeout; {TIMEOUT_ENV} and {RETRIES_ENV} change these")


def remote_policy() -> RemotePolicy:
    """The policy from ``PRN_REMOTE_TIMEOUT`` (seconds > 0) and ``PRN_REMOTE_RETRIES`` (integer ≥ 0), else
    the defaults. Raises :class:`StoreError` naming a variable with a bad value."""
    values: dict[str, Any] = {}
    for env, key, kind, low in ((TIMEOUT_ENV, "timeout", float, 0.0), (RETRIES_ENV, "retries", int, -1)):
        raw = os.environ.get(env, "").strip()
        if not raw:
            continue
        try:
            v = kind(raw)
        except ValueError:
            v = None
        if v is None or not v > low or v != v:
            want = "a number of seconds > 0" if kind is float else "an integer ≥ 0"
            raise StoreError(f"{env}={raw!r}: expected {want}")
        values[key] = v
    return RemotePolicy(**values)


def _protocols(url: str) -> list[str]:
    """The protocols of ``url``'s fsspec chain (``zip::https://h/x.zip`` → ``["zip", "https"]``)."""
    out = []
    for bit in url.split("::"):
        out.append(bit.split("://", 1)[0] if "://" in bit else bit)
    return out


def remote_options(url: str, policy: RemotePolicy) -> dict[str, dict]:
    """fsspec storage options (keyed by protocol, as fsspec routes them along a chain) that put
    ``policy``'s timeouts on HTTP (aiohttp's ``ClientTimeout``) and S3 (botocore's ``connect_timeout`` /
    ``read_timeout``). Retries are :class:`RemoteStore`'s alone (botocore's are turned off), so a stalled
    server costs at most ``tries`` timeouts. Options the user set in fsspec's configuration win."""
    opts: dict[str, dict] = {}
    for proto in dict.fromkeys(_protocols(url)):
        user = dict(fsspec.config.conf.get(proto, {}))
        if proto in ("http", "https"):
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=policy.timeout, sock_read=policy.timeout)
            opts[proto] = {"client_kwargs": {"timeout": timeout, **user.get("client_kwargs", {})}}
        elif proto in ("s3", "s3a"):
            config = {"connect_timeout": policy.timeout, "read_timeout": policy.timeout,
                      "retries": {"total_max_attempts": 1}}
            opts[proto] = {"config_kwargs": {**config, **user.get("config_kwargs", {})}}
    return opts


_NOT_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError,
                  ValueError, TypeError, KeyError, NotImplementedError)


def _transient(exc: BaseException) -> bool:
    """Whether trying again may help: timeouts, refused or lost connections, HTTP 408/429/5xx."""
    status = getattr(exc, "status", None)  # aiohttp.ClientResponseError
    if isinstance(status, int):
        return status >= 500 or status in (408, 429)
    return not isinstance(exc, (StoreError, *_NOT_TRANSIENT))


def _reason(exc: BaseException, policy: RemotePolicy) -> str:
    timeouts = (TimeoutError, asyncio.TimeoutError, socket.timeout, aiohttp.ServerTimeoutError)
    if isinstance(exc, timeouts) or isinstance(getattr(exc, "reason", None), timeouts):
        return f"no answer within {policy.timeout:g} s"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _failed(url: str, what: str, exc: BaseException, policy: RemotePolicy, tries: int) -> StoreError:
    """The one-line error for a remote request that failed ``tries`` times."""
    if tries > 1:
        return StoreError(f"{url}: {what} failed ({_reason(exc, policy)}) after {policy.describe()}")
    return StoreError(f"{url}: {what} failed ({_reason(exc, policy)})")


async def _with_retries(url: str, what: str, policy: RemotePolicy, call: Callable[[], Awaitable[T]]) -> T:
    """``await call()``, tried again after transient errors up to ``policy.retries`` times; every failure
    becomes a :class:`StoreError` naming ``url``. Missing keys are not errors (zarr's store returns None)."""
    for attempt in range(policy.tries):
        try:
            return await call()
        except StoreError:
            raise
        except Exception as exc:  # aiohttp, botocore and fsspec raise many unrelated types
            if not _transient(exc):
                raise _failed(url, what, exc, policy, 1) from exc
            if attempt + 1 == policy.tries:
                raise _failed(url, what, exc, policy, policy.tries) from exc
            await asyncio.sleep(policy.pause(attempt))
    raise AssertionError("unreachable")


def _sync_with_retries(url: str, what: str, policy: RemotePolicy, call: Callable[[], T]) -> T:
    """:func:`_with_retries` for a blocking ``call``."""
    for attempt in range(policy.tries):
        try:
            return call()
        except StoreError:
            raise
        except Exception as exc:
            if not _transient(exc):
                raise _failed(url, what, exc, policy, 1) from exc
            if attempt + 1 == policy.tries:
                raise _failed(url, what, exc, policy, policy.tries) from exc
            time.sleep(policy.pause(attempt))
    raise AssertionError("unreachable")


class RemoteStore(WrapperStore):
    """A zarr store over the network whose every request is retried under a :class:`RemotePolicy` and whose
    failures are :class:`StoreError` naming the store's URL and the key (the timeouts themselves are set on
    the underlying file system, :func:`remote_options`)."""

    def __init__(self, store: Store, url: str, policy: RemotePolicy) -> None:
        super().__init__(store)
        self.url = url
        self.policy = policy

    def _with_store(self, store: Store) -> "RemoteStore":
        return type(self)(store, self.url, self.policy)

    def _retry(self, what: str, call: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        return _with_retries(self.url, what, self.policy, call)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        return await self._retry(f"reading {key}", lambda: self._store.get(key, prototype, byte_range))

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        what = f"reading {key_ranges[0][0]}" if len(key_ranges) == 1 else f"reading {len(key_ranges)} chunks"
        return await self._retry(what, lambda: self._store.get_partial_values(prototype, key_ranges))

    async def exists(self, key: str) -> bool:
        return await self._retry(f"looking up {key}", lambda: self._store.exists(key))

    async def getsize(self, key: str) -> int:
        return await self._retry(f"sizing {key}", lambda: self._store.getsize(key))

    async def is_empty(self, prefix: str) -> bool:
        return await self._retry(f"listing {prefix or '/'}", lambda: self._store.is_empty(prefix))

    async def set(self, key: str, value: Buffer) -> None:
        await self._retry(f"writing {key}", lambda: self._store.set(key, value))

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        await self._retry(f"writing {key}", lambda: self._store.set_if_not_exists(key, value))

    async def delete(self, key: str) -> None:
        await self._retry(f"deleting {key}", lambda: self._store.delete(key))

    async def delete_dir(self, prefix: str) -> None:
        await self._retry(f"deleting {prefix}", lambda: self._store.delete_dir(prefix))

    async def clear(self) -> None:
        await self._retry("clearing the store", self._store.clear)

    async def _listed(self, what: str, items: AsyncIterator[str]) -> AsyncIterator[str]:
        # A listing is not retried (it may have yielded already); its failure still names the URL.
        try:
            async for item in items:
                yield item
        except StoreError:
            raise
        except Exception as exc:
            raise _failed(self.url, what, exc, self.policy, 1) from exc

    def list(self) -> AsyncIterator[str]:
        return self._listed("listing the store", self._store.list())

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        return self._listed(f"listing {prefix or '/'}", self._store.list_prefix(prefix))

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        return self._listed(f"listing {prefix or '/'}", self._store.list_dir(prefix))


def _answers_ranges(file_url: str, policy: RemotePolicy) -> bool:
    """Whether the server answers a byte-range request for ``file_url`` with ``206 Partial Content``."""
    req = urllib.request.Request(file_url, headers={"Range": "bytes=0-0"})

    def probe() -> bool:
        try:
            with urllib.request.urlopen(req, timeout=policy.timeout) as resp:
                return resp.status == 206
        except urllib.error.HTTPError as exc:
            if _transient(exc):  # 408, 429, 5xx: try again
                raise
            return True  # the server answered: nothing to work around; opening reports the problem

    return _sync_with_retries(file_url, "probing byte ranges", policy, probe)


def http_supports_ranges(url: str, policy: RemotePolicy | None = None) -> bool:
    """Whether the server behind ``url`` (a store root) answers a byte-range request for its ``zarr.json``
    with ``206 Partial Content``. An HTTP error answer counts as "supported" (there is nothing to work
    around then, and opening reports the real problem); no answer within the policy's timeout and tries
    raises :class:`StoreError` naming the URL."""
    return _answers_ranges(url.rstrip("/") + "/zarr.json", policy or remote_policy())


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


def _download_zip(url: str, policy: RemotePolicy) -> Path:
    """Download the zip at ``url`` (a server without byte ranges) to a temporary file, under ``policy``'s
    timeouts and tries. The caller removes the file."""
    fs = fsspec.filesystem(_protocols(url)[0], **remote_options(url, policy).get(_protocols(url)[0], {}))
    fd, name = tempfile.mkstemp(prefix="prn-", suffix=".zip")
    os.close(fd)
    try:
        _sync_with_retries(url, "downloading", policy, lambda: fs.get_file(url, name))
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _downloaded_zip_store(url: str, policy: RemotePolicy) -> ZipStore:
    """A read-only :class:`ZipStore` over a downloaded copy of the zip at ``url``, removed when the store is
    garbage-collected or the process ends."""
    path = _download_zip(url, policy)
    if not zipfile.is_zipfile(path):
        path.unlink()
        raise StoreError(f"{url}: not a zip file")
    store = ZipStore(path, mode="r", read_only=True)
    weakref.finalize(store, path.unlink, missing_ok=True)
    return store


def zarr_store(url: str, mode: str = "r") -> Store:
    """A zarr-python 3 store for ``url`` opened for reading (``mode="r"``) or writing (``"r+"``, ``"w"``).

    Zips open read-only (unpack one to modify it). HTTP(S) URLs open read-only. Remote stores read and
    write under :func:`remote_policy` (:class:`RemoteStore`). Raises :class:`StoreError` naming ``url``
    when a local path for reading does not exist, a file is not a zip, or a server does not answer.
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
    if not read_only:
        require_writable(url)
    if is_zip_url(url) and not read_only:
        raise StoreError(f"{url}: a zipped store opens read-only")
    policy = remote_policy()
    if is_zip_url(url):
        inner = url[len("zip::") :] if url.startswith("zip::") else url
        if is_http_url(inner) and not _answers_ranges(inner, policy):
            return _downloaded_zip_store(inner, policy)  # a zip is read by seeking: fetch it whole, once
        if not url.startswith(("zip::", "zip://")):
            url = "zip::" + url
    try:
        store = FsspecStore.from_url(url, storage_options=remote_options(url, policy), read_only=read_only)
    except Exception as exc:  # fsspec raises ImportError / ValueError / protocol-specific errors
        raise StoreError(f"{url}: cannot open ({type(exc).__name__}: {exc})") from None
    if hasattr(store.fs, "retries"):  # s3fs retries on its own (5 tries, up to 15 s apart): RemoteStore does
        store.fs.retries = 1
    if read_only and is_http_url(url) and not http_supports_ranges(url, policy):
        store = whole_object_ranges(store)
    return RemoteStore(store, url, policy)
