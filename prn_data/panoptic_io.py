"""COCO panoptic PNG encoding (id = R + 256·G + 256²·B, 0 = VOID), image reading, and segment statistics.

Every reader here learns the image size from the file's header before decoding a pixel and refuses a file
over :data:`MAX_PIXELS` (README "Datasets"): a small compressed file can decode to gigabytes.
"""

from __future__ import annotations

import struct
import sys
import threading
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from .errors import DatasetError
from .records import IGNORE_LABEL, VOID, CategorySet, Segment

# The PNG decoders are tried fastest first; each may be missing from an installation.
try:
    import imagecodecs
except ImportError:  # pragma: no cover
    imagecodecs = None
try:
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None
try:  # optional (the ``bench`` extra): Rust's png crate, about 3x libspng on COCO panoptic PNGs
    from kornia_rs import io as kornia_io

    if not hasattr(kornia_io, "decode_image_png_u8"):  # another version's API
        kornia_io = None
except ImportError:
    kornia_io = None

#: Largest image or label map (height × width, in pixels) any reader decodes: Pillow's decompression-bomb
#: warning limit (``PIL.Image.MAX_IMAGE_PIXELS``'s default), about 0.25 GiB as 8-bit RGB and 0.33 GiB as
#: int32 ids. Checked from the file's header, before decoding. A module constant: raise it here (and
#: ``PIL.Image.MAX_IMAGE_PIXELS`` beyond twice this) for bigger images.
MAX_PIXELS = 89_478_485

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_size(path: str | Path, *, limit: int | None = None) -> tuple[int, int]:
    """``(h, w)`` of an image file from its header alone (a PNG's IHDR; other formats through Pillow,
    which reads only the header on open). With ``limit``, a file of more than ``limit`` pixels raises
    :class:`DatasetError` naming it. Missing or unreadable files raise :class:`DatasetError` too."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file is missing")
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as exc:
        raise DatasetError(path, f"unreadable ({exc.strerror or exc})") from None
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
    else:
        try:
            with warnings.catch_warnings():
                # the limit below decides, with its own message
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    w, h = im.size
        except Image.DecompressionBombError as exc:
            raise DatasetError(path, f"image is too large to decode ({exc})") from None
        except Exception as exc:
            raise DatasetError(path, f"unreadable or truncated image header ({exc})") from None
    if limit is not None and w * h > limit:
        raise DatasetError(path, f"image is {h}x{w} (HxW), {h * w:,} pixels: over the limit of {limit:,} "
                                 "(prn_data.panoptic_io.MAX_PIXELS)")
    return int(h), int(w)


def rgb2id(rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``(H, W, 3|4) uint8`` → ``(H, W) int32`` COCO panoptic ids (an alpha channel is ignored). ``out``: a
    C-contiguous int32 array of at least H·W elements to write into (reused across images, it spares the
    allocation); the result is then a view of it."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] in (3, 4):
        h, w, c = rgb.shape
        n = h * w
        ids = _int32_out(out, n)
        if c == 3 and cv2 is not None and n and rgb.flags.c_contiguous and sys.byteorder == "little":
            # OpenCV widens RGB to RGBA (SIMD, about 3x the strided read below) straight into the ids'
            # memory, read as little-endian words; the alpha byte is then masked off in place.
            cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA, dst=ids.view(np.uint8).reshape(h, w, 4))
            np.bitwise_and(ids, 0xFFFFFF, out=ids)
            return ids.reshape(h, w)
        # Each pixel's bytes R, G, B read as one little-endian word starting at the pixel (its 4th byte is
        # the next pixel's R or the alpha, masked off): one pass instead of three multiply-adds over int32
        # copies of every channel. The last RGB pixel's word would run past the buffer: it is done alone.
        if n:
            flat = np.ascontiguousarray(rgb).reshape(-1)
            m = n if c == 4 else n - 1
            words = np.ndarray((m,), dtype="<i4", buffer=flat, strides=(c,))
            np.bitwise_and(words, 0xFFFFFF, out=ids[:m])
            if m < n:
                r, g, b = flat[-3:].tolist()
                ids[-1] = r + 256 * g + 65536 * b
        return ids.reshape(h, w)
    rgb = rgb.astype(np.int32, copy=False)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    if out is not None:
        view = _int32_out(out, ids.size).reshape(ids.shape)
        view[...] = ids
        return view
    return ids


def _int32_out(out: np.ndarray | None, n: int) -> np.ndarray:
    """The first ``n`` elements of ``out`` (flat, int32, C-contiguous), or a new array when ``out`` is None."""
    if out is None:
        return np.empty(n, dtype=np.int32)
    if out.dtype != np.int32 or not out.flags.c_contiguous or out.size < n:
        raise ValueError(f"out must be a C-contiguous int32 array of at least {n} elements, got {out.dtype} {out.shape}")
    return out.reshape(-1)[:n]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """``(H, W)`` ids in 0..2²⁴−1 → ``(H, W, 3) uint8`` RGB (R the lowest byte); larger ids wrap."""
    words = np.ascontiguousarray(ids, dtype="<u4")
    return np.ascontiguousarray(words.view(np.uint8).reshape(words.shape + (4,))[..., :3])


_scratch = threading.local()
#: Largest decode buffer a thread keeps between calls (bytes); bigger images get a fresh one each time.
_SCRATCH_MAX = 64 << 20


def _rgb_scratch(shape: tuple[int, int, int], key: str = "rgb") -> np.ndarray | None:
    """This thread's reusable ``uint8`` array of ``shape`` named ``key`` (its earlier contents overwritten
    by the next call with that key), or None past :data:`_SCRATCH_MAX`. Decoding into it spares the page
    faults of a fresh allocation per image, which on a busy machine cost as much as the decode itself."""
    n = shape[0] * shape[1] * shape[2]
    if n > _SCRATCH_MAX:
        return None
    buf = getattr(_scratch, key, None)
    if buf is None or buf.size < n:
        buf = np.empty(max(n, 1 << 20), dtype=np.uint8)
        setattr(_scratch, key, buf)
    return buf[:n].reshape(shape)


def _png_rgb8(data: bytes) -> tuple[int, int, int] | None:
    """``(h, w, channels)`` from a PNG's IHDR when it is plain 8-bit RGB or RGBA, else None."""
    if len(data) < 29 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    w, h, depth, color = struct.unpack(">IIBB", data[16:26])
    if depth != 8 or color not in (2, 6):
        return None
    return h, w, 3 if color == 2 else 4


