"""Benchmark of ``prn build`` on COCO-sized images: throughput, bytes per sample, files, codec choices.

    .venv/bin/python benchmarks/build.py [--copies 48] [--workers 2] [--skip-codecs]

Data: a temporary COCO-panoptic dataset of ``--copies`` images made from the two shipped COCO val2017
samples (427×640 and 360×640) plus the first one extended to 512×640 (reflected image, VOID labels), so the
default resize policy (README "Conventions") gives 534×800, 450×800 and 640×800 samples and the canvas is 640×800; base network
``simulated`` with 133-class probabilities (160×200).

Prints, in one process:

1. a **baseline**: the per-sample computation alone (load, resize, targets, base encoding), serial, no
   store — and the encode (quantise + compress + checksum) cost per sample; plus the CPU time of each
   stage, which (unlike wall time) does not depend on what else the shared machine runs;
2. **end-to-end** ``build()`` samples/s with the default scheduler (a local in-process cluster of
   ``--workers`` threads) and with ``--scheduler processes``, overall and in the steady state, as ratios
   against the serial baseline; and the build's CPU time per sample → samples/s on 2 idle cores;
3. **bytes per sample** for each array of the default store (lossless image) and the total of ``gt/`` and
   ``base/`` (goal ≤ 600 KB), and the same store with ``--image-codec jpeg``;
4. **files per 1000 samples** (goal ≤ 100): counted on the store and projected for N = 1000;
5. **codec alternatives** per array on the same encoded samples: zstd levels 1/3/9, Blosc shuffle + zstd
   / lz4, and for the maps the float32 alternative to the quantised dtypes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
COCO = REPO / "prn_data" / "samples" / "coco"


def make_dataset(root: Path, copies: int) -> Path:
    """A COCO-panoptic layout (split ``val2017``) of ``copies`` images cycling over three variants."""
    from PIL import Image

    src = json.loads((COCO / "annotations" / "panoptic_val2017.json").read_text())
    (root / "val2017").mkdir(parents=True)
    (root / "annotations" / "panoptic_val2017").mkdir(parents=True)
    variants = []
    for img, ann in zip(src["images"], src["annotations"]):
        variants.append((img, ann, None))
    variants.append((src["images"][0], src["annotations"][0], 512))  # extended to 512 rows → 640×800
    images, anns = [], []
    for k in range(copies):
        img, ann, pad_to = variants[k % len(variants)]
        rgb = np.asarray(Image.open(COCO / "val2017" / img["file_name"]).convert("RGB"))
        pan = np.asarray(Image.open(COCO / "annotations" / "panoptic_val2017" / ann["file_name"]).convert("RGB"))
        if pad_to:
            extra = pad_to - rgb.shape[0]
            rgb = np.pad(rgb, ((0, extra), (0, 0), (0, 0)), mode="reflect")
            pan = np.pad(pan, ((0, extra), (0, 0), (0, 0)))  # id 0 = VOID
        name = f"{k:012d}"
        Image.fromarray(rgb).save(root / "val2017" / f"{name}.jpg", quality=95)
        Image.fromarray(pan).save(root / "annotations" / "panoptic_val2017" / f"{name}.png")
        images.append(dict(img, id=k, file_name=f"{name}.jpg", height=rgb.shape[0], width=rgb.shape[1]))
        anns.append(dict(ann, image_id=k, file_name=f"{name}.png"))
    out = dict(src, images=images, annotations=anns)
    (root / "annotations" / "panoptic_val2017.json").write_text(json.dumps(out))
    return root


def array_bytes(store: Path) -> dict[str, float]:
    """Bytes on disk per array (chunk files only)."""
    out = {}
    for meta in sorted(store.rglob("zarr.json")):
        arr = meta.parent
        if json.loads(meta.read_text()).get("node_type") != "array":
            continue
        out[arr.relative_to(store).as_posix()] = sum(p.stat().st_size for p in (arr / "c").rglob("*") if p.is_file()) \
            if (arr / "c").exists() else 0
    return out


def timed(fn, *a, **kw):
    t = time.perf_counter()
    r = fn(*a, **kw)
    return r, time.perf_counter() - t


def codec_table(samples: list[dict[str, np.ndarray]], floats: list[dict[str, np.ndarray]]) -> None:
    """Bytes/sample and encode ms/sample of codec alternatives over the same stored arrays."""
    import imagecodecs
    from numcodecs import Blosc, Zstd

    Blosc.use_threads = False
    codecs = {
        "zstd1": Zstd(level=1), "zstd3": Zstd(level=3), "zstd9": Zstd(level=9),
        "blosc-zstd3-shuf": Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE),
        "blosc-lz4-shuf": Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE),
        "blosc-zstd3-bitshuf": Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE),
    }
    print("\n## codec alternatives (KB/sample | encode ms/sample); chosen: zstd1, zstd3 for base/semantic")
    print(f"{'array':24s}" + "".join(f"{n:>22s}" for n in codecs))

    def row(label, arrays):
        cells = []
        for c in codecs.values():
            t = time.perf_counter()
            nb = sum(len(c.encode(np.ascontiguousarray(a))) for a in arrays)
            ms = (time.perf_counter() - t) * 1e3 / len(arrays)
            cells.append(f"{nb / len(arrays) / 1e3:10.1f} | {ms:7.1f}")
        print(f"{label:24s}" + "".join(f"{c:>22s}" for c in cells))

    for path in samples[0]:
        row(path, [s[path] for s in samples])
    for path in floats[0]:
        row(path + " (float32)", [f[path] for f in floats])
    imgs = [np.ascontiguousarray(s["image"].transpose(1, 2, 0)) for s in samples]
    for name, enc in (("png (imagecodecs)", lambda a: imagecodecs.png_encode(a)),
                      ("jpeg q90", lambda a: imagecodecs.jpeg8_encode(a, level=90)),
                      ("jpegxl lossless", lambda a: imagecodecs.jpegxl_encode(a, lossless=True, effort=1))):
        try:
            t = time.perf_counter()
            nb = sum(len(enc(a)) for a in imgs)
            print(f"image {name:18s}{nb / len(imgs) / 1e3:10.1f} KB | {(time.perf_counter() - t) * 1e3 / len(imgs):7.1f} ms")
        except Exception as exc:  # a codec missing from this imagecodecs build
            print(f"image {name:18s} unavailable ({type(exc).__name__})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=48)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline", type=int, default=12, help="samples in the serial baseline (CPU per stage)")
    ap.add_argument("--skip-codecs", action="store_true")
    args = ap.parse_args()

    from prn_data.base import open_base
    from prn_data.build import BuildConfig, build, make_sample
    from prn_data.datasets import open_dataset
    from prn_data.resize import ResizePolicy
    from prn_data.store import DEFAULT_SHARD_SIZE, SMALL_CHUNK, encode_maps, encode_sample, open_store
    from prn_data.targets import TargetParams

    tmp = Path(tempfile.mkdtemp(prefix="prn-bench-"))
    try:
        root = make_dataset(tmp / "coco", args.copies)
        spec = f"coco:{root}"
        ds = open_dataset(spec, "val2017")
        base = open_base("simulated", ds.categories)
        params, policy = TargetParams(), ResizePolicy()
        print(f"# prn build benchmark: {len(ds)} COCO-sized images, base simulated, {len(ds.categories)} classes, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")

        # 1. serial baseline (compute only) and encode cost, CPU seconds per stage
        from prn_data.base.encode import encode_base
        from prn_data.resize import resize_sample
        from prn_data.targets import compute_targets

        from prn_data.build import bound_zarr_concurrency

        bound_zarr_concurrency()  # what the build's workers do: one torch thread, bounded zarr
        stages = dict.fromkeys(["load", "resize", "targets", "base predict", "base encode"], 0.0)

        def stage(name, fn, *a):
            t = time.process_time()
            r = fn(*a)
            stages[name] += time.process_time() - t
            return r

        maps = []
        t = time.perf_counter()
        for i in range(args.baseline):
            raw = stage("load", ds.load, i)
            smp = stage("resize", resize_sample, raw, policy)
            stage("targets", compute_targets, smp.panoptic, smp.segments, params)
            pred = stage("base predict", lambda: base.predict([raw])[0])
            stage("base encode", encode_base, pred, smp.size, len(ds.categories), params)
        base_s = (time.perf_counter() - t) / args.baseline
        for i in range(args.baseline):
            maps.append(make_sample(ds, base, i, policy, params, len(ds.categories)))
        probe = tmp / "probe.zarr"
        build(BuildConfig(spec, "val2017", base="simulated", out=str(probe), limit=3, workers=1))
        defs = list(open_store(probe).defs.values())
        encode_sample(defs, *maps[0])  # warm the per-thread encoders
        t, c = time.perf_counter(), time.process_time()
        for m, meta in maps:
            encode_sample(defs, m, meta)
        enc_s = (time.perf_counter() - t) / len(maps)
        stages["store encode (quantise, compress, checksum)"] = (time.process_time() - c)
        cpu = sum(stages.values()) / args.baseline
        print(f"\n## baseline (serial, one process): compute {1 / base_s:.2f} samples/s ({base_s * 1e3:.0f} ms), "
              f"encode+compress {enc_s * 1e3:.0f} ms/sample → {1 / (base_s + enc_s):.2f} samples/s serial")
        print("   CPU ms per sample by stage (robust to other load on the machine): " + ", ".join(
            f"{k} {v / args.baseline * 1e3:.0f}" for k, v in stages.items()) + f"; total {cpu * 1e3:.0f} ms "
              f"→ at most {2 / cpu:.1f} samples/s on 2 idle cores")

        # 2. end-to-end builds
        results = {}
        for label, sched in (("local cluster, threads", None), ("local cluster, processes", "processes")):
            out = tmp / f"store-{sched or 'local'}.zarr"
            stamps: list[float] = []
            cpu0 = time.process_time() if sched is None else None
            r = build(BuildConfig(spec, "val2017", base="simulated", out=str(out), workers=args.workers,
                                  scheduler=sched), on_progress=lambda *_: stamps.append(time.perf_counter()))
            assert r.ok, r.failures
            results[label] = (r, out)
            rate = r.n_samples / r.seconds
            half = len(stamps) // 2  # steady state: the second half of the samples, start-up excluded
            steady = (len(stamps) - 1 - half) / max(stamps[-1] - stamps[half], 1e-9)
            print(f"end-to-end {label:27s} {args.workers} workers: {rate:6.2f} samples/s over {r.seconds:.1f} s "
                  f"incl. start-up; steady {steady:6.2f} samples/s = ×{steady * (base_s + enc_s):.2f} the serial "
                  f"compute+encode baseline")
            if cpu0 is not None:  # in-process workers: this process's CPU time is the build's
                cpu_build = (time.process_time() - cpu0) / r.n_samples
                print(f"   CPU per sample in the build {cpu_build * 1e3:.0f} ms → {2 / cpu_build:.1f} samples/s "
                      f"on 2 idle cores if both are kept busy")

        # 3. bytes per sample
        r, out = results["local cluster, threads"]
        n = r.n_samples
        sizes = array_bytes(out)
        print(f"\n## bytes per sample (canvas {open_store(out).canvas}, shard {DEFAULT_SHARD_SIZE}, default codecs)")
        for k in sorted(sizes):
            print(f"  {k:22s} {sizes[k] / n / 1e3:9.1f} KB")
        gb = sum(v for k, v in sizes.items() if k.startswith(("gt/", "base/"))) / n
        tot = sum(sizes.values()) / n
        print(f"  gt/ + base/ total      {gb / 1e3:9.1f} KB  (goal ≤ 600 KB)")
        print(f"  store total            {tot / 1e3:9.1f} KB  (image lossless, zstd level 1)")
        for codec in ("jpegxl", "jpeg"):
            outc = tmp / f"store-{codec}.zarr"
            rc = build(BuildConfig(spec, "val2017", base="simulated", out=str(outc), workers=args.workers,
                                   image_codec=codec, limit=min(n, 12)))
            img = array_bytes(outc)["image"] / rc.n_samples
            print(f"  --image-codec {codec:7s}  image {img / 1e3:7.1f} KB (×{img / (sizes['image'] / n):.2f} of "
                  f"zstd), store total {(tot - sizes['image'] / n + img) / 1e3:7.1f} KB "
                  f"(×{(tot - sizes['image'] / n + img) / tot:.2f})")

        # 4. files
        files = [p for p in out.rglob("*") if p.is_file()]
        n_maps = sum(1 for d in defs if d.sharded)
        n_small = len(defs) - n_maps
        n_meta = sum(1 for p in files if p.name == "zarr.json")
        proj = n_maps * -(-1000 // DEFAULT_SHARD_SIZE) + n_small * -(-1000 // SMALL_CHUNK) + n_meta
        print(f"\n## files: {len(files)} for {n} samples; projected for 1000 samples: {proj} "
              f"({n_maps} map arrays × {-(-1000 // DEFAULT_SHARD_SIZE)} shards + {n_small} small arrays + "
              f"{n_meta} zarr.json)  (goal ≤ 100)")

        # 5. codecs
        if not args.skip_codecs:
            stored = [encode_maps(defs, m) for m, _ in maps]
            floats = [{k: np.asarray(m[k], np.float32) for k in ("gt/center", "gt/center_offset", "gt/box_offset",
                                                                   "base/instance", "base/semantic")} for m, _ in maps]
            codec_table(stored, floats)
        print(f"\n# load average {os.getloadavg()[0]:.1f} at the end (other processes share these cores)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
