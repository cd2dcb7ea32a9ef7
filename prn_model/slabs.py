"""Batches in reusable memory blocks ("slabs"): how the loader makes a batch without fresh pages, and how a
DataLoader worker hands it to the trainer (README "Parallelism").

Why: first-touching fresh memory costs ~0.8 ms per MB here (a page fault and a zeroed page per 4 KiB, on a
virtual machine; ``benchmarks/loader.py``), more than reading and decoding the sample. torch's default
collate gives every batch new shared memory (a COCO batch of 4 is ~95 MB of stored codes, ~234 MB decoded),
so a worker spent more time faulting pages than reading. A process here keeps a few slabs — one block per
batch, every tensor of the batch a view into it — and writes the next batch into one nobody uses any more.

When a slab is free: no tensor of this process refers to it (its storage's use count is back to the pool's
own references) and, for a slab a worker handed to the trainer, the trainer has said so: byte 0 of a
worker's slab is its flag, set to 1 by the worker when it ships the slab and back to 0 by the trainer's
:class:`Receiver` once no tensor of the trainer refers to it either. A worker writes only into a free slab,
so a batch the trainer still holds (even a view of one) is never overwritten. A batch's tensors must not be
sent on to a third process (copy them first): the trainer cannot see that process's references.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: Bytes before the first tensor of a slab (byte 0: the flag) and the alignment of every tensor in it.
HEADER = 64
ALIGN = 64
#: Slabs a process keeps for reuse (a worker has ``prefetch_factor`` batches queued and the trainer holds one
#: or two; more are made when all are busy, and the oldest then leave the pool).
POOL_SIZE = 6

Layout = list[tuple[str, torch.dtype, tuple[int, ...]]]


def _use_count(base: torch.Tensor) -> int:
    """References to ``base``'s storage (tensors, views, wrappers), through torch's own counter."""
    return int(torch._C._storage_Use_Count(base.untyped_storage()._cdata))


def _offsets(layout: Layout) -> tuple[list[int], int]:
    """Byte offset of each field of ``layout`` in a slab, and the slab's size."""
    offs, pos = [], HEADER
    for _, dtype, shape in layout:
        offs.append(pos)
        nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        pos += -(-nbytes // ALIGN) * ALIGN
    return offs, pos


def _views(base: torch.Tensor, layout: Layout, offsets: list[int]) -> dict[str, torch.Tensor]:
    storage = base.untyped_storage()
    out = {}
    for (key, dtype, shape), off in zip(layout, offsets):
        size = torch.empty((), dtype=dtype).element_size()
        out[key] = torch.empty(0, dtype=dtype).set_(storage, off // size, shape)
    return out


@dataclass
class SlabBatch:
    """A batch as a worker ships it: one shared ``uint8`` slab, where each tensor lies in it, and the batch's
    other (picklable) entries. One file descriptor per batch crosses to the trainer, not one per tensor."""

    base: torch.Tensor
    layout: Layout
    offsets: list[int]
    extra: dict[str, Any] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The batch's tensors, views into the slab."""
        return _views(self.base, self.layout, self.offsets)

    def release(self) -> None:
        """Tell the worker its slab may be written again (the caller holds no view of it any more)."""
        self.base.numpy()[0] = 0

    def pin_memory(self, device: Any = None) -> dict[str, Any]:
        """The batch copied into page-locked memory, the slab released at once (the DataLoader's
        ``pin_memory`` thread calls this; torch's host allocator reuses its pinned blocks)."""
        out = {k: t.pin_memory() for k, t in self.tensors().items()}
        self.release()
        return out | self.extra


class SlabPool:
    """This process's slabs (:func:`pool`). :meth:`take` gives the tensors of a batch of ``layout`` in a free
    slab, and, in a DataLoader worker (``ship``), the :class:`SlabBatch` to return instead of the tensors."""

    def __init__(self, size: int = POOL_SIZE):
        self.size = size
        self.slabs: list[torch.Tensor] = []
        self.made = 0  # slabs allocated (fresh memory) since the pool was made: the reuse the tests check
        self.reused = 0

    def _free(self, base: torch.Tensor, need: int) -> bool:
        # 2 = this pool's tensor + the temporary storage wrapper of _use_count
        return need <= base.numel() <= 2 * need and base.numpy()[0] == 0 and _use_count(base) <= 2

    def take(self, layout: Layout, ship: bool) -> tuple[dict[str, torch.Tensor], SlabBatch | None]:
        offsets, need = _offsets(layout)
        base = next((b for b in self.slabs if self._free(b, need)), None)
        if base is None:
            base = _new(need, shared=ship)
            self.made += 1
            if len(self.slabs) >= self.size:  # the oldest leave: busy ones live on with their holders
                self.slabs.pop(0)
        else:
            self.reused += 1
            self.slabs = [b for b in self.slabs if b is not base]
        self.slabs.append(base)
        base.numpy()[0] = 1 if ship else 0
        views = _views(base, layout, offsets)
        return views, (SlabBatch(base, layout, offsets) if ship else None)


def _new(nbytes: int, shared: bool) -> torch.Tensor:
    """A fresh slab; in a worker allocated directly in shared memory (``share_memory_()`` would copy)."""
    if shared:
        storage = torch.UntypedStorage._new_shared(nbytes)
        return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (nbytes,))
    return torch.empty(nbytes, dtype=torch.uint8)


_pools: dict[int, SlabPool] = {}


def pool() -> SlabPool:
    """This process's :class:`SlabPool` (a forked child makes its own: the parent's slabs are the parent's)."""
    pid = os.getpid()
    if pid not in _pools:
        _pools.clear()
        _pools[pid] = SlabPool()
    return _pools[pid]


class Receiver:
    """The trainer's side of :class:`SlabBatch` (one per loader iteration): :meth:`open` turns a shipped batch
    into its tensors and remembers the slab; :meth:`poll` releases every slab the trainer no longer refers to.

    It keeps the slabs' mappings it has seen (up to ``keep``), so a slab that comes back is the same mapping:
    torch's receiving side finds it in its cache of shared storages, and the trainer's reads of it do not
    fault its pages in again."""

    def __init__(self, keep: int):
        self.keep = keep
        self.mapped: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.outstanding: dict[int, tuple[SlabBatch, int]] = {}

    def open(self, sb: SlabBatch) -> dict[str, Any]:
        key = sb.base.untyped_storage().data_ptr()
        self.mapped[key] = sb.base
        self.mapped.move_to_end(key)
        while len(self.mapped) > self.keep:
            old = next((k for k in self.mapped if k not in self.outstanding), None)
            if old is None:
                break
            del self.mapped[old]
        self.outstanding[key] = (sb, _use_count(sb.base))
        return sb.tensors() | sb.extra

    def poll(self) -> None:
        for key, (sb, baseline) in list(self.outstanding.items()):
            if _use_count(sb.base) <= baseline:
                sb.release()
                del self.outstanding[key]
