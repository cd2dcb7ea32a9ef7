"""A seeded generator of small panoptic scenes, written to disk as a COCO panoptic dataset.

Each scene has textured stuff regions (4 stuff classes, wavy borders with thin VOID seams between regions)
and thing instances of 3 shape classes (ellipse, rectangle, triangle) painted back to front, so later
instances occlude earlier ones; some are placed edge to edge (touching) and some scenes hold a crowd region
(a cluster of small shapes of one class, one ``iscrowd`` segment). A scene depends only on
``(seed, split, index)``, so the splits differ (:data:`SPLITS`: ``train`` to learn from, ``val`` for any
tuning, ``test`` only for reported tables; any other name is a split of its own too), ``synthetic:10`` is
the first 10 images of ``synthetic:20``, and a rebuild is byte-identical. Images are written as PNG (lossless), so a read-back
equals what was generated. The files follow the official layout and are read by the COCO reader.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import DatasetError
from ..panoptic_io import id2rgb, segment_stats
from ..records import VOID, Category, CategorySet, IdAllocator, Segment
from .coco import CocoPanopticDataset
from .common import abspath

FORMAT_VERSION = 1
# The three roles (README "The demo"): learn on train, tune on val, report on test.
SPLITS = ("train", "val", "test")
DEFAULT_MIN_SIZE = (160, 224)
DEFAULT_MAX_SIZE = (256, 320)

# (id, name, isthing, color). Stuff ids are not contiguous so the id → train id mapping is exercised.
CATEGORY_TABLE = [
    (1, "ellipse", True, (220, 60, 60)),
    (2, "rectangle", True, (60, 120, 230)),
    (3, "triangle", True, (240, 200, 40)),
    (11, "stripes", False, (110, 150, 90)),
    (12, "checkers", False, (150, 110, 170)),
    (13, "speckle", False, (120, 120, 120)),
    (17, "waves", False, (80, 170, 190)),
]
THING_IDS = [c[0] for c in CATEGORY_TABLE if c[2]]
STUFF_IDS = [c[0] for c in CATEGORY_TABLE if not c[2]]
COLORS = {c[0]: np.array(c[3], np.float32) for c in CATEGORY_TABLE}


def synthetic_categories() -> CategorySet:
    return CategorySet(
        [Category(id=i, name=n, isthing=t, train_id=k, color=c) for k, (i, n, t, c) in enumerate(CATEGORY_TABLE)]
    )


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator parameters; sizes are ``(h, w)`` bounds (inclusive) for each scene's random size."""

    seed: int = 0
    min_size: tuple[int, int] = DEFAULT_MIN_SIZE
    max_size: tuple[int, int] = DEFAULT_MAX_SIZE
    max_instances: int = 8

    def __post_init__(self) -> None:
        lo, hi = self.min_size, self.max_size
        if len(lo) != 2 or len(hi) != 2 or min(lo) < 16 or lo[0] > hi[0] or lo[1] > hi[1]:
            raise DatasetError(None, f"synthetic sizes need 16 <= min_size <= max_size (h, w); got {lo}, {hi}")
        if self.max_instances < 3:
            raise DatasetError(None, f"synthetic max_instances must be at least 3; got {self.max_instances}")

    def to_json(self) -> dict:
        return {
            "seed": int(self.seed),
            "min_size": [int(v) for v in self.min_size],
            "max_size": [int(v) for v in self.max_size],
            "max_instances": int(self.max_instances),
        }


@dataclass
class Scene:
    """One generated scene: ``image (H, W, 3) uint8``, ``panoptic (H, W) int32`` (normalised ids, VOID -1),
    ``segments`` in file order (things in painting order, crowd first, then stuff)."""

    image_id: str
    image: np.ndarray
    panoptic: np.ndarray
    segments: list[Segment]


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    # crc32 rather than hash(): Python salts str hashes per process.
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(split.encode()), int(index)]))


def image_id_for(split: str, index: int) -> str:
    return f"{split}_{index:06d}"


