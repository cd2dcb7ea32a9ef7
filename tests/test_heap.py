"""prn_data.heap: after retain_freed_blocks, a freed 20 MiB block is reused without faulting its pages in again
(the loader's per-read cost, README "Parallelism"); PRN_MALLOC=default leaves glibc's behaviour alone. Each case
runs in its own process: the thresholds are process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from prn_data import heap

pytestmark = pytest.mark.skipif(not heap.is_glibc(), reason="the heap thresholds are glibc's")

BLOCK = 20 << 20  # bytes malloc'ed, touched and freed per round by SCRIPT
PAGES = BLOCK // 4096

# malloc, touch every page, free, three times; the minor page faults of each round
SCRIPT = """
import ctypes, ctypes.util, json, resource, sys
from prn_data.heap import retain_freed_blocks
state = retain_freed_blocks()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
n, faults = int(sys.argv[1]), []
for _ in range(3):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"state": state, "again": retain_freed_blocks(), "faults": faults}))
"""


def _run(**env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != heap.MALLOC_ENV}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(BLOCK)], env=environ | env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def test_a_freed_block_is_reused_without_new_pages():
    r = _run()
    assert r["state"] is True and r["again"] is True
    assert r["faults"][0] > PAGES // 2  # the first use faults its pages in
    assert max(r["faults"][1:]) < PAGES // 10  # then the freed block is reused


def test_prn_malloc_default_leaves_glibc_alone():
    r = _run(PRN_MALLOC="default")
    assert r["state"] is False
    # glibc's own behaviour: the second block of the same size is a fresh mapping again
    assert r["faults"][1] > PAGES // 2


def test_dask_nanny_trim_variable_is_overridden():
    # Dask's nanny leaves MALLOC_TRIM_THRESHOLD_=65536 in the environment of the process that started a
    # process cluster; its loader workers would inherit it and trim every freed block
    r = _run(MALLOC_TRIM_THRESHOLD_="65536")
    assert r["state"] is True
    assert max(r["faults"][1:]) < PAGES // 10
