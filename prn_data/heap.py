"""How this process's C heap treats large blocks: kept for reuse rather than handed back to the kernel.

Why: a training read decompresses and decodes arrays of several MB (a COCO sample's 133-class base
probabilities at 1/4 are ~14.5 MB of float32). glibc serves a block above its mmap threshold (128 KiB at
start) with a fresh ``mmap`` and unmaps it on ``free``, so every read faults in and zeroes those pages
again (~0.8 ms per MB on the virtual machines here). glibc raises the threshold by itself only after it
has freed such a block once, which a loader process may never do in the right order: the same DataLoader
worker then spends ~30 ms of CPU per COCO sample where a warmed-up process spends ~21
(``benchmarks/loader.py``). :func:`retain_freed_blocks` fixes both thresholds up front.

The cost: a process keeps up to ``trim_mb`` of freed heap mapped (not returned to the kernel) between
reads. ``PRN_MALLOC=default`` leaves the C library's settings alone (README "Parallelism"). glibc's own
``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_`` variables do not: Dask's nanny writes
``MALLOC_TRIM_THRESHOLD_=65536`` into the environment of any process that starts a process cluster (a
``prn build`` with worker processes, then the demo's training in the same process), and loader workers
would inherit it — trimming every freed block is the opposite of what a reader needs. Other C libraries
(macOS, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: glibc's ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: The environment variable that switches the tuning off (``default``).
MALLOC_ENV = "PRN_MALLOC"

_state: bool | None = None


def retain_freed_blocks(mmap_mb: int = 32, trim_mb: int = 128) -> bool:
    """Serve blocks up to ``mmap_mb`` MiB from the heap and keep up to ``trim_mb`` MiB of freed heap for
    reuse, in this process (the first call decides; later ones return its answer). ``mmap_mb`` is at most 32
    (glibc's ceiling on 64-bit). Returns True when the thresholds are set; False on another C library or
    when ``$PRN_MALLOC`` is ``default``."""
    global _state
    if _state is None:
        _state = _set(mmap_mb, trim_mb)
    return _state


def is_glibc() -> bool:
    """Whether this process runs on glibc (the C library whose thresholds :func:`retain_freed_blocks` sets)."""
    return _glibc() is not None


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt accepts and ignores these parameters
        libc.mallopt
    except (OSError, AttributeError):
        return None
    return libc


def _set(mmap_mb: int, trim_mb: int) -> bool:
    if os.environ.get(MALLOC_ENV, "").strip().lower() == "default":
        return False
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, min(int(mmap_mb), 32) << 20) == 1
    return bool(ok and mallopt(_M_TRIM_THRESHOLD, int(trim_mb) << 20) == 1)
