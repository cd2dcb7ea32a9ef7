"""Cityscapes in panoptic format: the JSON + PNG folder that cityscapesscripts' ``createPanopticImgs`` writes.

Files: ``gtFine/cityscapes_panoptic_{split}.json`` (or ``…_{split}_trainId.json`` with ``--use-train-id``)
beside the PNG folder of the same name; segment id = labelId·1000 + k for instances, labelId for stuff and
crowd, 0 = VOID. ``category_id`` is either the label id or, with ``--use-train-id``, the train id: detected
from the segment ids (an id names its label) unless ``use_train_id`` is given. The JSON may hold only
``annotations`` (deeplab2's test data does); categories are always the 19 evaluation classes with
category id = label id, so both Cityscapes readers share one category set. Images are looked up as
``leftImg8bit/{split}/{city}/{image_id}_leftImg8bit.png``, then ``leftImg8bit/{image_id}_leftImg8bit.png``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError, safe_join
from ..records import Category, CategorySet
from .cityscapes import cityscapes_categories
from .coco import JsonPanopticDataset
from .common import abspath


def find_panoptic_json(root: Path, split: str) -> Path | None:
    """The createPanopticImgs JSON for ``split`` under ``root`` (or ``root/gtFine``), or None."""
    for base in (root / "gtFine", root):
        for name in (f"cityscapes_panoptic_{split}.json", f"cityscapes_panoptic_{split}_trainId.json"):
            if (base / name).is_file():
                return base / name
    return None


class CityscapesPanopticDataset(JsonPanopticDataset):
    """Cityscapes panoptic format reader; ``name`` is ``"cityscapes"``, image ids are strings."""

    name = "cityscapes"
    fmt = "cityscapes-panoptic"

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        json_path: str | Path | None = None,
        panoptic_dir: str | Path | None = None,
        images_dir: str | Path | None = None,
        use_train_id: bool | None = None,
    ):
        root = Path(root)
        self._explicit = {
            k: None if v is None else abspath(v)
            for k, v in (("images_dir", images_dir), ("panoptic_dir", panoptic_dir), ("json_path", json_path))
        }
        json_p = Path(json_path) if json_path else find_panoptic_json(root, split)
        if json_p is None or not json_p.is_file():
            raise DatasetError(
                json_p or root / "gtFine" / f"cityscapes_panoptic_{split}.json",
                f"Cityscapes panoptic JSON for split {split!r} is missing",
            )
        pan_p = Path(panoptic_dir) if panoptic_dir else json_p.with_suffix("")
        img_p = Path(images_dir) if images_dir else root / "leftImg8bit"
        self._use_train_id_option = use_train_id
        super().__init__(root, split, json_path=json_p, panoptic_dir=pan_p, images_dir=img_p)
        self.use_train_id = self._detect_train_id() if use_train_id is None else bool(use_train_id)
        key = "train_id" if self.use_train_id else "id"
        self._cat_lookup = {getattr(c, key): c for c in self.categories}

    def _make_categories(self) -> CategorySet:
        return cityscapes_categories()

    def _detect_train_id(self) -> bool:
        """True when the JSON's ``category_id`` values are train ids: every segment id encodes its label id
        (id // 1000, or the id itself below 1000), so count which reading agrees with more segments."""
        by_label = {c.id: c for c in self.categories}
        as_label = as_train = 0
        for ann in self._anns:
            for s in ann["segments_info"]:
                try:
                    sid, cid = int(s["id"]), int(s["category_id"])
                except (KeyError, TypeError, ValueError):
                    continue
                cat = by_label.get(sid // 1000 if sid >= 1000 else sid)
                if cat is None:
                    continue
                as_label += cid == cat.id
                as_train += cid == cat.train_id
        if as_label == as_train == 0:
            # No segment names its label: fall back on the file name createPanopticImgs gives.
            return self.json_path.stem.endswith("_trainId")
        return as_train > as_label

    def _category(self, category_id: int, image_id: str) -> Category:
        cat = self._cat_lookup.get(category_id)
        if cat is None:
            kind = "train" if self.use_train_id else "label"
            raise DatasetError(
                self.json_path, f"image {image_id}: unknown category id {category_id} (read as a {kind} id)"
            )
        return cat

    def _image_path(self, index: int) -> Path:
        image_id = self._keys[index]
        name = f"{image_id}_leftImg8bit.png"
        city = image_id.split("_")[0]
        candidates = [f"{self.split}/{city}/{name}", f"{city}/{name}", name]
        for rel in candidates:
            p = safe_join(self.images_dir, rel)
            if p.is_file():
                return p
        return safe_join(self.images_dir, candidates[0])  # missing: read_image names it

    def describe(self) -> dict:
        options = {k: v for k, v in self._explicit.items() if v is not None}
        options["format"] = "panoptic"
        if self._use_train_id_option is not None:
            options["use_train_id"] = self._use_train_id_option
        return {
            "name": self.name,
            "spec": f"cityscapes:{abspath(self.root)}",
            "split": self.split,
            "options": options,
            "root": abspath(self.root),
            "num_images": len(self),
            "use_train_id": self.use_train_id,
            "gt": self._gt_description(),
        }
