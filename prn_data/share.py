"""Share a store as one file: ``prn pack`` / ``prn unpack``, and opening a store's Zarr root from a URL.

A packed store is a zip whose members are the store's keys (``zarr.json``, ``gt/panoptic/c/3/0/0/0`` …)
at the zip's root, so zarr opens it in place (``zarr.storage.ZipStore`` or fsspec's ``zip::`` protocol)
without unpacking. Members are STORED, not deflated: the chunks are already compressed by their own
codecs, so deflate gains next to nothing and costs CPU on every read (``benchmarks/share.py`` measures it),
and a STORED member can be read with one ranged request at a known offset.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from .errors import StoreError, safe_join

ProgressFn = Callable[[int, int], None]
"""``progress(done, total)`` called after each file."""

_COMPRESSION = {"stored": zipfile.ZIP_STORED, "deflated": zipfile.ZIP_DEFLATED}


def is_zip_url(url: str) -> bool:
    """True for a store URL that names a zip file (``x.zip``, ``file:///x.zip``, ``zip::…``, ``…x.zip``)."""
    return url.startswith("zip::") or url.rstrip("/").lower().endswith(".zip")


def _local_path(url: str) -> Path | None:
    """The local filesystem path of ``url``, or ``None`` when it names a remote resource."""
    if url.startswith("file://"):
        return Path(url[len("file://") :])
    if "://" in url or "::" in url:
        return None
    return Path(url)


def zarr_store(url: str, read_only: bool = True) -> Any:
    """A zarr-python 3 store for ``url``: a local directory, a local ``.zip`` (``ZipStore``), any fsspec URL
    (``http(s)://``, ``s3://``, …) or a remote zip (``https://host/x.zip`` → ``zip::https://host/x.zip``).

    Read-only stores never write (no lock files, no metadata updates), so a read-only share or a plain
    HTTP server works. Raises :class:`StoreError` when a local path does not exist.
    """
    from zarr.storage import FsspecStore, LocalStore, ZipStore

    local = _local_path(url)
    if local is not None:
        if not local.exists():
            raise StoreError(f"{url}: no such store")
        if local.is_file():
            if not zipfile.is_zipfile(local):
                raise StoreError(f"{url}: a file that is not a zip; a store is a directory or a .zip")
            if not read_only:
                raise StoreError(f"{url}: a zipped store opens read-only (unpack it to modify it)")
            return ZipStore(local, mode="r")
        return LocalStore(local, read_only=read_only)
    if is_zip_url(url) and not url.startswith("zip::"):
        url = "zip::" + url
    try:
        # Remote zips (fsspec's ZipFileSystem) implement no async API; zarr wraps them itself.
        return FsspecStore.from_url(url, read_only=read_only)
    except (ImportError, ValueError) as exc:
        raise StoreError(f"{url}: cannot open ({exc})") from None


def is_http_url(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def http_supports_ranges(url: str, timeout: float = 10.0) -> bool:
    """Whether the server behind ``url`` (a store root) answers a byte-range request for its ``zarr.json``
    with ``206 Partial Content``. ``python -m http.server`` and some CDNs ignore ``Range`` and send the
    whole file with ``200``; fsspec's HTTP ``cat_file`` does not check the status (fsspec #1140), so zarr's
    shard-index and chunk reads would get the wrong bytes. Errors count as "supported" (nothing to fix)."""
    import urllib.request

    req = urllib.request.Request(url.rstrip("/") + "/zarr.json", headers={"Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status == 206
    except OSError:
        return True


def whole_object_ranges(store: Any, max_cache_bytes: int = 256 << 20) -> Any:
    """Wrap a read-only zarr store whose server ignores byte ranges: every ranged read fetches the whole
    object once (kept in a small LRU cache of at most ``max_cache_bytes``) and slices it locally, so
    reading the samples of one shard in turn downloads the shard once."""
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
    from zarr.storage import WrapperStore

    class WholeObjectRangeStore(WrapperStore):
        def __init__(self, inner: Any) -> None:
            super().__init__(inner)
            self._cache: OrderedDict[str, bytes] = OrderedDict()

        async def _whole(self, key: str, prototype: Any) -> bytes | None:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            buf = await self._store.get(key, prototype)
            if buf is None:
                return None
            data = buf.to_bytes()
            self._cache[key] = data
            while sum(len(v) for v in self._cache.values()) > max_cache_bytes and len(self._cache) > 1:
                self._cache.popitem(last=False)
            return data

        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
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

        async def get_partial_values(self, prototype: Any, key_ranges: Any) -> list:
            return [await self.get(k, prototype, r) for k, r in key_ranges]

    return WholeObjectRangeStore(store)


def open_for_reading(url: str | Path) -> Any:
    """:func:`prn_data.store.open_store` in read mode, plus one fix for HTTP servers that ignore byte-range
    requests (``python -m http.server``): the opened store's zarr group is re-pointed at
    :func:`whole_object_ranges` around the same fsspec store. Every issue-5 command reads through this."""
    import zarr

    from .store import open_store

    url = str(url)
    st = open_store(url, mode="r")
    if is_http_url(url) and not http_supports_ranges(url):
        wrapped = whole_object_ranges(st.zstore)
        st.zstore = wrapped
        st.group = zarr.open_group(wrapped, mode="r", zarr_format=3, use_consolidated=None)
        st._arrays = {}
    return st


def list_store_files(root: str | Path) -> list[str]:
    """Relative POSIX paths of every file under the local store directory ``root``, sorted."""
    root = Path(root)
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            out.append(Path(dirpath, f).relative_to(root).as_posix())
    return sorted(out)


def pack(
    store: str | Path,
    out_zip: str | Path,
    compression: str = "stored",
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Write the local store directory ``store`` into the single file ``out_zip``, openable in place.

    The zip is written beside ``out_zip`` under a temporary name and renamed when complete, so an
    interrupted pack never leaves a truncated zip under the final name. ``compression``: ``"stored"``
    (default) or ``"deflated"``. Returns the zip's path.
    """
    src = Path(store)
    out = Path(out_zip)
    if not src.is_dir():
        raise StoreError(f"{src}: not a store directory")
    if not (src / "zarr.json").is_file():
        raise StoreError(f"{src}: not a Zarr v3 store (no zarr.json at its root)")
    if compression not in _COMPRESSION:
        raise StoreError(f"{out}: unknown compression {compression!r} (use stored or deflated)")
    if out.exists() and not overwrite:
        raise StoreError(f"{out}: already exists (pass --overwrite to replace it)")
    if out.resolve().is_relative_to(src.resolve()):
        raise StoreError(f"{out}: the zip must not be written inside the store it packs")
    files = list_store_files(src)
    tmp = out.with_name(out.name + ".partial")
    try:
        with zipfile.ZipFile(tmp, "w", compression=_COMPRESSION[compression], allowZip64=True) as zf:
            for k, rel in enumerate(files):
                zf.write(src / rel, arcname=rel)
                if progress:
                    progress(k + 1, len(files))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def unpack(
    zip_path: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Extract a packed store into the directory ``out_dir`` (the reverse of :func:`pack`).

    Members that would land outside ``out_dir`` (``../``, absolute names) are refused, naming the member.
    Extraction goes to a temporary sibling directory renamed at the end. Returns ``out_dir``.
    """
    zp = Path(zip_path)
    out = Path(out_dir)
    if not zp.is_file():
        raise StoreError(f"{zp}: no such zip file")
    if not zipfile.is_zipfile(zp):
        raise StoreError(f"{zp}: not a zip file")
    if out.exists():
        if not overwrite:
            raise StoreError(f"{out}: already exists (pass --overwrite to replace it)")
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        with zipfile.ZipFile(zp) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if "zarr.json" not in {m.filename for m in members}:
                raise StoreError(f"{zp}: not a packed Zarr v3 store (no zarr.json at the zip's root)")
            for k, m in enumerate(members):
                target = safe_join(tmp, m.filename)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as fsrc, open(target, "wb") as fdst:
                    shutil.copyfileobj(fsrc, fdst, 1 << 20)
                if progress:
                    progress(k + 1, len(members))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except zipfile.BadZipFile as exc:
        raise StoreError(f"{zp}: damaged zip ({exc})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


__all__ = ["is_zip_url", "is_http_url", "http_supports_ranges", "whole_object_ranges", "open_for_reading", "zarr_store", "list_store_files", "pack", "unpack"]
