"""Stored codes ↔ in-memory values: quantising a sample's maps onto the canvas, and decoding them back.

:func:`decode` is the one decoder of stored codes in prn: ``float32(q) × scale`` for scaled maps (heatmaps
and probabilities at 1/1024, offsets at 1/16 px: README "The store (Zarr v3)"), ``lut[q]`` for the weight
codes, as they are for raw, string and JSON arrays. The training loader decodes through it too, into rows
of a batch and with a horizontal flip fused in (:class:`Mirror`), so its floats are the store's bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import StoreError
from .schema import ArrayDef


def encode_maps(defs: Iterable[ArrayDef], sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Quantise and pad one sample's in-memory maps to the stored dtypes on the canvas.

    ``sample`` holds ``image (h, w, 3) uint8`` and the targets / base maps under their array paths at the
    sample's size. Raises :class:`StoreError` for a value the encoding cannot hold (an offset beyond the
    int range, a weight not in the lut).
    """
    return {d.path: encode_map(d, sample[d.path]) for d in defs if d.sharded}


def encode_map(d: ArrayDef, v: Any) -> np.ndarray:
    """One map quantised and padded onto the canvas in its stored dtype (see :func:`encode_maps`)."""
    v = np.asarray(v)
    if d.path == "image":
        v = v.transpose(2, 0, 1)
    if v.shape[:-2] != d.shape[:-2] or v.shape[-2] > d.shape[-2] or v.shape[-1] > d.shape[-1]:
        raise StoreError(f"{d.path}: shape {v.shape} does not fit the store's {d.shape}")
    h, w = v.shape[-2:]
    canvas = np.empty(d.shape, dtype=d.dtype)
    canvas[..., h:, :] = d.fill  # only the padding is filled: the valid region is written once, below
    canvas[..., :h, w:] = d.fill
    quantise(d, v, canvas[..., :h, :w])
    return canvas


