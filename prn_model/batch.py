"""The training Batch: its fields, how per-sample fields are stacked into it, and how stored codes in it are
decoded.

:func:`collate` stacks per-sample fields (the Batch without its batch axis, NumPy) into the Batch of
docs/ARCHITECTURE.md: ``image (B, 3, H, W) float32`` 0..255, ``instance (B, 7, H, W) float32`` (pixels),
``base_semantic (B, N_cl, H/4, W/4) float32``, ``semantic (B, H, W) int64`` (255 = ignore),
``center (B, 1, H, W)``, ``center_offset (B, 2, H, W)`` (dy, dx), ``box_offset (B, 4, H, W)``
(top, bottom, left, right), ``foreground (B, H, W) int64``, ``semantic_weight``, ``center_weight``,
``offset_weight``, ``foreground_weight`` ``(B, H, W) float32``, ``valid (B, H, W) bool``, ``size (B, 2) int64``
(valid h, w), ``index (B,) int64`` (row in the store).

The maps of :data:`CODED` may arrive as the store's integer codes. They are decoded by the store's own
decoder (:func:`prn_data.store.decode`: ``float32(q) × scale`` or ``lut[q]``), straight into the batch
tensors, with a pending horizontal flip (:mod:`prn_model.augment`'s channel table) fused into the same
pass; or, for a batch collated with its codes kept (``decode="device"``), by :func:`decode_batch` on the
training device with the store's factors (:func:`prn_data.store.decode_table`). Either way the floats are
bit-identical to decoding first and augmenting after.
"""

from __future__ import annotations

import numpy as np
import torch

from prn_data.errors import StoreError
from prn_data.store import ArrayDef, Mirror, Store, decode, decode_table

from .augment import FLIP_CHANNELS, FULL_RES_KEYS, QUARTER_RES_KEYS, flip_width
from .slabs import SlabBatch, SlabPool

# The Batch fields: the maps augment.py transforms (full and quarter resolution), then per-sample scalars.
BATCH_KEYS = FULL_RES_KEYS[:2] + QUARTER_RES_KEYS + FULL_RES_KEYS[2:] + ("size", "index")
FLOAT_KEYS = ("image", "instance", "base_semantic", "center", "center_offset", "box_offset")
WEIGHT_KEYS = ("semantic_weight", "center_weight", "offset_weight", "foreground_weight")

# Batch key → store path, for the maps that may travel as stored codes.
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

#: Batch key → the store array definition its codes decode with (see :func:`store_decode_spec`).
DecodeSpec = dict[str, ArrayDef]


def store_decode_spec(store: Store) -> DecodeSpec:
    """How the :data:`CODED` maps of ``store`` decode: their array definitions, checked to be scaled or
    looked up with code 0 meaning 0.0 (the padding and the masked-out pixels must not count)."""
    spec = {}
    for key, path in CODED.items():
        d = store.defs[path]
        if d.encoding == "lut":
            if float(d.lut[0]) != 0.0:
                raise StoreError(f"{store.url}: {path} lookup code 0 is {d.lut[0]}, not 0 (padding would count)")
        elif d.encoding != "scale":
            raise StoreError(f"{store.url}: {path} has encoding {d.encoding!r}; decode='device' needs scale or lut")
        spec[key] = d
    return spec


def decode_field(key: str, code: np.ndarray, d: ArrayDef, out: np.ndarray, flip_w: int | None = None) -> np.ndarray:
    """Decode one sample's stored ``code`` of Batch ``key`` into float32 ``out`` (same shape) in one pass.
    ``flip_w`` mirrors the valid width at the same time, exactly as :func:`prn_model.augment.hflip` would
    on the decoded map."""
    if flip_w is None:
        return decode(d, code, out=out)
    channels, negate = FLIP_CHANNELS.get(key, (None, ()))
    return decode(d, code, out=out, mirror=Mirror(flip_width(key, int(flip_w)), channels, negate))


def mirror_field(key: str, code: np.ndarray, out: np.ndarray, flip_w: int) -> np.ndarray:
    """One sample's stored ``code`` of Batch ``key`` copied into ``out`` (same shape and dtype) with the
    horizontal flip of a sample of valid width ``flip_w`` applied on the way, exactly as
    :func:`prn_model.augment.hflip` flips it (int16 codes negate exactly: offsets are within ±2047 px)."""
    w = flip_width(key, int(flip_w))
    channels, negate = FLIP_CHANNELS.get(key, (None, ()))
    src, dst = (code[None], out[None]) if code.ndim == 2 else (code, out)
    if channels is None:
        dst[..., w:] = src[..., w:]
        dst[..., :w] = src[..., w - 1 :: -1] if w > 0 else src[..., :0]
        return out
    for k, c in enumerate(channels):
        dst[k, :, w:] = src[k, :, w:]  # the kept columns stay in their own channel
        if w > 0:
            if k in negate:
                np.negative(src[c, :, w - 1 :: -1], out=dst[k, :, :w])
            else:
                dst[k, :, :w] = src[c, :, w - 1 :: -1]
    return out


