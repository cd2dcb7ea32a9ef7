"""Share a store as one file: ``prn pack`` / ``prn unpack`` (opening from URLs is :mod:`prn_data.location`).

A packed store is a zip whose members are the store's keys (``zarr.json``, ``gt/panoptic/c/3/0/0/0`` …)
at the zip's root, so zarr opens it in place (``zarr.storage.ZipStore`` or fsspec's ``zip::`` protocol)
without unpacking. Members are STORED, not deflated: the chunks are already compressed by their own
codecs, so deflate gains next to nothing and costs CPU on every read (``benchmarks/share.py`` measures it),
and a STORED member can be read with one ranged request at a known offset.

A zip comes from someone else, so :func:`unpack` checks it whole before writing a byte (README "Sharing
stores"): member names stay inside the target and are unique, declared sizes agree with what the zip holds
(a STORED member's size is its stored size; a deflated one expands at most :data:`MAX_RATIO` times, so a
zip bomb is refused), members do not overlap, and the disk has room for the total. Nothing the user owns is
replaced: only a prn store is ever overwritten, and temporary folders get names no one else uses.
:func:`pack` refuses links that point outside the store and anything that is not a plain file.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

from zarr.abc.store import RangeByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from .errors import StoreError, safe_join
from .location import local_path, zarr_store
from .store import looks_like_prn_store

ProgressFn = Callable[[int, int], None]
"""``progress(done, total)`` called after each file."""

_COMPRESSION = {"stored": zipfile.ZIP_STORED, "deflated": zipfile.ZIP_DEFLATED}

MAX_RATIO = 100
"""Largest uncompressed / compressed size of a deflated member. A store's chunks are compressed already
(ratio ≈ 1) and its JSON metadata deflates ~5–10×; a zip bomb's members expand ~1000×."""

FREE_SPACE_MARGIN = 64 << 20
"""Bytes left free on the disk after an unpack (a full disk breaks everything else on the machine)."""


def list_store_files(root: str | Path) -> list[str]:
    """Relative POSIX paths of every file under the local store directory ``root``, sorted."""
    root = Path(root)
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            out.append(Path(dirpath, f).relative_to(root).as_posix())
    return sorted(out)


def _check_packable(src: Path) -> None:
    """Refuse what would put something other than the store's own files into the zip: a link that leads
    out of the store (zipping follows links: ``/etc/hostname`` would be shared), a link to a folder (not
    walked, so its files would be left out silently) and anything but plain files (a FIFO blocks the read)."""
    top = src.resolve()
    for dirpath, dirs, files in os.walk(src):
        for name in dirs + files:
            p = Path(dirpath, name)
            if p.is_symlink():
                target = p.resolve()
                if target != top and top not in target.parents:
                    raise StoreError(f"{p}: a link to {os.readlink(p)}, outside the store; refusing to pack it "
                                     "(copy the file into the store or remove the link)")
                if target.is_dir():
                    raise StoreError(f"{p}: a link to a folder; pack packs plain files only")
            if name in files:
                try:
                    mode = p.stat().st_mode
                except OSError as exc:
                    raise StoreError(f"{p}: cannot read ({exc.strerror})") from None
                if not stat.S_ISREG(mode):
                    raise StoreError(f"{p}: not a plain file; pack packs plain files only")


