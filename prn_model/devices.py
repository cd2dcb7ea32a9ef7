"""Where training and evaluation run: the device of this process, the ``torchrun`` job it belongs to, and
the loader processes that must not outlive it.

One process uses the CPU or one GPU; several processes started by ``torchrun`` (DDP, §4.2's multi-GPU
training) each take the GPU of their local rank and share one process group (NCCL on CUDA, gloo on the CPU).
"""

from __future__ import annotations

import os
import re
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from prn_data.errors import PrnError


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


__all__ = ["DEVICE_SPEC", "DeviceError", "ExitWithProcess", "configure_device", "dist_env", "process_group", "resolve_device"]
