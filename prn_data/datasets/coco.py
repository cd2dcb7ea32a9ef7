"""COCO panoptic reader (official layout or explicit paths); the paper's COCO setting (§4.2: 80 thing and
53 stuff classes).

Layout: ``annotations/panoptic_{split}.json``, ``annotations/panoptic_{split}/*.png`` (id = R + 256·G +
256²·B, 0 = VOID) and ``{split}/*.jpg``. Categories come from the JSON in its order (train ids 0..N-1).
Ids are normalised to ``category_id*1000 + k`` (README "Conventions"), the form PRN's targets and inputs are built
from (paper §3.2, §3.4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DatasetError, safe_join
from ..panoptic_io import read_image, read_rgb_ids
from ..records import Category, CategorySet, Sample
from .common import Dataset, RawSegment, abspath, check_same_size, load_json, normalise_panoptic, png_size


class JsonPanopticDataset(Dataset):
    """A COCO-panoptic-style JSON (``annotations`` with ``segments_info``) plus a folder of RGB-id PNGs.

    Subclasses decide how a segment's ``category_id`` maps to a :class:`Category` and where images live.
    Everything per sample is checked lazily, in :meth:`load`.
    """

    fmt = "coco-panoptic"

    def __init__(self, root: Path, split: str, *, json_path: Path, panoptic_dir: Path, images_dir: Path):
        self.root = Path(root)
        self.split = split
        self.json_path = Path(json_path)
        self.panoptic_dir = Path(panoptic_dir)
        self.images_dir = Path(images_dir)
        data = load_json(self.json_path)
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise DatasetError(self.json_path, "not a panoptic JSON: no 'annotations' list")
        self._data = data
        self._anns: list[dict] = data["annotations"]
        for i, ann in enumerate(self._anns):
            if not isinstance(ann, dict) or "image_id" not in ann or "file_name" not in ann:
                raise DatasetError(self.json_path, f"annotation #{i} lacks 'image_id' or 'file_name'")
            if not isinstance(ann.get("segments_info"), list):
                raise DatasetError(self.json_path, f"annotation of image {ann['image_id']} has no 'segments_info'")
        self._keys = [str(a["image_id"]) for a in self._anns]
        if len(set(self._keys)) != len(self._keys):
            raise DatasetError(self.json_path, "an image id has more than one annotation")
        images = data.get("images")
        if images is not None and not isinstance(images, list):
            raise DatasetError(self.json_path, f"'images' must be a list, got {type(images).__name__}")
        # image id → (position in images[], entry); an entry's fields are checked when its sample is read
        self._images = {str(im.get("id")): (i, im) for i, im in enumerate(images or []) if isinstance(im, dict)}
        self.categories = self._make_categories()

    # -- hooks ---------------------------------------------------------------------------------
    def _make_categories(self) -> CategorySet:
        cats = self._data.get("categories")
        if not isinstance(cats, list) or not cats:
            raise DatasetError(self.json_path, "no 'categories' list")
        try:
            return CategorySet(
                [
                    Category(
                        id=int(c["id"]),
                        name=str(c.get("name", c["id"])),
                        isthing=bool(c.get("isthing", 0)),
                        train_id=i,
                        color=tuple(int(v) for v in c.get("color", (0, 0, 0)))[:3],
                    )
                    for i, c in enumerate(cats)
                ]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(self.json_path, f"malformed 'categories' ({exc})") from None

    def _category(self, category_id: int, image_id: str) -> Category:
        if category_id not in self.categories:
            raise DatasetError(self.json_path, f"image {image_id}: unknown category id {category_id}")
        return self.categories.by_id(category_id)

    def _image_entry(self, index: int) -> dict | None:
        """Sample ``index``'s ``images[]`` entry, if the JSON has one."""
        found = self._images.get(self._keys[index])
        return None if found is None else found[1]

    def _declared_size(self, index: int) -> tuple[int, int] | None:
        """``(h, w)`` that ``images[]`` gives for sample ``index``, or None when it gives none; a height or
        width that is not a positive whole number raises :class:`DatasetError` naming the JSON and the
        field."""
        found = self._images.get(self._keys[index])
        if found is None or "height" not in found[1] or "width" not in found[1]:
            return None
        pos, entry = found
        size = []
        for key in ("height", "width"):
            v = entry[key]
            ok = isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()
            if not ok or v < 1:
                raise DatasetError(self.json_path, f"images[{pos}].{key} (image {self._keys[index]}) must be a "
                                                   f"positive integer, got {v!r}")
            size.append(int(v))
        return size[0], size[1]

    def _image_path(self, index: int) -> Path:
        ann = self._anns[index]
        entry = self._image_entry(index)
        if entry is not None and entry.get("file_name"):
            name = str(entry["file_name"])
        else:
            name = str(Path(str(ann["file_name"])).with_suffix(".jpg"))
        return safe_join(self.images_dir, name)

    # -- Dataset API ----------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def label_path(self, index: int) -> Path:
        """Absolute path of sample ``index``'s panoptic PNG (``file_name`` may not leave the PNG folder)."""
        return safe_join(self.panoptic_dir, str(self._anns[self._check_index(index)]["file_name"]))

    def image_path(self, index: int) -> Path:
        return self._image_path(self._check_index(index))

    def orig_size(self, index: int) -> tuple[int, int]:
        index = self._check_index(index)
        declared = self._declared_size(index)
        return declared if declared is not None else png_size(self.label_path(index))

    def load(self, index: int) -> Sample:
        index = self._check_index(index)
        ann = self._anns[index]
        image_id = self._keys[index]
        png = self.label_path(index)
        img_path = self._image_path(index)
        declared = self._declared_size(index)
        raw_segments = []
        for s in ann["segments_info"]:
            try:
                file_id, cid, crowd = int(s["id"]), int(s["category_id"]), bool(s.get("iscrowd", 0))
            except (KeyError, TypeError, ValueError):
                raise DatasetError(self.json_path, f"image {image_id}: malformed segment {s!r}") from None
            raw_segments.append(RawSegment(file_id, self._category(cid, image_id), crowd))
        raw = read_rgb_ids(png)
        image = read_image(img_path)
        check_same_size(image, raw, img_path, png)
        if declared is not None and declared != raw.shape:
            raise DatasetError(
                png,
                f"is {raw.shape[0]}x{raw.shape[1]} but {self.json_path.name} says image {image_id} is "
                f"{declared[0]}x{declared[1]}",
            )
        panoptic, segments, id_map = normalise_panoptic(
            raw, raw_segments, label_path=png, listing_path=self.json_path, void_ids=(0,)
        )
        return Sample(
            image=np.ascontiguousarray(image),
            panoptic=panoptic,
            segments=segments,
            image_id=image_id,
            file_name=img_path.name,
            orig_size=(int(raw.shape[0]), int(raw.shape[1])),
            gt_source={
                "format": self.fmt,
                "png": str(png),
                "json": abspath(self.json_path),
                "image": str(img_path),
                "image_id": image_id,
                "segment_ids": id_map,
            },
        )

    def _gt_description(self) -> dict:
        return {
            "format": self.fmt,
            "json": abspath(self.json_path),
            "png_dir": abspath(self.panoptic_dir),
            "images_dir": abspath(self.images_dir),
        }