# -- shapes ------------------------------------------------------------------------------------------
def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, a: float, b: float, theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _rectangle(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, a: float, b: float, theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (np.abs(u) <= a) & (np.abs(v) <= b)


def _triangle(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, a: float, b: float, theta: float) -> np.ndarray:
    angles = theta + np.array([0.0, 2.0944, 4.1888])
    py = cy + np.array([a, b, a]) * np.sin(angles)
    px = cx + np.array([a, b, a]) * np.cos(angles)
    inside = np.ones(yy.shape, dtype=bool)
    # Inside = same side of all three edges as the centroid.
    gy, gx = py.mean(), px.mean()
    for i in range(3):
        j = (i + 1) % 3
        edge = lambda y, x: (px[j] - px[i]) * (y - py[i]) - (py[j] - py[i]) * (x - px[i])  # noqa: E731
        inside &= edge(yy, xx) * np.sign(edge(gy, gx)) >= 0
    return inside


SHAPES: dict[int, Callable[..., np.ndarray]] = {1: _ellipse, 2: _rectangle, 3: _triangle}


# -- textures ----------------------------------------------------------------------------------------
def _stuff_texture(cid: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(H, W, 3) float`` texture of stuff class ``cid`` (each class has its own pattern)."""
    base = COLORS[cid] + rng.uniform(-20, 20, 3)
    if cid == 11:  # stripes at a random angle
        t = rng.uniform(0, np.pi)
        pat = np.sin((xx * np.cos(t) + yy * np.sin(t)) * 2 * np.pi / rng.uniform(6, 14))
    elif cid == 12:  # checkers
        s = int(rng.integers(6, 14))
        pat = (((yy // s) + (xx // s)) % 2) * 2.0 - 1.0
    elif cid == 13:  # speckle
        pat = rng.standard_normal(yy.shape).astype(np.float32)
    else:  # waves
        pat = np.sin(xx / rng.uniform(5, 9)) * np.sin(yy / rng.uniform(5, 9))
    return base[None, None, :] + 30.0 * pat[..., None]


def make_scene(split: str, index: int, config: SyntheticConfig = SyntheticConfig()) -> Scene:
    """Generate scene ``index`` of ``split`` (pure function of ``(config, split, index)``)."""
    rng = scene_rng(config.seed, split, index)
    h = int(rng.integers(config.min_size[0], config.max_size[0] + 1))
    w = int(rng.integers(config.min_size[1], config.max_size[1] + 1))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # Stuff: a wavy Voronoi partition; cells of one class form one stuff segment.
    n_cells = int(rng.integers(2, 5))
    cy = rng.uniform(0, h, n_cells)[:, None, None]
    cx = rng.uniform(0, w, n_cells)[:, None, None]
    wy = yy + 6.0 * np.sin(xx / rng.uniform(10, 25) + rng.uniform(0, 6.3))
    dist = np.sqrt((wy[None] - cy) ** 2 + (xx[None] - cx) ** 2)
    cell = dist.argmin(0)
    part = np.sort(dist, axis=0)
    cell_class = np.asarray(STUFF_IDS)[rng.integers(0, len(STUFF_IDS), n_cells)]
    stuff_cls = cell_class[cell]
    # Thin seams between cells of different classes are unlabeled, as in COCO.
    seam = (part[1] - part[0] < 1.2) if n_cells > 1 else np.zeros((h, w), bool)
    second = np.argsort(dist, axis=0)[1] if n_cells > 1 else cell
    seam &= cell_class[second] != stuff_cls

    image = np.zeros((h, w, 3), np.float32)
    for cid in STUFF_IDS:
        m = stuff_cls == cid
        if m.any():
            image[m] = _stuff_texture(cid, yy, xx, rng)[m]
    owner = np.full((h, w), -1, np.int64)  # index into `things`, -1 = stuff
    things: list[tuple[int, bool]] = []  # (category id, iscrowd) in painting order

    def paint(mask: np.ndarray, cid: int, crowd: bool) -> None:
        color = COLORS[cid] + rng.uniform(-40, 40, 3)
        shade = 1.0 + 0.25 * ((yy - h / 2) / h)  # vertical light gradient gives each instance some texture
        owner[mask] = len(things)
        image[mask] = (color[None, None, :] * shade[..., None])[mask]
        things.append((cid, crowd))

    def random_shape(cy_: float, cx_: float, scale: float) -> tuple[int, np.ndarray]:
        cid = int(rng.choice(THING_IDS))
        a = scale * rng.uniform(0.6, 1.0)
        b = scale * rng.uniform(0.4, 1.0)
        return cid, SHAPES[cid](yy, xx, cy_, cx_, a, b, rng.uniform(0, np.pi))

    # A crowd region (behind every instance): several small shapes of one class, one segment.
    if rng.random() < 0.5:
        cid = int(rng.choice(THING_IDS))
        ccy, ccx = rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.2 * w, 0.8 * w)
        mask = np.zeros((h, w), bool)
        for _ in range(int(rng.integers(4, 8))):
            s = rng.uniform(5, 10)
            oy, ox, theta = rng.uniform(-18, 18), rng.uniform(-18, 18), rng.uniform(0, np.pi)
            mask |= SHAPES[cid](yy, xx, ccy + oy, ccx + ox, s, s * 0.7, theta)
        paint(mask, cid, True)

    n_inst = int(rng.integers(3, config.max_instances + 1))
    centers: list[tuple[float, float, float]] = []
    while n_inst > 0:
        scale = rng.uniform(0.08, 0.2) * min(h, w)
        r = rng.random()
        if r < 0.25 and n_inst >= 2:
            # Two axis-aligned rectangles sharing an edge: touching, not overlapping.
            y0 = int(rng.uniform(0, h - 2 * scale))
            x0 = int(rng.uniform(0, w - 3 * scale))
            hh, w1, w2 = int(scale * 1.5), int(scale), int(scale * 1.2)
            for xa, xb in ((x0, x0 + w1), (x0 + w1, x0 + w1 + w2)):
                m = np.zeros((h, w), bool)
                m[y0 : y0 + hh, xa:xb] = True
                paint(m, 2, False)
            n_inst -= 2
            continue
        if r < 0.55 and centers:
            # Overlap a previous instance so this one occludes part of it.
            py, px, ps = centers[int(rng.integers(len(centers)))]
            cy_, cx_ = py + rng.uniform(-1, 1) * ps, px + rng.uniform(-1, 1) * ps
        else:
            cy_, cx_ = rng.uniform(0, h), rng.uniform(0, w)
        cid, m = random_shape(cy_, cx_, scale)
        if m.any():
            paint(m, cid, False)
            centers.append((cy_, cx_, scale))
        n_inst -= 1

    # Per-pixel noise so images are not piecewise constant; clip into uint8.
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    image_u8 = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    # Ids: things that survived occlusion, in painting order, k per class; then stuff by class.
    panoptic = np.full((h, w), VOID, np.int32)
    areas = np.bincount(owner[owner >= 0], minlength=len(things))
    seg_list: list[tuple[int, int, bool]] = []  # (id, category id, crowd)
    ids = IdAllocator()
    lut = np.full(len(things) + 1, VOID, np.int64)
    for t, (cid, crowd) in enumerate(things):
        if areas[t] == 0:
            continue  # fully occluded: no segment
        lut[t] = ids.thing(cid)
        seg_list.append((int(lut[t]), cid, crowd))
    thing_px = owner >= 0
    panoptic[thing_px] = lut[owner[thing_px]]
    stuff_px = ~thing_px & ~seam
    stuff_lut = np.zeros(max(STUFF_IDS) + 1, np.int64)
    for cid in STUFF_IDS:
        stuff_lut[cid] = ids.stuff(cid)
    panoptic[stuff_px] = stuff_lut[stuff_cls[stuff_px]]
    for cid in STUFF_IDS:
        if (panoptic == stuff_lut[cid]).any():
            seg_list.append((int(stuff_lut[cid]), cid, False))

    cats = synthetic_categories()
    stats = segment_stats(panoptic)
    segments = []
    for sid, cid, crowd in seg_list:
        c = cats.by_id(cid)
        area, bbox = stats[sid]
        segments.append(Segment(sid, cid, c.train_id, c.isthing, crowd, area, bbox))
    return Scene(image_id_for(split, index), image_u8, panoptic, segments)


# -- writing -----------------------------------------------------------------------------------------
def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    # Write then rename, so a concurrent reader never sees a half-written file.
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _save_png(path: Path, array: np.ndarray) -> None:
    _atomic_write(path, lambda p: Image.fromarray(array).save(p, format="PNG"))


def marker_path(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"synthetic_{split}.json"


def is_complete(root: str | Path, split: str, num: int, config: SyntheticConfig) -> bool:
    """True when ``root`` holds a finished generation of exactly these parameters."""
    p = marker_path(Path(root), split)
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError):
        return False
    return meta == _marker(split, num, config)


def _marker(split: str, num: int, config: SyntheticConfig) -> dict:
    return {"version": FORMAT_VERSION, "split": split, "num": int(num), **config.to_json()}


def write_synthetic(
    root: str | Path,
    split: str,
    num: int,
    config: SyntheticConfig = SyntheticConfig(),
    *,
    on_image: Callable[[int], None] | None = None,
) -> Path:
    """Write ``num`` scenes of ``split`` under ``root`` in the official COCO panoptic layout:
    ``{split}/<id>.png`` images, ``annotations/panoptic_{split}/<id>.png`` id maps, the JSON, and last a
    completion marker ``annotations/synthetic_{split}.json``. Returns the JSON path."""
    if num < 1:
        raise ValueError("num must be at least 1")
    root = Path(root)
    img_dir = root / split
    pan_dir = root / "annotations" / f"panoptic_{split}"
    img_dir.mkdir(parents=True, exist_ok=True)
    pan_dir.mkdir(parents=True, exist_ok=True)
    marker = marker_path(root, split)
    marker.unlink(missing_ok=True)
    images, annotations = [], []
    for i in range(num):
        scene = make_scene(split, i, config)
        name = f"{scene.image_id}.png"
        _save_png(img_dir / name, scene.image)
        _save_png(pan_dir / name, id2rgb(np.where(scene.panoptic < 0, 0, scene.panoptic)))
        h, w = scene.panoptic.shape
        images.append({"id": scene.image_id, "file_name": name, "height": h, "width": w})
        annotations.append(
            {
                "image_id": scene.image_id,
                "file_name": name,
                "segments_info": [
                    {"id": g.id, "category_id": g.category_id, "iscrowd": int(g.iscrowd), "area": g.area,
                     "bbox": list(g.bbox)}
                    for g in scene.segments
                ],
            }
        )
        if on_image is not None:
            on_image(i)
    data = {
        "info": {
            "description": f"prn synthetic panoptic scenes, split {split}",
            "version": FORMAT_VERSION,
            **config.to_json(),
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i, "name": n, "isthing": int(t), "color": list(c), "supercategory": "shape" if t else "texture"}
            for i, n, t, c in CATEGORY_TABLE
        ],
    }
    json_path = root / "annotations" / f"panoptic_{split}.json"
    _atomic_write(json_path, lambda p: p.write_text(json.dumps(data)))
    _atomic_write(marker, lambda p: p.write_text(json.dumps(_marker(split, num, config))))
    return json_path


def default_root(split: str, num: int, seed: int = 0) -> Path:
    """``cache/synthetic/<split>-<num>`` (``-seed<K>`` appended for a non-default seed), relative to the
    working directory."""
    suffix = f"-seed{seed}" if seed else ""
    return Path("cache") / "synthetic" / f"{split}-{num}{suffix}"


def regenerated_root(split: str, num: int, config: SyntheticConfig) -> Path:
    """``cache/regenerated/synthetic-<split>-<num>-<digest of the parameters>``, relative to the working
    directory: where a synthetic dataset recorded in someone else's store is generated again, since the
    root that store names is never written to (README "Sharing stores")."""
    digest = hashlib.sha256(json.dumps(_marker(split, num, config), sort_keys=True).encode()).hexdigest()[:12]
    return Path("cache") / "regenerated" / f"synthetic-{split}-{int(num)}-{digest}"


def ensure_synthetic(root: str | Path, split: str, num: int, config: SyntheticConfig = SyntheticConfig()) -> Path:
    """Generate into ``root`` unless a complete generation with the same parameters is already there."""
    root = Path(root)
    if not is_complete(root, split, num, config):
        write_synthetic(root, split, num, config)
    return root


class SyntheticDataset(CocoPanopticDataset):
    """``synthetic:N``: generates into ``root`` if needed, then reads the files back with the COCO reader."""

    name = "synthetic"
    fmt = "coco-panoptic"

    def __init__(self, root: str | Path, split: str, num: int, config: SyntheticConfig = SyntheticConfig()):
        ensure_synthetic(root, split, num, config)
        super().__init__(root, split)
        self.num = int(num)
        self.config = config

    def describe(self) -> dict:
        options: dict = {"root": abspath(self.root), **self.config.to_json()}
        return {
            "name": self.name,
            "spec": f"synthetic:{self.num}",
            "split": self.split,
            "options": options,
            "root": abspath(self.root),
            "num_images": len(self),
            "gt": self._gt_description(),
        }
