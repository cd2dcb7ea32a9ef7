"""Builders of test data shared by the tests and the benchmarks (as ``numpy.testing`` is for NumPy).

- :data:`CATS`, :func:`make_sample`: four categories and a synthetic in-memory sample (stuff, thing ellipses,
  a VOID strip, optionally a crowd region) for the base-network tests.
- :func:`build_tiny_store`: a small real store of synthetic scenes built by :func:`prn_data.build.build`.
- :func:`run_prn`, :func:`build_sample_store`: the installed ``prn`` command, and the shipped COCO sample built
  into a store once per test session by a real ``prn build``.
- :func:`perturb`, :func:`repeat_images`: perturbed predictions of the COCO sample's ground truth, and many
  images made from its two.

Nothing here imports ``prn_model``; builders that need it live in ``tests/helpers.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy import ndimage

from .build import BuildConfig, build
from .panoptic_io import read_rgb_ids, refresh_segments, write_rgb_ids
from .records import VOID, Category, CategorySet, IdAllocator, Sample, Segment
from .resize import ResizePolicy
from .targets import TargetParams

COCO_SAMPLE = Path(__file__).resolve().parent / "samples" / "coco"
PRN = [str(Path(sys.executable).parent / "prn")]

# Train-id order deliberately mixes stuff and things (the dataset's order is kept, README "Conventions").
CATS = CategorySet([
    Category(100, "sky", False, 0),
    Category(1, "person", True, 1),
    Category(101, "grass", False, 2),
    Category(3, "car", True, 3),
])


class TmpPathFactory(Protocol):
    """What :func:`build_sample_store` needs of pytest's ``tmp_path_factory``."""

    def getbasetemp(self) -> Path: ...


def make_sample(index: int, *, size: tuple[int, int] = (96, 128), n_inst: tuple[int, int] = (3, 6),
                crowd: bool = False, seed: int = 1234) -> Sample:
    """A synthetic sample of :data:`CATS`: two stuff regions (wavy border), non-overlapping thing ellipses, a
    VOID strip; with ``crowd``, a person crowd region (id 1999) at the bottom."""
    rng = np.random.default_rng([seed, index])
    H, W = size
    yy, xx = np.mgrid[0:H, 0:W]
    border = H // 2 + (4 * np.sin(xx / 9.0)).astype(int)
    pan = np.where(yy < border, 100 * 1000, 101 * 1000).astype(np.int32)
    pan[:, :2] = VOID
    segs = [Segment(100_000, 100, 0, False), Segment(101_000, 101, 2, False)]
    taken = np.zeros((H, W), bool)
    ids = IdAllocator()
    for _ in range(rng.integers(*n_inst, endpoint=True)):
        for _attempt in range(20):
            ry, rx = rng.integers(7, 16), rng.integers(7, 20)
            cy, cx = rng.integers(ry + 1, H - ry - 1), rng.integers(rx + 3, W - rx - 1)
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            if not (m & taken).any():
                break
        else:
            continue
        cid = int(rng.choice([1, 3]))
        sid = ids.thing(cid)
        pan[m] = sid
        taken |= np.pad(m, 2)[:-4, 2:-2] | m  # keep a gap so instances never touch
        segs.append(Segment(sid, cid, CATS.by_id(cid).train_id, True))
    if crowd:
        pan[-10:, 40:60] = 1 * 1000 + 999
        segs.append(Segment(1999, 1, 1, True, iscrowd=True))
    image = np.zeros((H, W, 3), np.uint8)
    return Sample(image, pan, refresh_segments(pan, segs), f"img{index:04d}", f"img{index:04d}.jpg", (H, W))


def build_tiny_store(out: Path, *, n: int = 6, split: str = "train", short: int = 64, max_long: int = 96) -> str:
    """A real store built by :func:`prn_data.build.build`: ``n`` synthetic scenes resized to a ``short``-pixel
    shorter side (canvas 64×96 by default), simulated base network, σ = 2. Returns its path."""
    result = build(
        BuildConfig(
            dataset=f"synthetic:{n}",
            split=split,
            base="simulated",
            out=str(out),
            scheduler="threads",
            workers=1,
            policy=ResizePolicy(short=short, max_long=max_long),
            params=TargetParams(sigma=2.0),
        )
    )
    if not result.ok:
        raise AssertionError(result.failures)
    return str(out)


