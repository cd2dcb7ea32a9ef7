"""Creating a store: an empty prn store of ``n`` samples, every array made as the schema says.

Each map array is chunked one sample per chunk inside shards of ``shard_size`` samples (sharding codec,
default 256: ≈ 60 files per 1000 samples). A shard is assembled from already-compressed chunks and written
whole, by one writer, in one store ``set`` (atomic on a local disk: zarr-python's LocalStore writes through
a temporary file), because zarr-python 3 loses data on concurrent partial-shard writes. The small
per-sample arrays (size, ids, segments, checksum, done) are unsharded with
:data:`~prn_data.store.schema.SMALL_CHUNK` samples per chunk and written only by the build's driver
process after a shard's writer has returned, ``done`` last (README "The store (Zarr v3)" and "Choices
where the issues were silent").

Every array carries ``dimension_names`` and an ``encoding`` attribute (``raw``, ``scale`` with
``scale``, ``lut`` with ``lut``, ``json`` or ``str``) so that other readers can decode without this package;
``xarray.open_zarr(url)`` (root) and ``xarray.open_zarr(url, group="gt")`` open it; CF attributes
(``scale_factor``, ``units``, ``flag_values``) and coordinate arrays (image ids, channel and class names)
make xarray decode floats and label the axes by itself (:mod:`~prn_data.store.coords`).

Every chunk, of the map arrays (inside their shards) and of the small arrays, ends with zarr's ``crc32c``
codec: the CRC32C of its compressed bytes, which :class:`~prn_data.store.core.Store` checks on every read
and any zarr reader checks too (root attribute ``chunk_checksum: "crc32c"``; README "Sharing stores").
The small arrays write every chunk, even one of fill values only (``write_empty_chunks``), so a missing
chunk is always damage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Mapping

import zarr
import zarr.codecs as zc
from zarr.core.sync import sync

from ..errors import StoreError
from ..location import local_path, zarr_store
from ..records import CategorySet
from .coords import cf_attributes, create_coordinates
from .core import Store
from .schema import DEFAULT_SHARD_SIZE, IMAGE_CODECS, SCHEMA, SMALL_CHUNK, ArrayDef, inner_codecs, schema


def create_store(url: str | Path, *, n: int, canvas: tuple[int, int], categories: CategorySet, attrs: Mapping,
                 has_base: bool, shard_size: int = DEFAULT_SHARD_SIZE, image_codec: str = "zstd",
                 small_weight: float = 3.0, overwrite: bool = False, crc32c: bool = True) -> Store:
    """Create an empty store of ``n`` samples (every ``done`` False) and return it open for writing.

    ``attrs`` are extra root attributes (dataset, split, policy, target params, base …). An existing
    store at ``url`` is an error unless ``overwrite``. ``crc32c=False`` makes the layout of a store built
    before per-chunk checksums (no ``crc32c`` codec; for tests that old stores still read).
    """
    url = str(url)
    if canvas[0] % 4 or canvas[1] % 4:
        raise StoreError(f"canvas {canvas} must be a multiple of 4")
    if image_codec not in IMAGE_CODECS:
        raise StoreError(f"unknown image codec {image_codec!r}; choose one of {', '.join(IMAGE_CODECS)}")
    zstore = zarr_store(url, "w")
    if not overwrite and sync(zstore.exists("zarr.json")):
        raise StoreError(f"{url}: a store already exists (use --overwrite to replace it)")
    if overwrite and (local_path(url) is not None) and local_path(url).exists():
        path = local_path(url)
        if any(path.iterdir()) and not looks_like_prn_store(path, creating_too=True):
            raise StoreError(f"{url}: refusing to overwrite a folder that is not a prn store")
        shutil.rmtree(path)
        zstore = zarr_store(url, "w")
    root_attrs = dict(attrs) | {
        "prn_schema": SCHEMA,
        "n_samples": int(n),
        "canvas": [int(canvas[0]), int(canvas[1])],
        "shard_size": int(shard_size),
        "image_codec": image_codec,
        "categories": categories.to_json(),
        "num_classes": len(categories),
        "failures": [],
    } | ({"chunk_checksum": "crc32c"} if crc32c else {})
    # prn_schema goes in last: a creation cut short leaves a group that is not (yet) a prn store
    group = zarr.create_group(zstore, zarr_format=3, overwrite=overwrite, attributes={"prn_creating": True})
    defs = schema(canvas, len(categories), has_base, small_weight=small_weight, image_codec=image_codec,
                  crc32c=crc32c)
    for d in defs:
        create_array(group, d, n, shard_size, cf_attributes(d, categories))
    create_coordinates(group, defs, categories, n, crc32c)
    group.attrs.put(root_attrs)
    return Store(url, group, zstore, "r+")


def looks_like_prn_store(path: Path, creating_too: bool = False) -> bool:
    """True for a local prn store of any schema version (or, with ``creating_too``, one whose creation was
    cut short)."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    attrs = (meta.get("attributes") or {}) if isinstance(meta, dict) else {}
    return "prn_schema" in attrs or (creating_too and attrs.get("prn_creating") is True)


def create_array(group: zarr.Group, d: ArrayDef, n: int, shard_size: int, extra_attrs: Mapping | None = None
                 ) -> zarr.Array:
    """Array ``d`` of ``n`` samples in ``group``: a sharded map (one sample per chunk, ``shard_size`` per
    shard, ``d``'s codec) or a small per-sample array (:data:`SMALL_CHUNK` samples per chunk).
    ``extra_attrs`` (the CF attributes) join ``d``'s own."""
    dims = ("sample",) + d.dims
    attrs = d.attrs() | dict(extra_attrs or {})
    crc = (zc.Crc32cCodec(),) if d.crc32c else ()
    if d.dtype == "str":  # zarr's default compressor for strings (zstd level 0), then the checksum
        return group.create_array(d.path, shape=(n,), chunks=(SMALL_CHUNK,), dtype=str, fill_value=d.fill,
                                  dimension_names=dims, attributes=attrs,
                                  compressors=(zc.ZstdCodec(level=0),) + crc)
    if not d.sharded:
        return group.create_array(d.path, shape=(n,) + d.shape, chunks=(SMALL_CHUNK,) + d.shape, dtype=d.dtype,
                                  fill_value=d.fill, dimension_names=dims, attributes=attrs,
                                  compressors=inner_codecs("zstd3", d.crc32c)[1])
    serializer, compressors = inner_codecs(d.codec, d.crc32c)
    return group.create_array(d.path, shape=(n,) + d.shape, chunks=(1,) + d.shape,
                              shards=(shard_size,) + d.shape, dtype=d.dtype, fill_value=d.fill,
                              dimension_names=dims, attributes=attrs, serializer=serializer,
                              compressors=compressors)
