"""A PyTorch dataset over a prn store (local path or URL), its sampler and its collate function.

The dataset reads only the store: every map was computed offline by ``prn build``. It opens the store
lazily in whichever process reads (a DataLoader worker opens its own handle on first use) and never carries
an open handle across a fork or a pickle, because zarr's event loop and Blosc's thread pool do not survive a
fork (DESIGN §8). The loader uses a ``forkserver`` context by default for the same reason.

Per sample it returns the Batch fields without the batch axis (see :data:`BATCH_KEYS`), as NumPy arrays;
:func:`collate` stacks them into the Batch of docs/ARCHITECTURE.md:
``image (B, 3, H, W) float32`` 0..255, ``instance (B, 7, H, W) float32`` (pixels),
``base_semantic (B, N_cl, H/4, W/4) float32``, ``semantic (B, H, W) int64`` (255 = ignore),
``center (B, 1, H, W)``, ``center_offset (B, 2, H, W)`` (dy, dx), ``box_offset (B, 4, H, W)``
(top, bottom, left, right), ``foreground (B, H, W) int64``, ``semantic_weight``, ``center_weight``,
``offset_weight``, ``foreground_weight`` ``(B, H, W) float32``, ``valid (B, H, W) bool``, ``size (B, 2) int64``
(valid h, w), ``index (B,) int64`` (row in the store).

``StoreDataset(..., decode="device")`` keeps the stored integer codes of the big maps (about half the
bytes, and no float decode in the workers); :func:`decode_batch` then turns the collated batch into the
Batch above on the training device, with the store's own arithmetic (bit-identical values).

How a batch is made (the fast path, measured in ``benchmarks/loader.py``): each sample's map chunks are
read and decompressed straight into their stored dtypes (``Store.read_codes``: one range read per chunk,
cached shard indices), augmented *as codes* (a flip negates int16 codes exactly as it negates their
floats), and decoded once, by :func:`collate`, straight into the batch tensors (``float32(q) × scale`` or
``lut[q]``, the store's arithmetic): no per-sample float arrays, no second copy. :func:`make_loader`
hands a whole batch of keys to the dataset (``ds[[k0, k1, …]]`` is the collated Batch), so a worker
does exactly this; ``ds[k]`` still gives one sample's fields as NumPy (floats unless ``decode="device"``).

Sampling keys: the training sampler yields integers ``key = epoch · n + i`` (``i`` indexes the ``done``
samples), and the augmentation generator is seeded with ``(seed, epoch, i)``; so what a sample looks like
never depends on which worker or rank reads it, and a resumed run replays exactly.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from prn_data.errors import StoreError

from .augment import FULL_RES_KEYS, QUARTER_RES_KEYS, AugmentConfig, augment, gridmask, hflip

# The Batch fields: the maps augment.py transforms (full and quarter resolution), then per-sample scalars.
BATCH_KEYS = FULL_RES_KEYS[:2] + QUARTER_RES_KEYS + FULL_RES_KEYS[2:] + ("size", "index")
_FLOAT_KEYS = ("image", "instance", "base_semantic", "center", "center_offset", "box_offset")
_WEIGHT_KEYS = ("semantic_weight", "center_weight", "offset_weight", "foreground_weight")
# Store array paths (issue 3) read for training; everything else in a sample is left on disk.
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

StoreOpener = Callable[[], Any]


def default_opener(url: str) -> StoreOpener:
    """A picklable callable opening the store at ``url`` read-only (``prn_data.store.open_store``)."""
    return _UrlOpener(url)


class _UrlOpener:
    def __init__(self, url: str):
        self.url = url

    def __call__(self):
        from prn_data.store import open_store

        return open_store(self.url, mode="r")

    def __repr__(self) -> str:
        return f"open_store({self.url!r})"


def _chw(a: np.ndarray, channels: int) -> np.ndarray:
    return a[None] if a.ndim == 2 and channels == 1 else a


# Batch key → store path, for the maps whose stored codes decode_batch turns into floats.
CODED = {
    "instance": "base/instance",
    "base_semantic": "base/semantic",
    "center": "gt/center",
    "center_offset": "gt/center_offset",
    "box_offset": "gt/box_offset",
    "semantic_weight": "gt/semantic_weight",
    "center_weight": "gt/center_weight",
    "offset_weight": "gt/offset_weight",
}


def sample_from_store(raw: dict, index: int, codes: bool = False) -> dict:
    """Convert one ``Store.read_sample(i, crop=False)`` dict into the per-sample Batch fields.

    With ``codes=True``, ``raw`` holds the *stored* values (``Store.array(path)[i]``) and the maps of
    :data:`CODED` stay in their stored integer codes (``uint16`` / ``int16`` scaled values, ``uint8``
    lookup codes; code 0 is 0.0 in every lookup table) for :func:`decode_batch` to decode on the device.

    The foreground weight is derived (``gt/panoptic != -1``, DESIGN §3, which is ``gt/semantic != 255``:
    train ids are 0..254 on every segment and 255 only on VOID); every weight is zeroed and the
    semantic label set to 255 outside the valid region, so padding never counts whatever the store holds
    there. The decoded arrays are taken over, not copied (the store decodes fresh arrays per read).
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
    for key in _WEIGHT_KEYS + ("semantic",):
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

    def __init__(self, source: str | StoreOpener, augment_cfg: AugmentConfig | None = None, seed: int = 0,
                 decode: str = "loader"):
        if decode not in ("loader", "device"):
            raise ValueError(f"decode must be 'loader' or 'device', not {decode!r}")
        self.opener: StoreOpener = default_opener(source) if isinstance(source, str) else source
        self.source = source if isinstance(source, str) else repr(source)
        self.augment_cfg = augment_cfg
        self.seed = int(seed)
        self.decode = decode
        store = self.opener()
        try:
            #: Batch key → ("scale", per-channel factors) | ("lut", values): how decode_batch decodes codes.
            self._spec = _decode_spec(store)
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

    def store(self):
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
        raw["size"] = store.sizes[row]
        s = sample_from_store(raw, row, codes=True)
        if codes is None:
            codes = self.decode == "device"
        return s if codes else _decode_sample(s, self._spec)

    def _coded(self, key: int) -> dict:
        """Sample ``key`` as stored codes, augmented (module docstring). Augmenting codes equals augmenting
        their floats: a flip moves values and negates int16 codes (never −32768: offsets are within
        ±2047 px), GridMask touches only the uint8 image. With ``decode="loader"`` and no crop, the flip of
        the big coded maps is left pending (``_flip``) and done by the decode, in the same pass."""
        epoch, i = divmod(int(key), len(self.indices))
        sample = self.read(i, codes=True)
        cfg = self.augment_cfg
        if cfg is None:
            return sample
        rng = np.random.default_rng([self.seed, epoch, i])
        if self.decode == "device" or cfg.crop is not None:
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

    def __getitem__(self, key):
        """``ds[k]``: one sample's fields (NumPy); ``ds[[k0, k1, …]]``: the collated Batch of those keys
        (what :func:`make_loader`'s workers call), decoded straight into the batch tensors."""
        if isinstance(key, (list, tuple, np.ndarray)):
            samples = [self._coded(k) for k in key]
            return collate(samples, None if self.decode == "device" else self._spec)
        sample = self._coded(key)
        return sample if self.decode == "device" else _decode_sample(sample, self._spec)


