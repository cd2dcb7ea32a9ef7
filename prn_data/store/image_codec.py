"""``prn.image``: a zarr v3 array→bytes codec storing a ``(1, 3, H, W)`` uint8 chunk as one image file.

``format="jpeg"`` is lossy JPEG (libjpeg-turbo through imagecodecs) at ``quality``; ``"jpegxl"`` is lossless
JPEG XL. A store uses it for ``image`` only when built with ``--image-codec jpeg|jpegxl`` (README "The store
(Zarr v3)"). Importing this module registers the codec with zarr, which resolves codecs by name when it opens
an array; zarr readers outside prn need ``import prn_data.store`` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import imagecodecs
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.array_spec import ArraySpec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.core.common import JSON
from zarr.registry import register_codec

if TYPE_CHECKING:  # typing.Self is Python ≥ 3.11
    from typing import Self

CODEC_NAME = "prn.image"


@dataclass(frozen=True)
class ImageCodec(ArrayBytesCodec):
    """One RGB image per chunk: JPEG (``format="jpeg"``, lossy at ``quality``) or lossless JPEG XL."""

    is_fixed_size = False
    format: str = "jpeg"
    quality: int = 90

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        conf = data.get("configuration", {})
        return cls(format=str(conf.get("format", "jpeg")), quality=int(conf.get("quality", 90)))

    def to_dict(self) -> dict[str, JSON]:
        return {"name": CODEC_NAME, "configuration": {"format": self.format, "quality": self.quality}}

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        dec = imagecodecs.jpeg8_decode if self.format == "jpeg" else imagecodecs.jpegxl_decode
        rgb = dec(chunk_bytes.to_bytes())  # (H, W, 3)
        arr = np.ascontiguousarray(rgb.transpose(2, 0, 1)).reshape(chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(arr)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer:
        a = np.asarray(chunk_array.as_ndarray_like()).reshape(chunk_spec.shape[-3:])
        hwc = np.ascontiguousarray(a.transpose(1, 2, 0))
        if self.format == "jpeg":
            blob = imagecodecs.jpeg8_encode(hwc, level=self.quality)
        else:
            blob = imagecodecs.jpegxl_encode(hwc, lossless=True, effort=1)
        return chunk_spec.prototype.buffer.from_bytes(bytes(blob))

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError  # an image file's size depends on its content


register_codec(CODEC_NAME, ImageCodec)