def apply_flip(sample: dict) -> dict:
    """A code sample with its pending flip (``_flip``, see :class:`~prn_model.data.StoreDataset`) done."""
    flip = sample.pop("_flip", None)
    if flip is not None:
        for key in CODED:
            code = np.asarray(sample[key])
            sample[key] = mirror_field(key, code, np.empty_like(code), int(flip))
    return sample


def decode_sample(sample: dict, spec: DecodeSpec) -> dict:
    """A sample of stored codes (with a pending flip ``_flip``, if any) → float per-sample fields."""
    out = {k: v for k, v in sample.items() if k not in ("codes", "_flip")}
    flip = sample.get("_flip")
    for key in CODED:
        code = np.asarray(sample[key])
        out[key] = decode_field(key, code, spec[key], np.empty(code.shape, dtype=np.float32), flip)
    out["image"] = sample["image"]
    out["foreground_weight"] = np.asarray(sample["foreground_weight"], dtype=np.float32)
    return out


def decode_batch(batch: dict[str, torch.Tensor], spec: DecodeSpec) -> dict[str, torch.Tensor]:
    """Turn a batch collated from ``decode="device"`` samples into the Batch contract, on whatever device
    the batch is: ``float32(code) × scale`` per channel or ``lut[code]`` with the store's factors (so the
    values are bit-identical to a loader-decoded batch); the image to float, labels to int64."""
    if "codes" not in batch:
        return batch
    out = {k: v for k, v in batch.items() if k != "codes"}
    for key, d in spec.items():
        t = batch[key]
        if t.device.type == "cpu":  # one NumPy pass per sample: no int64 index or float temporaries
            dst = torch.empty(t.shape, dtype=torch.float32)
            dn, src = dst.numpy(), t.numpy()
            for i in range(t.shape[0]):
                decode(d, src[i], out=dn[i])
            out[key] = dst
            continue
        table = torch.from_numpy(decode_table(d)).to(t.device)
        out[key] = t.to(torch.float32) * table if d.encoding == "scale" else table[t.long()]
    out["image"] = batch["image"].to(torch.float32)
    out["semantic"] = batch["semantic"].long()
    out["foreground"] = batch["foreground"].long()
    out["foreground_weight"] = batch["foreground_weight"].to(torch.float32)
    return out


def _dtype(key: str) -> torch.dtype:
    if key in FLOAT_KEYS or key in WEIGHT_KEYS:
        return torch.float32
    if key == "valid":
        return torch.bool
    return torch.int64


def collate(samples: list[dict], spec: DecodeSpec | None = None, *, slabs: SlabPool | None = None
            ) -> dict[str, torch.Tensor] | SlabBatch:
    """Stack per-sample fields into the Batch (dtypes as in the module docstring; samples read with
    ``decode="device"`` keep their stored dtypes and add ``codes``: pass the result to :func:`decode_batch`).

    Code samples with ``spec`` (a dataset's decode spec) are decoded while stacking, each straight into its
    row of the batch tensor: the Batch contract in one pass. With ``slabs`` (:func:`prn_model.slabs.pool`)
    the batch's tensors are views into one reused block of memory (no fresh pages per batch); inside a
    DataLoader worker that block is shared memory and the result is the :class:`~prn_model.slabs.SlabBatch`
    to hand to the trainer. Without ``slabs``, inside a worker each tensor is written straight into fresh
    shared memory (as torch's default collate does), so handing it over costs no further copy.
    """
    in_worker = torch.utils.data.get_worker_info() is not None
    codes = bool(samples[0].get("codes", False))
    decoding = codes and spec is not None
    keep_codes = codes and not decoding
    layout = []
    for key in BATCH_KEYS + (("codes",) if keep_codes else ()):
        first = np.asarray(samples[0][key])
        if keep_codes and key not in ("size", "index"):
            dtype = torch.from_numpy(first.reshape(-1)[:0]).dtype
        else:
            dtype = _dtype(key)
        layout.append((key, dtype, (len(samples),) + first.shape))
    shipped = None
    if slabs is not None:
        out, shipped = slabs.take(layout, ship=in_worker)
    else:
        out = {key: _empty(shape, dtype, shared=in_worker) for key, dtype, shape in layout}
    for key, t in out.items():
        # NumPy copies on one thread: torch's parallel copy spins on a loaded machine for no gain here.
        buf = t.numpy()
        for i, s in enumerate(samples):
            if decoding and key in CODED:
                decode_field(key, np.asarray(s[key]), spec[key], buf[i], s.get("_flip"))
            elif key in CODED and s.get("_flip") is not None:  # codes kept: flipped on the way in
                mirror_field(key, np.asarray(s[key]), buf[i], s["_flip"])
            else:
                buf[i] = s[key]
    return out if shipped is None else shipped


def _empty(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker allocated directly in shared memory, as torch's own
    collate does (``share_memory_()`` on a fresh tensor would copy it)."""
    if shared:
        n = int(np.prod(shape, dtype=np.int64))
        storage = torch.UntypedStorage._new_shared(n * torch.empty((), dtype=dtype).element_size())
        return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
    return torch.empty(shape, dtype=dtype)