def _decode_spec(store) -> dict[str, tuple[str, list[float]]]:
    spec = {}
    for key, path in CODED.items():
        d = store.defs[path]
        if d.encoding == "scale":
            spec[key] = ("scale", [float(v) for v in d.scale])
        elif d.encoding == "lut":
            if float(d.lut[0]) != 0.0:
                raise StoreError(f"{store.url}: {path} lookup code 0 is {d.lut[0]}, not 0 (padding would count)")
            spec[key] = ("lut", [float(v) for v in d.lut])
        else:
            raise StoreError(f"{store.url}: {path} has encoding {d.encoding!r}; decode='device' needs scale or lut")
    return spec


def decode_batch(batch: dict[str, torch.Tensor], spec: dict[str, tuple[str, list[float]]]) -> dict[str, torch.Tensor]:
    """Turn a batch collated from ``decode="device"`` samples into the Batch contract, on whatever device
    the batch is: ``float32(code) × scale`` per channel (the store's own arithmetic, so the values are
    bit-identical to a loader-decoded batch) or ``lut[code]``; the image to float, labels to int64."""
    if "codes" not in batch:
        return batch
    out = {k: v for k, v in batch.items() if k != "codes"}
    for key, (kind, values) in spec.items():
        t = batch[key]
        if t.device.type == "cpu":  # one NumPy pass per sample: no int64 index or float temporaries
            dst = torch.empty(t.shape, dtype=torch.float32)
            d, src = dst.numpy(), t.numpy()
            for i in range(t.shape[0]):
                _decode_into(key, src[i], spec, d[i])
            out[key] = dst
            continue
        v = torch.tensor(values, dtype=torch.float32, device=t.device)
        if kind == "scale":
            shape = (1, -1, 1, 1) if (t.dim() == 4 and len(values) > 1) else (1,) * t.dim()
            out[key] = t.to(torch.float32) * v.reshape(shape)
        else:
            out[key] = v[t.long()]
    out["image"] = batch["image"].to(torch.float32)
    out["semantic"] = batch["semantic"].long()
    out["foreground"] = batch["foreground"].long()
    out["foreground_weight"] = batch["foreground_weight"].to(torch.float32)
    return out


