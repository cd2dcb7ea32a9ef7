"""The in-memory record of one sample and of a dataset's categories.

Conventions (README "Conventions"): coordinates (y, x); panoptic id maps are ``category_id * label_divisor + k``
(k ≥ 1 per-class counter for things, crowd regions included; 0 for stuff), VOID = -1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

LABEL_DIVISOR = 1000
VOID = -1
IGNORE_LABEL = 255


class IdAllocator:
    """The one place panoptic ids are made: ``category_id * divisor + k``.

    Things get k = 1, 2, … per category in the order they are asked for (crowd regions included); stuff
    gets k = 0. ``divisor`` is the store's ``label_divisor`` (default :data:`LABEL_DIVISOR`). A category
    with ``divisor`` or more things raises ``ValueError`` (its ids would collide with the next category's).
    """

    def __init__(self, divisor: int = LABEL_DIVISOR):
        if divisor < 1:
            raise ValueError(f"label divisor must be >= 1, got {divisor!r}")
        self.divisor = int(divisor)
        self._counters: dict[int, int] = {}

    def thing(self, category_id: int) -> int:
        """The next thing id of ``category_id``."""
        k = self._counters.get(category_id, 0) + 1
        if k >= self.divisor:
            raise ValueError(f"more than {self.divisor - 1} segments of category {category_id}")
        self._counters[category_id] = k
        return category_id * self.divisor + k

    def stuff(self, category_id: int) -> int:
        """The (only) stuff id of ``category_id``."""
        return category_id * self.divisor

    def next(self, category_id: int, isthing: bool) -> int:
        """:meth:`thing` or :meth:`stuff` by ``isthing``."""
        return self.thing(category_id) if isthing else self.stuff(category_id)


@dataclass(frozen=True)
class Category:
    """One dataset category. ``id`` is the dataset's own id (COCO 1..200, Cityscapes label id);
    ``train_id`` is its contiguous index 0..N_cl-1 in the dataset's order."""

    id: int
    name: str
    isthing: bool
    train_id: int
    color: tuple[int, int, int] = (0, 0, 0)

    def to_json(self) -> dict:
        d = asdict(self)
        d["isthing"] = int(self.isthing)
        d["color"] = list(self.color)
        return d

    @staticmethod
    def from_json(d: dict) -> "Category":
        return Category(
            id=int(d["id"]),
            name=str(d["name"]),
            isthing=bool(d["isthing"]),
            train_id=int(d["train_id"]),
            color=tuple(int(c) for c in d.get("color", (0, 0, 0))),
        )


@dataclass
class Segment:
    """One panoptic segment. ``id`` is its value in the sample's panoptic id map.

    ``bbox`` is COCO's ``[x, y, w, h]`` of the tight pixel box; ``area`` in pixels; ``score`` is set only
    for a base network's prediction that carries a confidence.
    """

    id: int
    category_id: int
    train_id: int
    isthing: bool
    iscrowd: bool = False
    area: int = 0
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)
    score: float | None = None

    def to_json(self) -> dict:
        d = {
            "id": int(self.id),
            "category_id": int(self.category_id),
            "iscrowd": int(self.iscrowd),
            "isthing": int(self.isthing),
            "area": int(self.area),
            "bbox": [int(v) for v in self.bbox],
        }
        if self.score is not None:
            d["score"] = float(self.score)
        return d

    @staticmethod
    def from_json(d: dict, categories: "CategorySet") -> "Segment":
        cat = categories.by_id(int(d["category_id"]))
        return Segment(
            id=int(d["id"]),
            category_id=cat.id,
            train_id=cat.train_id,
            isthing=cat.isthing,
            iscrowd=bool(d.get("iscrowd", 0)),
            area=int(d.get("area", 0)),
            bbox=tuple(int(v) for v in d.get("bbox", (0, 0, 0, 0))),
            score=None if d.get("score") is None else float(d["score"]),
        )


class CategorySet:
    """The ordered categories of a dataset, with lookups by dataset id and by train id."""

    def __init__(self, categories: Sequence[Category]):
        self.categories = list(categories)
        self._by_id = {c.id: c for c in self.categories}
        if [c.train_id for c in self.categories] != list(range(len(self.categories))):
            raise ValueError("train ids must be 0..N-1 in order")
        if len(self._by_id) != len(self.categories):
            raise ValueError("category ids must be unique")

    def __len__(self) -> int:
        return len(self.categories)

    def __iter__(self):
        return iter(self.categories)

    def __getitem__(self, train_id: int) -> Category:
        return self.categories[train_id]

    def __contains__(self, category_id: int) -> bool:
        return category_id in self._by_id

    def by_id(self, category_id: int) -> Category:
        try:
            return self._by_id[category_id]
        except KeyError:
            raise KeyError(f"unknown category id {category_id}") from None

    @property
    def thing_train_ids(self) -> list[int]:
        return [c.train_id for c in self.categories if c.isthing]

    def id_to_train_lut(self, size: int | None = None) -> np.ndarray:
        """``(max_id + 1,) uint8`` lookup from dataset category id to train id, 255 for unknown ids."""
        size = size or (max(self._by_id) + 1)
        lut = np.full(size, IGNORE_LABEL, dtype=np.uint8)
        for c in self.categories:
            lut[c.id] = c.train_id
        return lut

    def to_json(self) -> list[dict]:
        return [c.to_json() for c in self.categories]

    @staticmethod
    def from_json(items: list[dict]) -> "CategorySet":
        return CategorySet([Category.from_json(d) for d in items])


@dataclass
class Sample:
    """One dataset sample, at whatever resolution its producer gives (original, or resized by
    :func:`prn_data.resize.resize_sample`).

    - ``image``: ``(H, W, 3) uint8`` RGB.
    - ``panoptic``: ``(H, W) int32``, ids ``category_id * 1000 + k``, VOID = -1.
    - ``segments``: one :class:`Segment` per id present in ``panoptic`` (VOID excluded).
    - ``orig_size``: ``(h, w)`` of the source image before any resizing.
    - ``gt_source``: where the dataset's own ground truth for this sample lives (for evaluation at the
      original size), e.g. ``{"png": ..., "json": ...}``; free-form, recorded in the store.
    """

    image: np.ndarray
    panoptic: np.ndarray
    segments: list[Segment]
    image_id: str
    file_name: str
    orig_size: tuple[int, int]
    gt_source: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.panoptic.shape[0]), int(self.panoptic.shape[1])
