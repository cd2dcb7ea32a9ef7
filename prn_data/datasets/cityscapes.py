"""Cityscapes reader (the paper's §4.2 setting: 8 thing and 11 stuff classes), gtFine layout:
``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with ``gtFine/{split}/{city}/*_gtFine_instanceIds.png``.

Labels come from ``cityscapesscripts.helpers.labels``: the 19 evaluation classes (category id = label id,
train ids 0..18 in train-id order, 8 things). In ``instanceIds`` a thing pixel is labelId·1000 + instance,
and a thing pixel below 1000 (just its labelId) belongs to a crowd region: one crowd segment per class.
Every class ignored in evaluation is VOID. Segment order: by label id, instances by their file value, each
class's crowd region last, so an instance labelId·1000 + j becomes labelId·1000 + j + 1 (the ids of the
README's "Conventions").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS

from ..errors import DatasetError
from ..panoptic_io import read_image
from ..records import Category, CategorySet, Sample
from .common import (Dataset, RawSegment, abspath, check_same_size, normalise_panoptic, png_size, present_values,
                     read_label_png)

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_instanceIds.png"


def cityscapes_categories() -> CategorySet:
    """The 19 Cityscapes evaluation classes: ``id`` = label id, ``train_id`` 0..18, colors of the devkit."""
    evals = [lab for lab in CITYSCAPES_LABELS if not lab.ignoreInEval and 0 <= lab.trainId < 255]
    evals.sort(key=lambda lab: lab.trainId)
    return CategorySet(
        [
            Category(lab.id, lab.name, isthing=bool(lab.hasInstances), train_id=lab.trainId, color=tuple(lab.color))
            for lab in evals
        ]
    )


def _void_label_ids() -> set[int]:
    return {lab.id for lab in CITYSCAPES_LABELS if lab.ignoreInEval and lab.id >= 0}


class CityscapesDataset(Dataset):
    """Cityscapes gtFine layout. Image ids are the file stems, e.g. ``frankfurt_000000_000294``, sorted by
    city then name."""

    name = "cityscapes"
    fmt = "cityscapes-gtfine"

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        self.split = split
        self.images_dir = self.root / "leftImg8bit" / split
        self.labels_dir = self.root / "gtFine" / split
        if not self.images_dir.is_dir():
            raise DatasetError(self.images_dir, f"Cityscapes image folder for split {split!r} is missing")
        files = sorted(self.images_dir.glob(f"*/*{IMAGE_SUFFIX}"), key=lambda p: (p.parent.name, p.name))
        self._cities = [p.parent.name for p in files]
        self._keys = [p.name[: -len(IMAGE_SUFFIX)] for p in files]
        self.categories = cityscapes_categories()
        self._void = _void_label_ids()

    def keys(self) -> list[str]:
        return list(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def image_path(self, index: int) -> Path:
        index = self._check_index(index)
        return self.images_dir / self._cities[index] / f"{self._keys[index]}{IMAGE_SUFFIX}"

    def label_path(self, index: int) -> Path:
        index = self._check_index(index)
        return self.labels_dir / self._cities[index] / f"{self._keys[index]}{LABEL_SUFFIX}"

    def orig_size(self, index: int) -> tuple[int, int]:
        return png_size(self.image_path(index))

    def _raw_segments(self, values: list[int], png: Path) -> tuple[list[RawSegment], list[int]]:
        """Segments (in the order of the module docstring) and VOID values among ``values``."""
        by_label = {c.id: c for c in self.categories}
        segs: list[tuple[tuple[int, int, int], RawSegment]] = []
        void = []
        for v in values:
            label = v // 1000 if v >= 1000 else v
            if label in self._void:
                void.append(v)
                continue
            cat = by_label.get(label)
            if cat is None:
                raise DatasetError(png, f"value {v} is not a Cityscapes label id (label {label})")
            if not cat.isthing and v >= 1000:
                raise DatasetError(png, f"value {v} gives an instance to stuff class {cat.name}")
            crowd = cat.isthing and v < 1000
            segs.append(((label, int(crowd), v), RawSegment(v, cat, crowd)))
        segs.sort(key=lambda t: t[0])
        return [s for _, s in segs], void

    def load(self, index: int) -> Sample:
        index = self._check_index(index)
        img_path, png = self.image_path(index), self.label_path(index)
        raw = read_label_png(png)
        image = read_image(img_path)
        check_same_size(image, raw, img_path, png)
        values = present_values(raw)
        raw_segments, void = self._raw_segments(values, png)
        panoptic, segments, id_map = normalise_panoptic(
            raw, raw_segments, label_path=png, listing_path=png, void_ids=void
        )
        gt = {
            "format": self.fmt,
            "png": abspath(png),
            "image": abspath(img_path),
            "image_id": self._keys[index],
            "segment_ids": id_map,
        }
        label_ids = png.with_name(png.name.replace("_instanceIds.png", "_labelIds.png"))
        if label_ids.is_file():
            gt["label_ids"] = abspath(label_ids)
        return Sample(
            image=np.ascontiguousarray(image),
            panoptic=panoptic,
            segments=segments,
            image_id=self._keys[index],
            file_name=img_path.name,
            orig_size=(int(raw.shape[0]), int(raw.shape[1])),
            gt_source=gt,
        )

    def describe(self) -> dict:
        return {
            "name": self.name,
            "spec": f"cityscapes:{abspath(self.root)}",
            "split": self.split,
            "options": {"format": "gtfine"},
            "root": abspath(self.root),
            "num_images": len(self),
            "gt": {
                "format": self.fmt,
                "images_dir": abspath(self.images_dir),
                "labels_dir": abspath(self.labels_dir),
                "label_suffix": LABEL_SUFFIX,
            },
        }
