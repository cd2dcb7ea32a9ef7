"""What a plain xarray reader needs to see a prn store as decoded, labelled data (README "The store (Zarr v3)").

prn decodes stored codes itself (:func:`~prn_data.store.codes.decode`, from the schema). So that
``xarray.open_zarr(store, group="gt")`` shows the same values without prn, a store also carries:

- CF attributes xarray decodes by itself (:func:`cf_attributes`): ``scale_factor`` on every array with one
  scale (heatmaps and probabilities 1/1024, offsets 1/16 px: floats in pixels), ``units``, and
  ``flag_values``/``flag_meanings`` on the label maps (``gt/semantic``: train id → class name, 255 =
  ``ignore``; ``gt/foreground``). No ``_FillValue``: the padding's values (0, −1, 255) are real codes, not
  missing data, and xarray masks nothing for a Zarr v3 array unless told so. No ``add_offset``: every
  stored scale is a pure factor. ``base/instance`` has a scale per channel, which CF cannot say: its
  ``channel_scale`` coordinate holds the factors (``ds.instance * ds.channel_scale`` decodes it).
- coordinate arrays (:func:`create_coordinates`): ``sample`` (each sample's image id, in every group,
  written at the end of every build run by :func:`write_sample_coordinates`), ``axis`` (``dy, dx``) and
  ``channel`` (``top, bottom, left, right``) in ``gt/``, ``channel`` (``heatmap, dy, dx, top, bottom, left,
  right``), ``channel_scale`` and ``class`` (class names) in ``base/`` — so ``.sel(channel="top")`` works.

The coordinates are outside the schema's per-sample arrays: the sample checksum, ``prn verify``'s schema
check and every prn read ignore them, and a store written before them (none, no CF attributes) reads in prn
exactly as before (same schema version).
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np
import zarr
import zarr.codecs as zc

from ..records import IGNORE_LABEL, CategorySet
from .schema import ArrayDef

AXES = ("dy", "dx")
BOX_CHANNELS = ("top", "bottom", "left", "right")
INSTANCE_CHANNELS = ("heatmap",) + AXES + BOX_CHANNELS
#: Units of the scaled maps, by path (the others are unitless).
UNITS = {"gt/center_offset": "pixels", "gt/box_offset": "pixels", "base/instance": "mixed (see channel_scale)"}
#: Groups holding per-sample arrays: each gets a ``sample`` coordinate of image ids ("" = root).
GROUPS = ("", "gt", "base")


def flag_word(name: str) -> str:
    """A class name as one CF ``flag_meanings`` word: runs of other characters than letters, digits and
    ``_ - . + @`` become ``_`` (``"traffic light"`` → ``"traffic_light"``)."""
    return re.sub(r"[^A-Za-z0-9_.+@-]+", "_", name).strip("_") or "unnamed"


def cf_attributes(d: ArrayDef, categories: CategorySet) -> dict:
    """The CF attributes of array ``d`` (besides prn's own ``encoding``/``scale``/``lut``): see the module."""
    a: dict = {}
    if d.encoding == "scale" and d.scale is not None and len(d.scale) == 1:
        a["scale_factor"] = float(d.scale[0])
    if d.path in UNITS:
        a["units"] = UNITS[d.path]
    if d.path == "base/instance":
        a["coordinates"] = "channel_scale"
    if d.path == "gt/semantic":
        by_train = sorted((c.train_id, c.name) for c in categories if c.train_id < IGNORE_LABEL)
        a["flag_values"] = [t for t, _ in by_train] + [IGNORE_LABEL]
        a["flag_meanings"] = " ".join([flag_word(n) for _, n in by_train] + ["ignore"])
    if d.path == "gt/foreground":
        a["flag_values"] = [0, 1]
        a["flag_meanings"] = "not_thing thing"
    return a


def _coordinate(group: zarr.Group, path: str, values: np.ndarray, crc32c: bool, dim: str | None = None,
                fill: object = "") -> None:
    """A 1-D coordinate array ``path`` along ``dim`` (default: its own name, a dimension coordinate), one
    chunk, written whole."""
    dim = dim or path.rsplit("/", 1)[-1]
    crc = (zc.Crc32cCodec(),) if crc32c else ()
    is_str = values.dtype.kind in "OUT"
    a = group.create_array(path, shape=values.shape, chunks=(max(1, len(values)),),
                           dtype=str if is_str else values.dtype, fill_value=fill if is_str else 0,
                           dimension_names=(dim,), compressors=(zc.ZstdCodec(level=0),) + crc,
                           attributes={"encoding": "str" if is_str else "raw"},
                           config={"write_empty_chunks": True})
    if len(values):
        a[:] = values


def create_coordinates(group: zarr.Group, defs: Iterable[ArrayDef], categories: CategorySet, n: int,
                       crc32c: bool = True) -> None:
    """Create the coordinate arrays of a new store (``sample`` filled with ``""`` until
    :func:`write_sample_coordinates`)."""
    paths = {d.path for d in defs}
    for g in GROUPS:
        if g == "" or any(p.startswith(g + "/") for p in paths):
            _coordinate(group, f"{g}/sample".lstrip("/"), np.full(n, "", dtype=object), crc32c)
    _coordinate(group, "gt/axis", np.asarray(AXES, dtype=object), crc32c)
    _coordinate(group, "gt/channel", np.asarray(BOX_CHANNELS, dtype=object), crc32c)
    inst = next((d for d in defs if d.path == "base/instance"), None)
    if inst is not None:
        _coordinate(group, "base/channel", np.asarray(INSTANCE_CHANNELS, dtype=object), crc32c)
        _coordinate(group, "base/channel_scale", np.asarray(inst.scale, dtype=np.float64), crc32c, dim="channel")
        names = [c.name for c in sorted(categories, key=lambda c: c.train_id) if c.train_id < IGNORE_LABEL]
        _coordinate(group, "base/class", np.asarray(names, dtype=object), crc32c)


def write_sample_coordinates(group: zarr.Group, image_ids: np.ndarray) -> None:
    """Copy the image ids into every group's ``sample`` coordinate (a store without them, written before
    they existed, is left as it is)."""
    ids = np.asarray([str(v) for v in image_ids], dtype=object)
    for g in GROUPS:
        path = f"{g}/sample".lstrip("/")
        try:
            a = group[path]
        except KeyError:
            continue
        if isinstance(a, zarr.Array) and a.shape == ids.shape:
            a[:] = ids


__all__ = ["AXES", "BOX_CHANNELS", "INSTANCE_CHANNELS", "GROUPS", "flag_word", "cf_attributes",
           "create_coordinates", "write_sample_coordinates"]