def run_prn(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the installed ``prn`` command; ``check`` asserts exit status 0 and shows stderr otherwise."""
    proc = subprocess.run(PRN + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"prn {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def build_sample_store(tmp_path_factory: TmpPathFactory) -> Path:
    """The shipped COCO sample (2 images, split val2017) with the simulated base network, both samples in one
    shard of 2, built by the real ``prn build`` once per test session (under its base temporary folder) and
    shared by the test files that read a built store."""
    root = tmp_path_factory.getbasetemp() / "coco-sample-store"
    store = root / "coco-val2017-simulated.zarr"
    if not (root / "built.ok").exists():
        if root.exists():
            shutil.rmtree(root)
        root.mkdir()
        run_prn(
            "build", f"coco:{COCO_SAMPLE}", "--split", "val2017", "--base", "simulated", "--out", store,
            "--scheduler", "threads", "--workers", "1", "--shard-size", "2",
        )
        (root / "built.ok").write_text("ok")
    return store


def repeat_images(coco: dict, copies: int) -> dict:
    """``coco`` (a COCO panoptic JSON's dict) with its annotations repeated ``copies`` times under distinct
    image ids ``<id>_<copy>`` (the same PNGs): many images to score from the two-image sample."""
    return dict(coco, annotations=[dict(a, image_id=f"{a['image_id']}_{c}") for c in range(copies)
                                   for a in coco["annotations"]])


def perturb(gt_json: dict, gt_dir: Path, out_dir: Path, seed: int) -> Path:
    """Write a perturbed copy of the COCO sample ground truth as predictions: segments shifted, eroded,
    relabelled, dropped, split, merged, plus spurious segments on VOID / crowd; fresh random ids.

    Writes ``out_dir/pred/<file_name>`` PNGs and returns ``out_dir/pred.json``."""
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in gt_json["categories"]]
    thing = {c["id"]: c["isthing"] for c in gt_json["categories"]}
    (out_dir / "pred").mkdir(parents=True)
    anns = []
    for ann in gt_json["annotations"]:
        gt = read_rgb_ids(gt_dir / ann["file_name"])
        pred = np.zeros_like(gt)
        infos = []
        used = set()

        def new_id() -> int:
            while True:
                i = int(rng.integers(1, 1 << 24))
                if i not in used:
                    used.add(i)
                    return i

        for s in ann["segments_info"]:
            m = gt == s["id"]
            op = rng.choice(["keep", "shift", "erode", "relabel", "drop", "split"], p=[0.3, 0.2, 0.2, 0.1, 0.1, 0.1])
            cat = s["category_id"]
            if op == "drop":
                continue
            if op == "shift":
                m = np.roll(m, tuple(rng.integers(-6, 7, 2)), axis=(0, 1))
            elif op == "erode":
                m = ndimage.binary_erosion(m, iterations=int(rng.integers(1, 4)))
            elif op == "relabel":
                same = [c for c in cats if thing[c] == thing[cat] and c != cat]
                cat = int(rng.choice(same))
            if op == "split" and m.sum() > 10:
                ys = np.nonzero(m.any(1))[0]
                cut = ys[len(ys) // 2]
                top = m.copy()
                top[cut:] = False
                for part in (top, m & ~top):
                    if part.any():
                        i = new_id()
                        pred[part] = i
                        infos.append({"id": i, "category_id": cat, "iscrowd": 0})
                continue
            if m.any():
                i = new_id()
                pred[m] = i
                infos.append({"id": i, "category_id": cat, "iscrowd": 0})
        # spurious segments: one on VOID (+ neighbours), one covering part of the first crowd region
        void = gt == 0
        if void.any():
            i = new_id()
            pred[ndimage.binary_dilation(void, iterations=2) & (pred == 0)] = i
            infos.append({"id": i, "category_id": int(rng.choice(cats)), "iscrowd": 0})
        crowd = [s for s in ann["segments_info"] if s["iscrowd"]]
        if crowd:
            m = (gt == crowd[0]["id"]) & (np.arange(gt.shape[1])[None, :] % 2 == 0)
            i = new_id()
            pred[m] = i
            infos.append({"id": i, "category_id": crowd[0]["category_id"], "iscrowd": 0})
        # a merge of two segments of one class (things become one blob)
        present = {x["id"]: x for x in infos if (pred == x["id"]).any()}
        infos = list(present.values())
        persons = [x for x in infos if x["category_id"] == 1]
        if len(persons) >= 2:
            a, b = persons[:2]
            pred[pred == b["id"]] = a["id"]
            infos.remove(b)
        name = ann["file_name"]
        write_rgb_ids(out_dir / "pred" / name, pred)
        anns.append({"image_id": ann["image_id"], "file_name": name, "segments_info": infos})
    path = out_dir / "pred.json"
    path.write_text(json.dumps({"annotations": anns, "categories": gt_json["categories"]}))
    return path


__all__ = ["CATS", "COCO_SAMPLE", "make_sample", "build_tiny_store", "run_prn", "build_sample_store", "perturb",
           "repeat_images"]
