"""Where training and evaluation run: the device of this process, and the ``torchrun`` job it belongs to.

One process uses the CPU or one GPU; several processes started by ``torchrun`` (DDP, §4.2's multi-GPU
training) each take the GPU of their local rank and share one process group (NCCL on CUDA, gloo on the CPU).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from prn_data.errors import PrnError


class DeviceError(PrnError):
    """The requested device is not available on this machine."""


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → the CUDA device of this rank when CUDA is present, else the CPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {spec!r} requested but CUDA is not available")
    return device


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


__all__ = ["DeviceError", "configure_device", "dist_env", "process_group", "resolve_device"]