def decode_png(path: str | Path) -> np.ndarray:
    """``(H, W, 3|4) uint8`` RGB(A) pixels of a PNG: Rust's png crate through kornia-rs when installed
    (8-bit RGB(A) files), else libspng through imagecodecs (about twice as fast as libpng here), else
    OpenCV, else Pillow (16-bit files come back as ``uint16``). All decoders are lossless: the pixels are
    the same whichever runs. The header is checked against :data:`MAX_PIXELS` before any decoder runs.
    Errors name the file."""
    return _decode_png(Path(path), reuse=False)


def _decode_png(path: str | Path, *, reuse: bool | str) -> np.ndarray:
    """:func:`decode_png`; with ``reuse`` the pixels may lie in this thread's scratch buffer
    (:func:`_rgb_scratch`; ``reuse`` may name one), valid until the thread's next call with the same
    ``reuse``. ``path`` may stay a ``str``: a ``Path`` costs about as much to make as a small file to read
    (PQ reads two per image)."""
    data = None
    if kornia_io is not None or imagecodecs is not None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            pass  # image_size says what is wrong
    if data is None or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" \
            or int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big") > MAX_PIXELS:
        # not a PNG header in hand, or one over the limit: image_size checks it (its own words)
        image_size(path, limit=MAX_PIXELS)
    if data is not None:
        head = _png_rgb8(data)
        if head is not None and kornia_io is not None:
            try:
                return np.asarray(kornia_io.decode_image_png_u8(data, head[:2], "rgb" if head[2] == 3 else "rgba"))
            except Exception:  # a file the png crate refuses: the next decoder says what is wrong
                pass
        if imagecodecs is not None:
            try:
                out = None
                if reuse and head is not None:
                    out = _rgb_scratch(head, reuse) if isinstance(reuse, str) else _rgb_scratch(head)
                return imagecodecs.spng_decode(data, out=out)
            except Exception:
                pass
    if cv2 is not None:
        bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if bgr is None:
            raise DatasetError(path, "unreadable panoptic PNG")
        if bgr.ndim == 3 and bgr.shape[2] in (3, 4):
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB if bgr.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
        return bgr
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except Exception as exc:
        raise DatasetError(path, f"unreadable panoptic PNG ({exc})") from None