class CocoPanopticDataset(JsonPanopticDataset):
    """COCO panoptic: categories from the JSON (133 for COCO), image id as a string."""

    name = "coco"

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        images_dir: str | Path | None = None,
        panoptic_dir: str | Path | None = None,
        json_path: str | Path | None = None,
    ):
        root = Path(root)
        self._explicit = {
            k: None if v is None else abspath(v)
            for k, v in (("images_dir", images_dir), ("panoptic_dir", panoptic_dir), ("json_path", json_path))
        }
        json_p = Path(json_path) if json_path else root / "annotations" / f"panoptic_{split}.json"
        pan_p = Path(panoptic_dir) if panoptic_dir else json_p.with_suffix("")
        img_p = Path(images_dir) if images_dir else root / split
        if not json_p.is_file():
            raise DatasetError(json_p, f"COCO panoptic JSON for split {split!r} is missing")
        super().__init__(root, split, json_path=json_p, panoptic_dir=pan_p, images_dir=img_p)

    def describe(self) -> dict:
        options = {k: v for k, v in self._explicit.items() if v is not None}
        return {
            "name": self.name,
            "spec": f"coco:{abspath(self.root)}",
            "split": self.split,
            "options": options,
            "root": abspath(self.root),
            "num_images": len(self),
            "gt": self._gt_description(),
        }
