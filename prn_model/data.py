"""A PyTorch dataset over a prn store (local path or URL) and the DataLoader that reads it.

The dataset reads only the store: every map was computed offline by ``prn build``. It opens the store
lazily in whichever process reads (a DataLoader worker opens its own handle on first use) and never carries
an open handle across a fork or a pickle, because zarr's event loop and Blosc's thread pool do not survive a
fork. The loader uses a ``forkserver`` context by default for the same reason.

Per sample it returns the Batch fields without the batch axis (:data:`prn_model.batch.BATCH_KEYS`), as
NumPy arrays; :func:`prn_model.batch.collate` stacks them into the Batch of docs/ARCHITECTURE.md.
``StoreDataset(..., decode="device")`` keeps the stored integer codes of the big maps (about half the
bytes, and no float decode in the workers); :func:`prn_model.batch.decode_batch` then turns the collated
batch into the Batch on the training device, with the store's own factors (bit-identical values).

How a batch is made (the fast path, measured in ``benchmarks/loader.py``): each sample's map chunks are
read and decompressed straight into their stored dtypes (``Store.read_codes``: one range read per chunk,
cached shard indices), augmented *as codes* (a flip negates int16 codes exactly as it negates their
floats), and decoded once, by :func:`~prn_model.batch.collate` through the store's decoder, straight into
the batch tensors: no per-sample float arrays, no second copy. :func:`make_loader` hands a whole batch of
keys to the dataset (``ds[[k0, k1, …]]`` is the collated Batch), so a worker does exactly this; ``ds[k]``
still gives one sample's fields as NumPy (floats unless ``decode="device"``). The batch is written into a
reused block of memory (:mod:`prn_model.slabs`; fresh pages cost more than the read itself), which a worker
ships to the trainer as one shared slab and gets back once the trainer holds no tensor of it.

Sampling keys (:class:`~prn_model.sampler.TrainSampler`): ``key = epoch · n + i`` (``i`` indexes the
``done`` samples), and the augmentation generator is seeded with ``(seed, epoch, i)``; so what a sample
looks like never depends on which worker or rank reads it, and a resumed run replays exactly.

A damaged sample (:class:`~prn_data.store.DamagedSample`: a chunk that fails its CRC32C, a missing chunk,
README "Sharing stores") stops the loader with that error, raised in the main process as itself even when
a worker read it. With ``skip_bad`` the next readable sample of the same epoch takes its place in the batch
(deterministically, so a resumed run still replays) and the batch lists it under ``"_skipped"``
(:meth:`~prn_data.store.DamagedSample.to_json` plus ``replaced_by``) for the trainer to log.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from prn_data.errors import StoreError
from prn_data.heap import retain_freed_blocks
from prn_data.store import DamagedSample, Store, open_store

from .augment import AugmentConfig, augment, gridmask, hflip
from .batch import CODED, WEIGHT_KEYS, apply_flip, collate, decode_sample, store_decode_spec
from .devices import LoaderWorkerInit
from .slabs import POOL_SIZE, Receiver, SlabBatch, pool

# Store array paths read for training (README "The store (Zarr v3)"); everything else is left on disk.
STORE_KEYS = (
    "image",
    "size",
    "base/instance",
    "base/semantic",
    "gt/semantic",
    "gt/center",
    "gt/center_offset",
    "gt/box_offset",
    "gt/foreground",
    "gt/semantic_weight",
    "gt/center_weight",
    "gt/offset_weight",
)

StoreOpener = Callable[[], Store]


def default_opener(url: str) -> StoreOpener:
    """A picklable callable opening the store at ``url`` read-only (``prn_data.store.open_store``)."""
    return _UrlOpener(url)


class _UrlOpener:
    def __init__(self, url: str):
        self.url = url

    def __call__(self) -> Store:
        return open_store(self.url, mode="r")

    def __repr__(self) -> str:
        return f"open_store({self.url!r})"


def _chw(a: np.ndarray, channels: int) -> np.ndarray:
    return a[None] if a.ndim == 2 and channels == 1 else a


def sample_from_store(raw: dict, index: int, codes: bool = False) -> dict:
    """Convert one ``Store.read_sample(i, crop=False)`` dict into the per-sample Batch fields.

    With ``codes=True``, ``raw`` holds the *stored* values (``Store.array(path)[i]``) and the maps of
    :data:`CODED` stay in their stored integer codes (``uint16`` / ``int16`` scaled values, ``uint8``
    lookup codes; code 0 is 0.0 in every lookup table) for :func:`decode_batch` to decode on the device.

    The foreground weight is derived (``gt/panoptic != -1``, README "Conventions", which is
    ``gt/semantic != 255``: train ids are 0..254 on every segment and 255 only on VOID); every weight is
    zeroed and the semantic label set to 255 outside the valid region, so padding never counts whatever the
    store holds there. The decoded arrays are taken over, not copied (the store decodes fresh arrays per read).
    """
    image = np.asarray(raw["image"], dtype=np.uint8)
    H, W = image.shape[-2:]
    h, w = (int(v) for v in np.asarray(raw["size"]).reshape(2))
    valid = np.zeros((H, W), dtype=bool)
    valid[:h, :w] = True
    semantic = np.asarray(raw["gt/semantic"], dtype=np.uint8).reshape(H, W)
    f32 = None if codes else np.float32
    s = {
        "image": image,
        "instance": np.asarray(raw["base/instance"], dtype=f32),
        "base_semantic": np.asarray(raw["base/semantic"], dtype=f32),
        "semantic": semantic,
        "center": np.asarray(_chw(np.asarray(raw["gt/center"]), 1), dtype=f32),
        "center_offset": np.asarray(raw["gt/center_offset"], dtype=f32),
        "box_offset": np.asarray(raw["gt/box_offset"], dtype=f32),
        "foreground": np.asarray(raw["gt/foreground"], dtype=np.uint8).reshape(H, W),
        "semantic_weight": np.asarray(raw["gt/semantic_weight"], dtype=f32).reshape(H, W),
        "center_weight": np.asarray(raw["gt/center_weight"], dtype=f32).reshape(H, W),
        "offset_weight": np.asarray(raw["gt/offset_weight"], dtype=f32).reshape(H, W),
        # VOID (panoptic −1) is exactly where the semantic label is 255, so gt/panoptic need not be read.
        "foreground_weight": (semantic != 255).astype(np.uint8 if codes else np.float32),
        "valid": valid,
        "size": np.array([h, w], dtype=np.int64),
        "index": np.int64(index),
    }
    if codes:
        s["codes"] = np.bool_(True)
    for key in WEIGHT_KEYS + ("semantic",):
        a = s[key]
        if not a.flags.writeable:
            a = s[key] = a.copy()
        fill = 255 if key == "semantic" else 0
        a[h:, :] = fill
        a[:h, w:] = fill
    return s


class StoreDataset(Dataset):
    """The ``done`` samples of a prn store as training (``augment`` given) or evaluation samples.

    ``source`` is a store URL/path or a zero-argument callable returning an open store (it must be
    picklable when workers are used). ``__getitem__`` takes a sampler key (see the module docstring);
    keys below ``len(self)`` are epoch 0. Metadata (``done``, categories, canvas) is read once here in
    the parent and the handle is dropped at once, so no open store crosses a fork.
    """

    def __init__(self, source: str | StoreOpener, augment_cfg: AugmentConfig | None = None, *, seed: int = 0,
                 decode: str = "loader", skip_bad: bool = False):
        if decode not in ("loader", "device"):
            raise ValueError(f"decode must be 'loader' or 'device', not {decode!r}")
        self.opener: StoreOpener = default_opener(source) if isinstance(source, str) else source
        self.source = source if isinstance(source, str) else repr(source)
        self.augment_cfg = augment_cfg
        self.seed = int(seed)
        self.decode = decode
        self.skip_bad = bool(skip_bad)
        #: Collate batches into this process's reusable slabs (prn_model.slabs); False: fresh memory per batch
        #: (torch's way, the baseline of benchmarks/loader.py).
        self.reuse_memory = True
        store = self.opener()
        try:
            #: Batch key → the store's definition of its array: how collate and decode_batch decode codes.
            self._spec = store_decode_spec(store)
            self.decode_spec = self._spec if decode == "device" else {}
            done = np.asarray(store.done, dtype=bool)
            self.indices = np.flatnonzero(done).astype(np.int64)
            self.categories = store.categories
            self.canvas = tuple(int(v) for v in store.canvas)
            self.attrs = dict(getattr(store, "attrs", {}) or {})
        finally:
            _close(store)
        if len(self.indices) == 0:
            raise StoreError(f"{self.source}: no sample is done (was the build finished?)")
        self._store = None
        self._pid = None

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"] = None
        state["_pid"] = None
        return state

    def store(self) -> Store:
        """This process's open store handle (opened on first use; reopened after a fork)."""
        if self._store is None or self._pid != os.getpid():
            self._store = self.opener()
            self._pid = os.getpid()
        return self._store

    def read(self, i: int, codes: bool | None = None) -> dict:
        """The un-augmented per-sample fields of the ``i``-th done sample; stored codes for the maps of
        :data:`CODED` when ``codes`` (default: ``decode == "device"``)."""
        row = int(self.indices[i])
        store = self.store()
        raw = store.read_codes(row, [p for p in STORE_KEYS if p != "size"])
        raw["size"] = store.read_value("size", row)
        s = sample_from_store(raw, row, codes=True)
        if codes is None:
            codes = self.decode == "device"
        return s if codes else decode_sample(s, self._spec)

    def _coded(self, key: int) -> dict:
        """Sample ``key`` as stored codes, augmented (module docstring). Augmenting codes equals augmenting
        their floats: a flip moves values and negates int16 codes (never −32768: offsets are within
        ±2047 px), GridMask touches only the uint8 image. Without a crop, the flip of the big coded maps is left
        pending (``_flip``) and done on the way into the batch (by the decode, or by the copy of the codes:
        :func:`~prn_model.batch.mirror_field`), in the same pass."""
        epoch, i = divmod(int(key), len(self.indices))
        sample = self.read(i, codes=True)
        cfg = self.augment_cfg
        if cfg is None:
            return sample
        rng = np.random.default_rng([self.seed, epoch, i])
        if cfg.crop is not None:
            return augment(sample, cfg, rng)
        # augment()'s order and draws (crop, flip, GridMask), with the flip of the CODED maps deferred;
        # test_device_decode_gives_bit_identical_batches checks it against augment() itself.
        if cfg.flip and rng.random() < cfg.flip_prob:
            light = hflip({k: v for k, v in sample.items() if k not in CODED})
            sample.update(light)
            sample["_flip"] = np.int64(sample["size"][1])
        if cfg.gridmask is not None:
            sample = gridmask(sample, cfg.gridmask, rng)
        return sample

    def _coded_or_next(self, key: int, skipped: list[dict]) -> dict:
        """:meth:`_coded` of ``key``; with ``skip_bad``, a damaged sample is recorded in ``skipped`` and the
        next readable one of the same epoch (``i + 1, i + 2, …`` modulo the samples) is read instead."""
        try:
            return self._coded(key)
        except DamagedSample as exc:
            if not self.skip_bad:
                raise
            first = exc
        epoch, i = divmod(int(key), len(self.indices))
        bad = [first]
        for step in range(1, len(self.indices)):
            j = (i + step) % len(self.indices)
            try:
                sample = self._coded(epoch * len(self.indices) + j)
            except DamagedSample as exc:
                bad.append(exc)
                continue
            skipped += [e.to_json() | {"replaced_by": int(self.indices[j])} for e in bad]
            return sample
        raise StoreError(f"{self.source}: no readable sample left to use instead of damaged ones ({first})")

    def __getitem__(self, key):
        """``ds[k]``: one sample's fields (NumPy); ``ds[[k0, k1, …]]``: the collated Batch of those keys
        (what :func:`make_loader`'s workers call), decoded straight into the batch tensors, with
        ``"_skipped"`` when damaged samples were replaced (module docstring)."""
        skipped: list[dict] = []
        if isinstance(key, (list, tuple, np.ndarray)):
            try:
                samples = [self._coded_or_next(k, skipped) for k in key]
            except DamagedSample as exc:
                if torch.utils.data.get_worker_info() is None:
                    raise
                return {"_error": exc}  # torch would re-raise it in the trainer as a traceback text
            batch = collate(samples, None if self.decode == "device" else self._spec,
                            slabs=pool() if self.reuse_memory else None)
            if skipped:
                if isinstance(batch, SlabBatch):
                    batch.extra["_skipped"] = skipped
                else:
                    batch["_skipped"] = skipped
            return batch
        sample = self._coded_or_next(key, skipped)
        return apply_flip(sample) if self.decode == "device" else decode_sample(sample, self._spec)