def quantise(d: ArrayDef, v: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Stored codes of ``v`` written into ``out`` (the valid region of a canvas, stored dtype)."""
    info = np.iinfo(d.dtype) if np.dtype(d.dtype).kind in "iu" else None
    if d.encoding == "raw":
        if v.dtype != np.dtype(d.dtype) and info is not None and v.size and (v.min() < info.min or v.max() > info.max):
            raise StoreError(f"{d.path}: values outside {d.dtype}")
        out[...] = v
        return out
    if d.encoding == "scale":
        # 1/scale is a power of two, so v * (1/scale) in float32 is exact and rounds like v / scale would
        inv = (1.0 / np.asarray(d.scale, dtype=np.float32)).reshape((-1,) + (1,) * (v.ndim - 1))
        q = np.multiply(v, inv, dtype=np.float32)
        if q.size and (q.min() < info.min - 0.5 or q.max() >= info.max + 0.5):
            raise StoreError(f"{d.path}: values {v.min():.4g}..{v.max():.4g} do not fit {d.dtype} at the "
                             f"store's scale")
        np.rint(q, out=out, casting="unsafe")  # round half to even, then the (checked) integer cast
        return out
    if d.encoding == "lut":
        out[...] = 0
        seen = np.zeros(v.shape, dtype=bool)
        for code, value in enumerate(d.lut):
            m = v == np.float32(value)
            seen |= m
            if code:
                out[m] = code
        if not seen.all():
            bad = np.unique(v[~seen])[:5].tolist()
            raise StoreError(f"{d.path}: values {bad} are not among the stored levels {list(d.lut)}")
        return out
    raise StoreError(f"{d.path}: cannot quantise a {d.encoding} array")


@dataclass(frozen=True)
class Mirror:
    """A horizontal mirror fused into :func:`decode`: columns ``[0, width)`` reversed (``x → width−1−x``),
    the columns from ``width`` on kept where they are. With ``channels``, channel ``k`` of the mirrored
    columns comes from channel ``channels[k]`` and is negated for ``k`` in ``negate``; the kept columns
    stay in their own channel. The table is the caller's (a flip's channel order is the model's concern)."""

    width: int
    channels: tuple[int, ...] | None = None
    negate: tuple[int, ...] = ()


def decode_table(d: ArrayDef) -> np.ndarray:
    """The float32 factors :func:`decode` applies to ``d``'s codes: per-channel scales shaped to broadcast
    over one sample's ``(C, …)`` or a batch's ``(B, C, …)``, or the lookup table."""
    if d.encoding == "scale":
        return np.asarray(d.scale, dtype=np.float32).reshape((-1,) + (1,) * (len(d.shape) - 1))
    if d.encoding == "lut":
        return np.asarray(d.lut, dtype=np.float32)
    raise StoreError(f"{d.path}: encoding {d.encoding!r} is neither scale nor lut")


def decode(d: ArrayDef, raw: Any, *, batched: bool = False, out: np.ndarray | None = None,
           mirror: Mirror | None = None) -> Any:
    """Stored value(s) of one sample (or a batch, ``batched=True``) → the in-memory form. Scaled and lut
    maps decode in one pass (``float32(q) × scale``, ``lut[q]``), into ``out`` (float32, e.g. a row of a
    batch) when given, mirrored on the way when ``mirror`` is given (one sample's map only)."""
    if d.encoding == "json":
        return json.loads(str(raw)) if raw not in (None, "") else []
    if d.encoding == "str":
        return str(raw)
    raw = np.asarray(raw)
    if d.path in ("size", "orig_size") and not batched:
        return tuple(int(v) for v in raw)
    if d.encoding == "raw":
        return raw
    if d.encoding not in ("scale", "lut"):
        raise StoreError(f"{d.path}: unknown encoding {d.encoding!r}")
    table = decode_table(d)
    if mirror is not None:
        if batched:
            raise ValueError(f"{d.path}: a mirrored decode takes one sample")
        return _decode_mirrored(d, raw, table, np.empty(raw.shape, np.float32) if out is None else out, mirror)
    if d.encoding == "scale":
        # q → float32 is exact and the product is float32's, the same bits as astype(float32) * scale
        return np.multiply(raw, table, out=out, dtype=np.float32, casting="unsafe")
    return np.take(table, raw, out=out)


def _decode_mirrored(d: ArrayDef, raw: np.ndarray, table: np.ndarray, out: np.ndarray, m: Mirror) -> np.ndarray:
    """:func:`decode` of one sample's ``(C, H, W)`` or ``(H, W)`` codes with ``m`` applied, into ``out``.
    A negated channel multiplies by ``−s``: ``q·(−s) = −(q·s)`` exactly, as mirroring the decoded floats."""
    w = int(m.width)
    lut = d.encoding == "lut"
    scales = table.reshape(-1)
    c3, o3 = (raw[None], out[None]) if raw.ndim == 2 else (raw, out)

    def put(src: np.ndarray, dst: np.ndarray, c: int, negative: bool) -> None:
        if lut:
            dst[...] = np.take(table, src)
        else:
            s = scales[c if len(scales) > 1 else 0]
            np.multiply(src, -s if negative else s, out=dst, dtype=np.float32, casting="unsafe")

    if m.channels is None:  # every channel mirrors in place: one call per region
        if not lut and len(scales) > 1:
            raise ValueError(f"{d.path}: per-channel scales need a flip channel table")
        put(c3[..., w - 1 :: -1] if w > 0 else c3[..., :0], o3[..., :w], 0, False)
        put(c3[..., w:], o3[..., w:], 0, False)
        return out
    for k, src_c in enumerate(m.channels):
        put(c3[k, :, w:], o3[k, :, w:], k, False)  # the kept columns stay in their own channel
        if w > 0:
            put(c3[src_c, :, w - 1 :: -1], o3[k, :, :w], src_c, k in m.negate)
    return out


def crop_sample(sample: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """Crop decoded canvas maps to the valid ``size = (h, w)`` (``base/semantic`` to ``⌈h/4⌉, ⌈w/4⌉``)."""
    h, w = size
    out = dict(sample)
    for k, v in sample.items():
        if not isinstance(v, np.ndarray) or v.ndim < 2 or k in ("size", "orig_size"):
            continue
        if k == "base/semantic":
            out[k] = v[..., : -(-h // 4), : -(-w // 4)]
        else:
            out[k] = v[..., :h, :w]
    return out
