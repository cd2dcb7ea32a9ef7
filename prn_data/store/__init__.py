"""The Zarr v3 store of PRN inputs and targets: schema, create, open, write, read (README "The store (Zarr v3)").

One group per (dataset, split, base network). Every array's first axis is the sample; maps are padded to a
fixed ``canvas`` (a multiple of 32) and the valid ``size (h, w)`` is stored per sample.

Layout (the array paths are fixed; stored dtype → decoded in-memory dtype; codecs measured in
``benchmarks/build.py``: zstd level 1 unless noted):

==========================  =======================  =============================================
path                        stored                   decoded by :meth:`Store.read_sample`
==========================  =======================  =============================================
``image``                   (N, 3, H, W) uint8       uint8 RGB; zstd (lossless, default), or the
                                                     ``prn.image`` codec: JPEG XL lossless / JPEG q90
``size``, ``orig_size``     (N, 2) int32             ``(h, w)`` tuples of int
``image_id``, ``file_name`` (N,) string              str
``done``                    (N,) bool                set last for each sample
``checksum``                (N,) uint64              digest of the sample's stored bytes (:func:`checksum`)
``gt/semantic``             (N, H, W) uint8          uint8, 255 = ignore (also the padding)
``gt/center``               (N, 1, H, W) uint16      float32 = q / 1024 (error ≤ 4.9e-4)
``gt/center_offset``        (N, 2, H, W) int16       float32 px = q / 16 (error ≤ 1/32 px)
``gt/box_offset``           (N, 4, H, W) int16       float32 px = q / 16
``gt/foreground``           (N, H, W) uint8          uint8
``gt/*_weight``             (N, H, W) uint8 codes    float32 = ``lut[q]`` (exact; lut in attributes)
``gt/panoptic``             (N, H, W) int32          int32, VOID = -1 (also the padding)
``gt/segments``             (N,) string (JSON)       list of dicts (COCO conventions)
``base/instance``           (N, 7, H, W) int16       float32; channel 0 (heatmap) q / 1024, 1–6 q / 16
``base/semantic``           (N, C, H/4, W/4) uint16  float32 = q / 1024 (error ≤ 4.9e-4); zstd level 3
``base/panoptic``           (N, H, W) int32          int32
``base/segments``           (N,) string (JSON)       list of dicts (with ``score`` when given)
==========================  =======================  =============================================

(int32 replaces int16 for offsets when the canvas has a side ≥ 2048 px.)

The modules, one concept each:

- :mod:`.schema`: :data:`SCHEMA`, the scales, :class:`ArrayDef`, :func:`schema`, the inner codec choices;
- :mod:`.image_codec`: the ``prn.image`` zarr codec (registered with zarr when this package is imported);
- :mod:`.codes`: quantising maps to stored codes (:func:`encode_maps`) and :func:`decode`, the one decoder
  of stored codes;
- :mod:`.chunks`: a sample's encoded chunks (:func:`encode_sample`) and its :func:`checksum`;
- :mod:`.shards`: a shard's bytes (assembly, index, per-chunk CRC32C, direct chunk decompression);
- :mod:`.coords`: what xarray needs besides (CF attributes, coordinate arrays; outside the schema's arrays);
- :mod:`.core`: the open :class:`Store` and :func:`open_store`, and :class:`DamagedSample`, the error of a
  read that finds a sample damaged (README "Sharing stores"); :mod:`.create`: :func:`create_store`.
"""

from .chunks import ChunkEncoder, checksum, chunk_encoder, encode_sample
from .codes import Mirror, crop_sample, decode, decode_table, encode_map, encode_maps, quantise
from .core import DamagedSample, Store, open_store
from .create import create_store, looks_like_prn_store
from .image_codec import ImageCodec
from .schema import (
    DEFAULT_SHARD_SIZE,
    HEATMAP_SCALE,
    IMAGE_CODECS,
    OFFSET_SCALE,
    PROB_SCALE,
    SCHEMA,
    SMALL_CHUNK,
    ArrayDef,
    inner_codecs,
    schema,
)

# Shim for prn_data/build.py's import of the former private name (to go when it imports the public one).

__all__ = [
    "SCHEMA", "SMALL_CHUNK", "DEFAULT_SHARD_SIZE", "HEATMAP_SCALE", "OFFSET_SCALE", "PROB_SCALE", "IMAGE_CODECS",
    "ArrayDef", "ImageCodec", "Mirror", "Store", "DamagedSample", "ChunkEncoder", "schema", "inner_codecs", "open_store",
    "create_store", "looks_like_prn_store", "encode_maps", "encode_map", "quantise", "encode_sample",
    "chunk_encoder", "decode", "decode_table", "crop_sample", "checksum",
]