def read_rgb_ids(path: str | Path, out: np.ndarray | None = None) -> np.ndarray:
    """Read a COCO panoptic PNG → ``(H, W) int32`` raw file ids (0 = VOID). ``out``: as :func:`rgb2id`'s
    (an int32 buffer to reuse across images). Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "panoptic PNG is missing")
    arr = _decode_png(path, reuse=True)
    if arr.dtype != np.uint8:
        # Pillow would clip 16-bit values to 255 and give wrong ids without a word.
        raise DatasetError(path, f"a COCO panoptic PNG has 8 bits per channel, this one {8 * arr.itemsize}")
    if not (arr.ndim == 3 and arr.shape[2] in (3, 4)):
        # palette or grey files: let Pillow convert them as panopticapi's reader does
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as exc:
            raise DatasetError(path, f"unreadable panoptic PNG ({exc})") from None
    return rgb2id(arr, out=out)


def write_rgb_ids(path: str | Path, ids: np.ndarray) -> None:
    """Write ``(H, W)`` ids (0 = VOID, any negative written as 0) as a COCO panoptic PNG."""
    Image.fromarray(id2rgb(np.maximum(ids, 0))).save(path)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image → ``(H, W, 3) uint8`` RGB; missing / truncated / unreadable / too large files name the
    path.

    Modes (README "Datasets"): 8-bit ones (RGB, RGBA, L, LA, P, 1, CMYK, YCbCr …) convert through Pillow
    (alpha dropped, not composited); 16-bit grey (``I;16``, and a 16-bit PNG that Pillow opens as ``I``)
    keeps its high byte (``v >> 8``), as Pillow does for 16-bit RGB PNGs; 32-bit integer (``I``) and
    floating-point (``F``) images have no fixed range to scale from and are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "image is missing")
    image_size(path, limit=MAX_PIXELS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # image_size checked the size
            with Image.open(path) as im:
                im.load()
                return _rgb8(im, path)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(path, f"unreadable or truncated image ({exc})") from None


def _rgb8(im: Image.Image, path: Path) -> np.ndarray:
    """``(H, W, 3) uint8`` of a loaded Pillow image (modes as :func:`read_image` says)."""
    if im.mode == "RGB":
        return np.asarray(im)
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
        a = np.asarray(im)
        if a.dtype.kind == "i" and a.size and (a.min() < 0 or a.max() > 65535):
            raise DatasetError(path, f"16-bit image (mode {im.mode}) with values outside 0..65535")
        grey = (a.astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode in ("I", "F"):
        kind = "32-bit integer" if im.mode == "I" else "floating-point"
        raise DatasetError(path, f"{kind} image (mode {im.mode}) is not supported: its values have no fixed "
                                 "range to scale to 8 bits; save it as 8- or 16-bit")
    return np.asarray(im.convert("RGB"))


def segment_stats(panoptic: np.ndarray,
                  ids: Sequence[int] | None = None) -> dict[int, tuple[int, tuple[int, int, int, int]]]:
    """Area and COCO bbox ``[x, y, w, h]`` of every id in ``(H, W)`` ``panoptic`` (VOID excluded), in one pass.

    Returns ``{id: (area, bbox)}``; ids listed in ``ids`` but absent get area 0 and bbox (0, 0, 0, 0).
    Ids are counted with ``bincount`` over their value range (2–3× faster than ``np.unique``'s sort on
    COCO-sized maps) unless that range is much larger than the image.
    """
    flat = panoptic.ravel()
    out: dict[int, tuple[int, tuple[int, int, int, int]]] = {}
    if flat.size:
        lo, hi = int(flat.min()), int(flat.max())
        if hi - lo <= 4 * flat.size + (1 << 20):
            off = np.subtract(flat, lo, dtype=np.int64)
            counts = np.bincount(off, minlength=hi - lo + 1)
            present = np.flatnonzero(counts)
            lut = np.zeros(hi - lo + 1, dtype=np.int32)
            lut[present] = np.arange(1, len(present) + 1, dtype=np.int32)
            labels = lut[off]
            uniq, areas = present + lo, counts[present]
        else:
            uniq, inv = np.unique(flat, return_inverse=True)
            areas = np.bincount(inv, minlength=len(uniq))
            labels = (inv + 1).astype(np.int32)
        boxes = ndimage.find_objects(labels.reshape(panoptic.shape))
        for idx, seg_id in enumerate(uniq.tolist()):
            if seg_id == VOID:
                continue
            ys, xs = boxes[idx]
            out[seg_id] = (int(areas[idx]), (xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start))
    for seg_id in ids or ():
        out.setdefault(int(seg_id), (0, (0, 0, 0, 0)))
    return out


def refresh_segments(panoptic: np.ndarray, segments: Sequence[Segment]) -> list[Segment]:
    """Recompute ``area`` and ``bbox`` of ``segments`` from ``panoptic`` and drop the ones that vanished
    (e.g. after resizing). Order is kept."""
    stats = segment_stats(panoptic)
    out = []
    for s in segments:
        if s.id in stats:
            area, bbox = stats[s.id]
            out.append(Segment(s.id, s.category_id, s.train_id, s.isthing, s.iscrowd, area, bbox, s.score))
    return out


def semantic_from_panoptic(panoptic: np.ndarray, segments: Sequence[Segment]) -> np.ndarray:
    """``(H, W) uint8`` train ids from a panoptic map and its segments; VOID and unlisted ids → 255."""
    uniq, inv = np.unique(panoptic, return_inverse=True)
    train = {s.id: s.train_id for s in segments}
    lut = np.array([train.get(int(u), IGNORE_LABEL) for u in uniq], dtype=np.uint8)
    return lut[inv].reshape(panoptic.shape)


__all__ = [
    "rgb2id",
    "id2rgb",
    "MAX_PIXELS",
    "image_size",
    "decode_png",
    "read_rgb_ids",
    "write_rgb_ids",
    "read_image",
    "segment_stats",
    "refresh_segments",
    "semantic_from_panoptic",
    "CategorySet",
]
