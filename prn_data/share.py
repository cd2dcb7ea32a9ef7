"""Share a store as one file: ``prn pack`` / ``prn unpack`` (opening from URLs is :mod:`prn_data.location`).

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
from pathlib import Path
from typing import Callable

from .errors import StoreError, safe_join

ProgressFn = Callable[[int, int], None]
"""``progress(done, total)`` called after each file."""

_COMPRESSION = {"stored": zipfile.ZIP_STORED, "deflated": zipfile.ZIP_DEFLATED}


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
    *,
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
    *,
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


__all__ = ["list_store_files", "pack", "unpack"]