# Channel order and negated channels of a horizontal flip (prn_model.augment.hflip's table).
_FLIP = {
    "center_offset": ([0, 1], (1,)),  # dy, dx
    "box_offset": ([0, 1, 3, 2], ()),  # top, bottom, left ↔ right
    "instance": ([0, 1, 2, 3, 4, 6, 5], (2,)),  # heatmap, dy, dx, top, bottom, right ↔ left
}


def _decode_into(key: str, code: np.ndarray, spec: dict, out: np.ndarray, flip_w: int | None = None) -> np.ndarray:
    """Decode one sample's stored ``code`` of Batch ``key`` into float32 ``out`` (same shape) in one pass,
    with :func:`decode_batch`'s arithmetic (bit-identical). ``flip_w`` mirrors the valid width at the same
    time, exactly as :func:`prn_model.augment.hflip` would on the decoded map (``−(q·s) = q·(−s)``)."""
    kind, values = spec[key]
    v = np.asarray(values, dtype=np.float32)
    if flip_w is None:
        if kind == "scale":
            scale = v.reshape((-1, 1, 1)) if (code.ndim == 3 and len(values) > 1) else v.reshape((1,) * code.ndim)
            return np.multiply(code, scale, out=out, dtype=np.float32, casting="unsafe")
        return np.take(v, code, out=out)
    w = int(flip_w) if key != "base_semantic" else -(-int(flip_w) // 4)
    c3, o3 = (code[None], out[None]) if code.ndim == 2 else (code, out)
    chans, negate = _FLIP.get(key, (None, ()))

    def put(src, dst, c):
        if kind == "lut":
            dst[...] = np.take(v, src)
        else:
            s = v[c if len(v) > 1 else 0]
            np.multiply(src, -s if c_neg else s, out=dst, dtype=np.float32, casting="unsafe")

    if chans is None:  # every channel mirrors in place: one call per region
        c_neg = False
        if kind == "scale" and len(v) > 1:
            raise ValueError(f"{key}: per-channel scales need a flip channel table")
        put(c3[..., w - 1 :: -1] if w > 0 else c3[..., :0], o3[..., :w], 0)
        put(c3[..., w:], o3[..., w:], 0)
        return out
    for k, src_c in enumerate(chans):
        c_neg = False
        put(c3[k, :, w:], o3[k, :, w:], k)  # the padding columns keep their own channel, as hflip does
        if w > 0:
            c_neg = k in negate
            put(c3[src_c, :, w - 1 :: -1], o3[k, :, :w], src_c)
    return out


def _decode_sample(sample: dict, spec: dict) -> dict:
    """A code sample (``read(..., codes=True)``) → the float per-sample fields of ``decode="loader"``."""
    out = {k: v for k, v in sample.items() if k not in ("codes", "_flip")}
    flip = sample.get("_flip")
    for key in CODED:
        code = np.asarray(sample[key])
        out[key] = _decode_into(key, code, spec, np.empty(code.shape, dtype=np.float32), flip)
    out["image"] = sample["image"]
    out["foreground_weight"] = np.asarray(sample["foreground_weight"], dtype=np.float32)
    return out


def _close(store) -> None:
    close = getattr(store, "close", None)
    if callable(close):
        close()


class TrainSampler(Sampler[int]):
    """An endless, seeded, rank-sharded sampler of :class:`StoreDataset` keys that can start mid-stream.

    Epoch ``e`` is the permutation ``default_rng([seed, e]).permutation(n)`` (or ``arange(n)`` with
    ``shuffle=False``), padded by wrapping to a multiple of ``world_size`` as ``DistributedSampler`` does;
    rank ``r`` takes every ``world_size``-th entry from ``r``. ``start`` skips that many of this rank's
    draws, which is all a resumed run needs (``start = step · batch_size``).
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0,
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


def _dtype(key: str) -> torch.dtype:
    if key in _FLOAT_KEYS or key in _WEIGHT_KEYS:
        return torch.float32
    if key == "valid":
        return torch.bool
    return torch.int64


def collate(samples: list[dict], spec: dict | None = None) -> dict[str, torch.Tensor]:
    """Stack per-sample fields into the Batch (dtypes as in the module docstring; samples read with
    ``decode="device"`` keep their stored dtypes and add ``codes``: pass the result to :func:`decode_batch`).

    Code samples with ``spec`` (a dataset's decode spec) are decoded while stacking, each straight into its
    row of the batch tensor: the Batch contract in one pass. Inside a DataLoader worker the batch is
    written straight into shared memory (as torch's default collate does), so handing it to the main
    process costs no further copy.
    """
    in_worker = torch.utils.data.get_worker_info() is not None
    codes = bool(samples[0].get("codes", False))
    decoding = codes and spec is not None
    keep_codes = codes and not decoding
    out: dict[str, torch.Tensor] = {}
    for key in BATCH_KEYS + (("codes",) if keep_codes else ()):
        first = np.asarray(samples[0][key])
        if keep_codes and key not in ("size", "index"):
            dtype = torch.from_numpy(first.reshape(-1)[:0]).dtype
        else:
            dtype = _dtype(key)
        t = _empty((len(samples),) + first.shape, dtype, shared=in_worker)
        # NumPy copies on one thread: torch's parallel copy spins on a loaded machine for no gain here.
        buf = t.numpy()
        for i, s in enumerate(samples):
            if decoding and key in CODED:
                _decode_into(key, np.asarray(s[key]), spec, buf[i], s.get("_flip"))
            else:
                buf[i] = s[key]
        out[key] = t
    return out


def _empty(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker allocated directly in shared memory, as torch's own
    collate does (``share_memory_()`` on a fresh tensor would copy it)."""
    if shared:
        n = int(np.prod(shape, dtype=np.int64))
        storage = torch.UntypedStorage._new_shared(n * torch.empty((), dtype=dtype).element_size())
        return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
    return torch.empty(shape, dtype=dtype)


def _batched(batch: dict) -> dict:
    # The dataset already collated the batch (StoreDataset[[keys]]); DataLoader's batch_size=None path.
    return batch


def make_loader(dataset: StoreDataset, batch_size: int, sampler: Sampler | None = None,
                num_workers: int = 0, mp_context: str | None = "forkserver", pin_memory: bool = False,
                prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader over ``dataset`` with :func:`collate`; workers start from ``mp_context``
    (``forkserver`` by default, ``None`` for the platform default) and collate inside the worker.

    A :class:`StoreDataset` (or a ``Subset`` of one) gets whole batches of keys (``ds[[k, …]]``), so its
    workers decode straight into the batch tensors; the batches are the same as with per-sample reads."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor
        if mp_context:
            kwargs["multiprocessing_context"] = mp_context
    inner = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    if isinstance(inner, StoreDataset):
        from torch.utils.data import BatchSampler, SequentialSampler

        batches = BatchSampler(sampler if sampler is not None else SequentialSampler(dataset), batch_size,
                               drop_last=False)
        return DataLoader(dataset, batch_size=None, sampler=batches, num_workers=num_workers,
                          collate_fn=_batched, pin_memory=pin_memory, **kwargs)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=False,
        **kwargs,
    )
