"""One ``prn build`` per store at a time.

Two builds writing the same store would write the same shards concurrently, which zarr-python 3 turns into
silently lost data (zarr-python #3514). The build therefore holds an advisory ``flock`` on ``<store>.lock``, a file
beside a local store that names the holder. The kernel drops the lock when the holder's process ends, however
it ends, so a build killed by ``SIGKILL`` or an OOM never leaves a stale lock behind: the next build takes it.
Remote stores (``s3://``, ``http://``), systems without ``fcntl`` and file systems that refuse ``flock`` (a
warning says so) are not locked. A ``<store>.lock`` that is not a prn lock (someone's own file) is refused, never
overwritten; a lock that cannot be created or written (a read-only folder, a full disk) is a
:class:`~prn_data.errors.StoreError` naming it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from .errors import StoreError
from .location import local_path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def lock_path(url: str) -> Path | None:
    """``<store>.lock`` beside a local store, or None for a remote one."""
    path = local_path(str(url))
    if path is None:
        return None
    path = path.resolve()
    return path.with_name(path.name + ".lock")


def _ours(fd: int) -> bool:
    """Whether the open file ``fd`` is empty or a lock a prn build wrote (its holder's JSON), not a file
    of the user's that happens to be named ``<store>.lock``."""
    data = os.pread(fd, 4096, 0)
    if not data:
        return True
    try:
        return {"pid", "host"} <= set(json.loads(data))
    except (ValueError, TypeError):
        return False


def _holder(lock: Path) -> str:
    try:
        h = json.loads(lock.read_text())
        return f"pid {h['pid']} on {h['host']}, since {h['since']}: {h['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


@contextmanager
def build_lock(url: str) -> Iterator[Path | None]:
    """Hold the build lock of the store at ``url`` for the ``with`` block; yields the lock file's path (None
    where there is nothing to lock). Raises :class:`StoreError` naming the store and the holder when another
    build holds it."""
    lock = lock_path(url)
    if lock is None or fcntl is None:
        yield None
        return
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only folder, a file where the folder should be
            raise StoreError(f"{url}: cannot create the build lock {lock} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"{url}: another prn build is writing this store ({_holder(lock)}); wait for it to finish "
                f"(the lock in {lock} is released when that process ends, even if it is killed)"
            ) from None
        except OSError as exc:  # a file system without flock (some network mounts): build unlocked
            os.close(fd)
            warnings.warn(f"{lock}: cannot lock ({exc.strerror}); building without protection against a second build")
            yield None
            return
        # The holder before us may have unlinked the file between our open and our flock: then we hold a
        # lock on a file nobody else will see. Lock the file that is at the path now.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    if not _ours(fd):
        os.close(fd)
        raise StoreError(f"{url}: {lock} exists and is not a prn build lock; refusing to overwrite it "
                         "(move it away, or build to another --out)")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:300]}
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
    except OSError as exc:  # a full disk: the build could not write a shard either
        with suppress(OSError):
            os.unlink(lock)
        os.close(fd)
        raise StoreError(f"{url}: cannot write the build lock {lock} ({exc.strerror or exc})") from None
    try:
        yield lock
    finally:
        try:
            os.unlink(lock)  # while still holding it, so a waiting build cannot lock the old file
        except FileNotFoundError:
            pass
        os.close(fd)


__all__ = ["build_lock", "lock_path"]
