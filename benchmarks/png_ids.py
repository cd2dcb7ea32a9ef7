"""COCO panoptic PNG id encoding and decoding (prn_data.panoptic_io) against the per-channel arithmetic form
(the first version, kept here as the baseline) in one process, on the COCO sample's ground-truth PNGs; and
each PNG decoder that is installed (kornia-rs's png crate, libspng, OpenCV's libpng, Pillow), all checked to
give the same pixels. Times are the best of ``--repeat`` in CPU ms.

Usage: ``python benchmarks/png_ids.py [--repeat 50]``.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from prn_data import panoptic_io
from prn_data.panoptic_io import id2rgb, read_rgb_ids, rgb2id

REPO = Path(__file__).resolve().parents[1]


def id2rgb_arith(ids: np.ndarray) -> np.ndarray:
    ids = ids.astype(np.int64, copy=False)
    return np.stack([ids % 256, (ids // 256) % 256, (ids // 65536) % 256], axis=-1).astype(np.uint8)


def rgb2id_arith(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32, copy=False)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def read_pil(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return rgb2id_arith(np.asarray(im.convert("RGB")))


def best_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return 1000 * min(times)


def decoders(data: bytes, shape: tuple[int, int]) -> dict:
    """The installed PNG decoders, each as a function of nothing returning ``(H, W, 3) uint8`` RGB."""
    out = {}
    if panoptic_io.kornia_io is not None:
        out["kornia-rs (png crate)"] = lambda: panoptic_io.kornia_io.decode_image_png_u8(data, shape, "rgb")
    if panoptic_io.imagecodecs is not None:
        out["libspng (imagecodecs)"] = lambda: panoptic_io.imagecodecs.spng_decode(data)
    if panoptic_io.cv2 is not None:
        cv2 = panoptic_io.cv2
        out["libpng (OpenCV)"] = lambda: cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED),
                                                      cv2.COLOR_BGR2RGB)
    out["Pillow"] = lambda: np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    pngs = sorted((REPO / "prn_data" / "samples" / "coco" / "annotations" / "panoptic_val2017").glob("*.png"))
    for png in pngs:
        ids = read_rgb_ids(png)
        rgb = id2rgb(ids)
        assert (id2rgb_arith(ids) == rgb).all() and (rgb2id_arith(rgb) == ids).all() and (read_pil(png) == ids).all()
        buf = io.BytesIO()
        rows = [
            ("id2rgb", best_ms(lambda: id2rgb(ids), args.repeat), best_ms(lambda: id2rgb_arith(ids), args.repeat)),
            ("rgb2id", best_ms(lambda: rgb2id(rgb), args.repeat), best_ms(lambda: rgb2id_arith(rgb), args.repeat)),
            ("read_rgb_ids", best_ms(lambda: read_rgb_ids(png), args.repeat), best_ms(lambda: read_pil(png), args.repeat)),
            ("PNG encode (Pillow, for scale)", best_ms(lambda: Image.fromarray(rgb).save(buf, format="PNG"), args.repeat), float("nan")),
        ]
        print(f"{png.name} {ids.shape[0]}x{ids.shape[1]}: ms, ours / arithmetic-and-Pillow baseline")
        for name, ours, base in rows:
            print(f"  {name:32s} {ours:6.2f}  {base:6.2f}  (x{base / ours:.1f})")
        print("  decoders (same pixels, checked):")
        for name, fn in decoders(png.read_bytes(), ids.shape).items():
            assert (np.asarray(fn()) == rgb).all(), name
            print(f"    {name:30s} {best_ms(fn, args.repeat):6.2f}")


if __name__ == "__main__":
    main()