def _close(store: Store) -> None:
    close = getattr(store, "close", None)
    if callable(close):
        close()


def _batched(batch: dict) -> dict:
    # The dataset already collated the batch (StoreDataset[[keys]]); DataLoader's batch_size=None path.
    return batch


class _StoreLoader(DataLoader):
    """A DataLoader of :class:`StoreDataset` batches that raises a worker's :class:`DamagedSample` in the
    main process as itself (the batch carries it as ``"_error"``), so it stays a one-line error."""

    def __iter__(self):
        # a worker's batch arrives as a SlabBatch: its slab goes back to the worker once the trainer holds
        # no tensor of it (prn_model.slabs)
        receiver = Receiver(keep=POOL_SIZE * max(1, self.num_workers))
        inner = super().__iter__()
        #: this iteration's worker processes (benchmarks/loader.py reads their CPU time)
        self.worker_pids = [w.pid for w in getattr(inner, "_workers", [])]
        for batch in inner:
            receiver.poll()
            if isinstance(batch, SlabBatch):
                batch = receiver.open(batch)
            error = batch.get("_error") if isinstance(batch, dict) else None
            if error is not None:
                raise error
            yield batch


def make_loader(dataset: StoreDataset, batch_size: int, sampler: Sampler | None = None, *,
                num_workers: int = 0, mp_context: str | None = "forkserver", pin_memory: bool = False,
                prefetch_factor: int = 2, worker_threads: int = 1) -> DataLoader:
    """A DataLoader over ``dataset`` with :func:`~prn_model.batch.collate`; workers start from ``mp_context``
    (``forkserver`` by default, ``None`` for the platform default) and collate inside the worker.

    A :class:`StoreDataset` (or a ``Subset`` of one) gets whole batches of keys (``ds[[k, …]]``), so its
    workers decode straight into the batch tensors; the batches are the same as with per-sample reads.

    Every process that reads (the workers, or this one with ``num_workers=0``) keeps its freed large blocks
    for the next read (:func:`prn_data.heap.retain_freed_blocks`)."""
    kwargs: dict[str, Any] = {}
    if num_workers == 0:
        retain_freed_blocks()
    else:
        kwargs["prefetch_factor"] = prefetch_factor
        # workers never outlive this process, and run torch at worker_threads intra-op threads each
        kwargs["worker_init_fn"] = LoaderWorkerInit(os.getpid(), worker_threads)
        if mp_context:
            kwargs["multiprocessing_context"] = mp_context
    inner = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    if isinstance(inner, StoreDataset):
        batches = BatchSampler(sampler if sampler is not None else SequentialSampler(dataset), batch_size,
                               drop_last=False)
        return _StoreLoader(dataset, batch_size=None, sampler=batches, num_workers=num_workers,
                            collate_fn=_batched, pin_memory=pin_memory, **kwargs)
    return _StoreLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=False,
        **kwargs,
    )
