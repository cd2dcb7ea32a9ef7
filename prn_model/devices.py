"""Where training and evaluation run: the device of this process, the ``torchrun`` job it belongs to, and
the loader processes that must not outlive it.

One process uses the CPU or one GPU; several processes started by ``torchrun`` (DDP, §4.2's multi-GPU
training) each take the GPU of their local rank and share one process group (NCCL on CUDA, gloo on the CPU).
"""

from __future__ import annotations

import functools
import os
import re
import select
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from prn_data.errors import PrnError
from prn_data.heap import retain_freed_blocks


T = TypeVar("T")


class DeviceError(PrnError):
    """The requested device is unknown or not available on this machine."""


#: The device specs prn takes (``--device``, a config's ``device``).
DEVICE_SPEC = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """The device of ``spec``: ``"auto"`` (the CUDA device of this rank when CUDA is present, else the
    CPU), ``"cpu"``, ``"cuda"`` (this rank's GPU) or ``"cuda:N"``. Any other spec, or a GPU this machine
    lacks, raises :class:`DeviceError` naming it."""
    if not isinstance(spec, str) or not DEVICE_SPEC.fullmatch(spec):
        raise DeviceError(f"unknown device {spec!r}: expected auto, cpu, cuda or cuda:N")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec!r} requested but CUDA is not available")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device {spec!r} requested but this machine has {count} CUDA device(s)")
    return device


class ExitWithProcess:
    """A DataLoader ``worker_init_fn`` (picklable): the worker exits as soon as process ``pid`` (the one that
    made the loader) is gone, however it died (README "Training").

    Needed because a ``forkserver`` worker's parent is the fork server, not the trainer, and a killed
    trainer leaves both running: each worker holds the server's liveness pipe open, so the server never
    sees its client go, and torch's own check (the worker's parent) sees nothing change.
    """

    def __init__(self, pid: int):
        self.pid = int(pid)

    def __call__(self, worker_id: int) -> None:
        threading.Thread(target=_exit_when_gone, args=(self.pid,), name="prn-exit-with-trainer", daemon=True).start()


class LoaderWorkerInit(ExitWithProcess):
    """The ``worker_init_fn`` of :func:`prn_model.data.make_loader` (picklable): the worker runs torch at
    ``threads`` intra-op threads (README "Parallelism": the loader's parallelism is its worker processes,
    one thread each by default, not threads inside them), keeps its freed large blocks for the next read
    (:func:`prn_data.heap.retain_freed_blocks`) and exits with process ``pid`` (:class:`ExitWithProcess`)."""

    def __init__(self, pid: int, threads: int = 1):
        super().__init__(pid)
        self.threads = int(threads)

    def __call__(self, worker_id: int) -> None:
        torch.set_num_threads(self.threads)
        retain_freed_blocks()
        super().__call__(worker_id)


class ThreadsError(PrnError):
    """A thread count (``--threads``, ``PRN_THREADS``) that is not a whole number ≥ 1."""


#: The environment variable giving the intra-op thread count of ``prn evaluate`` and ``prn refine`` when
#: ``--threads`` is not given (README "Parallelism").
THREADS_ENV = "PRN_THREADS"
#: The default intra-op thread count: one, so that post-processing never slows down when other work shares
#: the cores (two threads on a loaded 2-core machine took PPGBF + merge from ~30 ms to 155–1485 ms;
#: ``benchmarks/postprocess.py``). Parallelism comes from work across images (scoring, preparation and
#: loader workers), each at a fixed intra-op count.
DEFAULT_THREADS = 1


def resolve_threads(threads: int | None = None) -> int:
    """The intra-op thread count to use: ``threads`` when given, else ``$PRN_THREADS``, else
    :data:`DEFAULT_THREADS`. A value that is not a whole number ≥ 1 is a :class:`ThreadsError` naming it."""
    source = "--threads"
    if threads is None:
        raw = os.environ.get(THREADS_ENV, "").strip()
        if not raw:
            return DEFAULT_THREADS
        source = THREADS_ENV
        try:
            threads = int(raw)
        except ValueError:
            raise ThreadsError(f"{THREADS_ENV}={raw!r}: expected a whole number of threads ≥ 1") from None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ThreadsError(f"{source}={threads!r}: expected a whole number of threads ≥ 1")
    return threads


@contextmanager
def intra_op_threads(threads: int | None = None) -> Iterator[int]:
    """Run the block with torch at :func:`resolve_threads` ``(threads)`` intra-op threads, then restore the
    previous count. Yields the count in force."""
    n = resolve_threads(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def with_threads(fn: Callable[..., T]) -> Callable[..., T]:
    """Give ``fn`` a keyword argument ``threads`` (``None``: ``$PRN_THREADS``, else :data:`DEFAULT_THREADS`):
    the call runs under :func:`intra_op_threads` (``prn evaluate``, ``prn refine``; README "Parallelism")."""

    @functools.wraps(fn)
    def wrapper(*args: Any, threads: int | None = None, **kwargs: Any) -> T:
        with intra_op_threads(threads):
            return fn(*args, **kwargs)

    return wrapper


def _exit_when_gone(pid: int, poll_s: float = 1.0) -> None:
    """Block until process ``pid`` ends, then end this process at once (``os._exit``: nothing left to
    flush in a loader worker). A pidfd wakes at the exit itself; without one (not Linux), poll the pid."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])  # a pidfd turns readable when its process exits (even before it is reaped)
        os._exit(1)
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass
        time.sleep(poll_s)


def dist_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


@contextmanager
def process_group(world: int, device: torch.device) -> Iterator[None]:
    """The job's process group while the block runs, when ``world`` > 1: made here (and destroyed after)
    unless the caller already made one."""
    own = world > 1 and not dist.is_initialized()
    if own:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        if own:
            dist.destroy_process_group()


def configure_device(device: torch.device, *, deterministic: bool) -> None:
    """Make ``device`` this process's current device and choose its kernels: on CUDA, cuDNN autotuning
    (unless ``deterministic``) and TF32 matrix products; ``deterministic`` asks torch for deterministic
    algorithms (warning where it has none)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


__all__ = ["DEFAULT_THREADS", "DEVICE_SPEC", "DeviceError", "ExitWithProcess", "LoaderWorkerInit", "THREADS_ENV",
           "ThreadsError", "configure_device", "dist_env", "intra_op_threads", "process_group", "resolve_device",
           "resolve_threads", "with_threads"]