def pack(
    store: str | Path,
    out_zip: str | Path,
    *,
    compression: str = "stored",
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Write the local store directory ``store`` (or the store at a URL such as ``s3://…``) into the single
    file ``out_zip``, openable in place.

    The zip is written beside ``out_zip`` under a temporary name of its own and renamed when complete, so
    an interrupted pack never leaves a truncated zip under the final name. ``compression``: ``"stored"``
    (default) or ``"deflated"``. Returns the zip's path.
    """
    if local_path(str(store)) is None:  # s3://, gs://, …: the objects the store lists
        return _pack_url(str(store), Path(out_zip), compression=compression, overwrite=overwrite, progress=progress)
    src = Path(store)
    out = Path(out_zip)
    if not src.is_dir():
        raise StoreError(f"{src}: not a store directory")
    if not (src / "zarr.json").is_file():
        raise StoreError(f"{src}: not a Zarr v3 store (no zarr.json at its root)")
    _check_zip_out(out, compression, overwrite)
    if out.resolve().is_relative_to(src.resolve()):
        raise StoreError(f"{out}: the zip must not be written inside the store it packs")
    _check_packable(src)
    files = list_store_files(src)
    tmp = _partial_beside(out)
    try:
        with zipfile.ZipFile(tmp, "w", compression=_COMPRESSION[compression], allowZip64=True) as zf:
            for k, rel in enumerate(files):
                zf.write(src / rel, arcname=rel)
                if progress:
                    progress(k + 1, len(files))
        os.replace(tmp, out)
    except OSError as exc:  # a full disk, a vanished file
        raise StoreError(f"{out}: cannot write the zip ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _check_zip_out(out: Path, compression: str, overwrite: bool) -> None:
    """Refuse an unknown compression, a folder as ``out``, or an existing ``out`` unless ``overwrite``."""
    if compression not in _COMPRESSION:
        raise StoreError(f"{out}: unknown compression {compression!r} (use stored or deflated)")
    if out.is_dir():
        raise StoreError(f"{out}: is a folder; give the zip file to write")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise StoreError(f"{out}: already exists (pass --overwrite to replace it)")


def _partial_beside(out: Path) -> Path:
    """A new, uniquely named empty file beside ``out`` to write the zip into before it replaces ``out``."""
    try:
        fd, tmp_name = tempfile.mkstemp(dir=out.parent if str(out.parent) else ".", prefix=f".{out.name}.",
                                        suffix=".partial")
    except OSError as exc:
        raise StoreError(f"{out}: cannot write there ({exc.strerror})") from None
    os.close(fd)
    return Path(tmp_name)


PACK_PIECE = 32 << 20
"""Bytes read per request when packing a store at a URL: a shard is copied in pieces, never held whole."""


def _pack_url(url: str, out: Path, *, compression: str, overwrite: bool, progress: ProgressFn | None) -> Path:
    """:func:`pack` for a store at a URL (``s3://…``, or any fsspec URL whose server lists its objects; plain
    HTTP servers do not): every object the store lists, copied in ranged pieces of :data:`PACK_PIECE` bytes
    under the remote timeouts and tries (:mod:`prn_data.location`)."""
    zstore = zarr_store(url, "r")

    async def listed() -> list[str]:
        return sorted([key async for key in zstore.list()])

    keys = sync(listed())
    if "zarr.json" not in keys:
        raise StoreError(f"{url}: not a Zarr v3 store (no zarr.json at its root)")
    _check_zip_out(out, compression, overwrite)
    tmp = _partial_beside(out)
    proto = default_buffer_prototype()
    try:
        with zipfile.ZipFile(tmp, "w", compression=_COMPRESSION[compression], allowZip64=True) as zf:
            for k, key in enumerate(keys):
                size = sync(zstore.getsize(key))
                info = zipfile.ZipInfo(key, date_time=time.localtime()[:6])
                info.compress_type, info.file_size = _COMPRESSION[compression], size
                with zf.open(info, "w", force_zip64=size >= zipfile.ZIP64_LIMIT) as dst:
                    for start in range(0, size, PACK_PIECE):
                        piece = sync(zstore.get(key, proto, RangeByteRequest(start, min(size, start + PACK_PIECE))))
                        if piece is None:
                            raise StoreError(f"{url}: {key} vanished while packing")
                        dst.write(piece.to_bytes())
                if progress:
                    progress(k + 1, len(keys))
        os.replace(tmp, out)
    except OSError as exc:  # a full disk
        raise StoreError(f"{out}: cannot write the zip ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def check_members(zp: Path, zf: zipfile.ZipFile, free_bytes: int | None = None) -> list[zipfile.ZipInfo]:
    """The file members of a packed store, checked before anything is extracted; raises
    :class:`StoreError` naming the zip and the member when a name repeats, a declared size disagrees with
    the stored bytes, a deflated member expands more than :data:`MAX_RATIO` times, members overlap, or the
    total needs more than ``free_bytes`` (the disk's free space less :data:`FREE_SPACE_MARGIN`)."""
    members = [m for m in zf.infolist() if not m.is_dir()]
    names: dict[str, str] = {}
    for m in members:
        key = posixpath.normpath(m.filename.replace("\\", "/"))
        if key in names:
            also = "" if names[key] == m.filename else f" (as {names[key]!r})"
            raise StoreError(f"{zp}: member {m.filename!r} appears twice{also}; a damaged or hand-made zip, "
                             "not one prn pack wrote")
        names[key] = m.filename
    if "zarr.json" not in names:
        raise StoreError(f"{zp}: not a packed Zarr v3 store (no zarr.json at the zip's root)")
    zip_size = zp.stat().st_size
    for m in members:
        if m.compress_type == zipfile.ZIP_STORED and m.file_size != m.compress_size:
            raise StoreError(f"{zp}: member {m.filename!r} declares {m.file_size} bytes but stores "
                             f"{m.compress_size}; a damaged zip")
        if m.compress_size > zip_size or m.header_offset + m.compress_size > zip_size:
            raise StoreError(f"{zp}: member {m.filename!r} declares {m.compress_size} bytes beyond the zip's "
                             f"{zip_size}; a truncated or damaged zip")
        if m.compress_type != zipfile.ZIP_STORED and m.file_size > MAX_RATIO * max(m.compress_size, 1024):
            raise StoreError(f"{zp}: member {m.filename!r} would expand {m.compress_size} → {m.file_size} bytes "
                             f"(over {MAX_RATIO}×); refusing a zip bomb")
    # Members sharing bytes (the overlapping-file zip bomb) or a local header: each starts after the last ends.
    spans = sorted((m.header_offset, m.header_offset + 30 + len(m.filename.encode()) + m.compress_size, m.filename)
                   for m in members)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise StoreError(f"{zp}: members {a!r} and {b!r} overlap; a damaged or hand-made zip")
    total = sum(m.file_size for m in members)
    if free_bytes is not None and total > free_bytes:
        raise StoreError(f"{zp}: unpacking needs {total / 1e6:.1f} MB, but the disk has only "
                         f"{max(free_bytes, 0) / 1e6:.1f} MB to spare")
    return members


def _free_bytes(folder: Path) -> int | None:
    """Bytes an unpack into ``folder`` (or its nearest existing parent) may use; None when unknown."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free - FREE_SPACE_MARGIN
    except OSError:
        return None


def _check_target(out: Path, zp: Path, overwrite: bool) -> None:
    """Refuse an OUT that unpacking would destroy without leave: anything but a prn store, a link, the
    working folder or a folder above it, the folder that holds the zip."""
    if out.is_symlink():
        raise StoreError(f"{out}: is a link; give the folder to create itself")
    if not out.exists():
        return
    if not overwrite:
        raise StoreError(f"{out}: already exists (pass --overwrite to replace a prn store there)")
    if not out.is_dir():
        raise StoreError(f"{out}: is a file, not a store folder; refusing to replace it")
    cwd = Path.cwd().resolve()
    real = out.resolve()
    if real == cwd or real in cwd.parents:
        raise StoreError(f"{out}: is the working folder (or holds it); refusing to replace it")
    if real in zp.resolve().parents:
        raise StoreError(f"{out}: holds the zip being unpacked; refusing to replace it")
    if any(out.iterdir()) and not looks_like_prn_store(out, creating_too=True):
        raise StoreError(f"{out}: refusing to overwrite a folder that is not a prn store")


def unpack(
    zip_path: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Extract a packed store into the directory ``out_dir`` (the reverse of :func:`pack`).

    The zip is checked whole first (:func:`check_members`; members that would land outside ``out_dir``
    are refused too, naming the member). Extraction goes to a temporary sibling folder of a fresh name,
    renamed at the end; with ``overwrite`` an existing prn store at ``out_dir`` (and nothing else) is
    replaced once the new one is complete. Returns ``out_dir``.
    """
    zp = Path(zip_path)
    out = Path(os.path.abspath(out_dir))  # '.' and 'a/..' get a name; links are not followed
    if not zp.is_file():
        raise StoreError(f"{zp}: no such zip file")
    if not zipfile.is_zipfile(zp):
        raise StoreError(f"{zp}: not a zip file")
    _check_target(out, zp, overwrite)
    try:
        with zipfile.ZipFile(zp) as zf:
            members = check_members(zp, zf, _free_bytes(out.parent))
            for m in members:
                safe_join(out, m.filename)  # every name is checked before the first byte is written
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"{out}: cannot create its folder ({exc.strerror})") from None
            tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
            try:
                for k, m in enumerate(members):
                    target = safe_join(tmp, m.filename)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(m) as fsrc, open(target, "xb") as fdst:
                        shutil.copyfileobj(fsrc, fdst, 1 << 20)
                    if progress:
                        progress(k + 1, len(members))
                _replace_dir(tmp, out)
            except OSError as exc:  # a full disk, a read-only folder
                raise StoreError(f"{out}: cannot write the unpacked store ({exc.strerror or exc})") from None
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp)
    except zipfile.BadZipFile as exc:
        raise StoreError(f"{zp}: damaged zip ({exc})") from None
    return out


def _replace_dir(new: Path, out: Path) -> None:
    """Put the folder ``new`` at ``out``; an old ``out`` (already checked to be a prn store) is moved
    aside first and deleted only once ``new`` is in place."""
    if not out.exists():
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    os.replace(out, old / "store")
    try:
        os.replace(new, out)
    except OSError:
        os.replace(old / "store", out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["MAX_RATIO", "check_members", "list_store_files", "pack", "unpack"]
