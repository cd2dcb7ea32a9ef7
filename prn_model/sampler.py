"""The training sampler: an endless, seeded, rank-sharded stream of :class:`~prn_model.data.StoreDataset`
keys that a resumed run can start mid-stream.

A key is ``epoch · n + i`` (``i`` indexes the dataset's ``done`` samples); the dataset seeds a sample's
augmentation with ``(seed, epoch, i)``, so what a sample looks like never depends on which worker or rank
reads it, and a resumed run replays exactly.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


class TrainSampler(Sampler[int]):
    """An endless, seeded, rank-sharded sampler of :class:`~prn_model.data.StoreDataset` keys that can start
    mid-stream.

    Epoch ``e`` is the permutation ``default_rng([seed, e]).permutation(n)`` (or ``arange(n)`` with
    ``shuffle=False``), padded by wrapping to a multiple of ``world_size`` as ``DistributedSampler`` does;
    rank ``r`` takes every ``world_size``-th entry from ``r``. ``start`` skips that many of this rank's
    draws, which is all a resumed run needs (``start = step · batch_size``).
    """

    def __init__(self, n: int, *, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0,
                 shuffle: bool = True):
        if n <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.seed, self.rank, self.world_size = int(n), int(seed), int(rank), int(world_size)
        self.start, self.shuffle = int(start), shuffle
        self.per_rank = math.ceil(self.n / self.world_size)

    def epoch_keys(self, epoch: int) -> np.ndarray:
        """This rank's keys for ``epoch``, ``(per_rank,) int64``."""
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        total = self.per_rank * self.world_size
        order = np.resize(order, total)  # wraps around, like DistributedSampler's padding
        return order[self.rank :: self.world_size].astype(np.int64) + epoch * self.n

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            for key in self.epoch_keys(epoch)[offset:]:
                yield int(key)
            epoch, offset = epoch + 1, 0
