"""Helpers shared by the dataset readers: the ``Dataset`` base class, id normalisation and file checks.

Every reader turns its file ids into the in-memory convention of the README's "Conventions" (paper §3.2
encodes instances from these ids): ``category_id * 1000 + k`` with k ≥ 1 counting the thing segments of each class in
segment order (crowd regions included), k = 0 for stuff, VOID = -1.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import DatasetError
from .. import panoptic_io
from ..panoptic_io import image_size
from ..records import VOID, Category, CategorySet, IdAllocator, Sample, Segment


@dataclass(frozen=True)
class RawSegment:
    """One segment as a dataset's files give it: its value in the label file, category and crowd flag."""

    file_id: int
    category: Category
    iscrowd: bool


class Dataset:
    """Base of every reader. Subclasses set ``name``, ``split``, ``root``, ``categories`` and implement
    ``keys``, ``load``, ``orig_size`` and ``describe``."""

    name: str
    split: str
    root: Path
    categories: CategorySet

    def __len__(self) -> int:
        return len(self.keys())

    def keys(self) -> list[str]:
        """Image ids (strings) in the dataset's stable order; ``load(i)`` reads ``keys()[i]``."""
        raise NotImplementedError

    def load(self, index: int) -> Sample:
        """The sample at ``index`` at its original resolution; bad files raise :class:`DatasetError`."""
        raise NotImplementedError

    def orig_size(self, index: int) -> tuple[int, int]:
        """``(h, w)`` of sample ``index`` without decoding pixels."""
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-able description; ``open_dataset(d["spec"], d["split"], **d["options"])`` reopens it."""
        raise NotImplementedError

    def index_of(self, image_id: str) -> int:
        """Position of ``image_id`` in :meth:`keys`."""
        try:
            return self.keys().index(str(image_id))
        except ValueError:
            raise KeyError(f"{self.name}/{self.split} has no image {image_id!r}") from None

    def __getitem__(self, index: int) -> Sample:
        return self.load(index)

    def __iter__(self) -> Iterator[Sample]:
        return (self.load(i) for i in range(len(self)))

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self.name}/{self.split}: index {index} out of range for {n} samples")
        return index % n

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}/{self.split} ({len(self)} images) at {self.root}>"


def assign_ids(segments: Sequence[RawSegment], listing: str | Path) -> list[int]:
    """Normalised id of each segment, in order, from :class:`~prn_data.records.IdAllocator`:
    ``category_id*1000 + k`` (things, k = 1, 2, … per class in segment order, crowd included) or
    ``category_id*1000`` (stuff, at most one segment per class). Problems raise :class:`DatasetError`
    naming ``listing``."""
    ids = IdAllocator()
    seen_file: set[int] = set()
    seen_stuff: set[int] = set()
    out = []
    for s in segments:
        if s.file_id in seen_file:
            raise DatasetError(listing, f"segment id {s.file_id} is listed twice")
        seen_file.add(s.file_id)
        cid = s.category.id
        if not s.category.isthing:
            if cid in seen_stuff:
                raise DatasetError(listing, f"two stuff segments of category {cid} ({s.category.name})")
            seen_stuff.add(cid)
            out.append(ids.stuff(cid))
            continue
        try:
            out.append(ids.thing(cid))
        except ValueError as exc:  # too many things of one class for the label divisor
            raise DatasetError(listing, str(exc)) from None
    return out


def normalise_panoptic(
    raw: np.ndarray,
    segments: Sequence[RawSegment],
    *,
    label_path: str | Path,
    listing_path: str | Path,
    void_ids: Iterable[int] = (0,),
) -> tuple[np.ndarray, list[Segment], dict[str, int]]:
    """Relabel a raw id map to the normalised convention and compute each segment's area and bbox.

    ``raw``: ``(H, W)`` integer file ids; ``segments``: what the listing (JSON) says is in it, in order;
    ``void_ids``: raw values that are VOID. Returns ``panoptic (H, W) int32``, the segments (area, COCO bbox
    ``[x, y, w, h]`` from the pixels, as :func:`prn_data.panoptic_io.segment_stats` gives them) and
    ``{str(normalised id): file id}``. A raw id the listing lacks, or a listed id absent from the pixels,
    raises :class:`DatasetError` naming ``label_path``.
    """
    new_ids = assign_ids(segments, listing_path)
    void = sorted({int(v) for v in void_ids} - {s.file_id for s in segments})
    known = np.array([s.file_id for s in segments] + void, dtype=np.int64)
    new_of_known = np.array(new_ids + [VOID] * len(void), dtype=np.int32)
    order = np.argsort(known, kind="stable")
    known, new_of_known = known[order], new_of_known[order]
    flat = raw.ravel().astype(np.int64, copy=False)
    if known.size == 0:
        raise DatasetError(label_path, f"label image has pixels but {Path(listing_path).name} lists no segment")
    # A binary search into the few listed ids per pixel: O(n log k), much cheaper than np.unique's sort of
    # all n pixels on a 2048x1024 map, and it yields the lookup index of every pixel in the same pass.
    pos = np.minimum(np.searchsorted(known, flat), known.size - 1)
    listed = known[pos] == flat
    if not listed.all():
        unlisted = np.unique(flat[~listed]).tolist()
        raise DatasetError(
            label_path,
            f"segment ids {_few(unlisted)} in the label image are not listed in {Path(listing_path).name}",
        )
    counts = np.bincount(pos, minlength=known.size)
    slot = {int(f): i for i, f in enumerate(known.tolist())}
    absent = [s.file_id for s in segments if counts[slot[s.file_id]] == 0]
    if absent:
        raise DatasetError(
            label_path, f"segment ids {_few(absent)} listed in {Path(listing_path).name} are absent from it"
        )
    panoptic = new_of_known[pos].reshape(raw.shape)
    boxes = ndimage.find_objects((pos + 1).reshape(raw.shape).astype(np.int32), max_label=known.size)
    out = []
    for s, n in zip(segments, new_ids):
        i = slot[s.file_id]
        ys, xs = boxes[i]
        bbox = (int(xs.start), int(ys.start), int(xs.stop - xs.start), int(ys.stop - ys.start))
        c = s.category
        out.append(Segment(n, c.id, c.train_id, c.isthing, bool(s.iscrowd and c.isthing), int(counts[i]), bbox))
    return panoptic, out, {str(n): int(s.file_id) for s, n in zip(segments, new_ids)}


def present_values(raw: np.ndarray) -> list[int]:
    """Sorted distinct values of a non-negative label map; a histogram when values fit 16 bits (Cityscapes'
    instanceIds), which is linear time, else a sort."""
    if raw.size and raw.min() >= 0 and raw.max() < 65536:
        return np.flatnonzero(np.bincount(raw.ravel(), minlength=1)).tolist()
    return np.unique(raw).tolist()


def _few(ids: Sequence[int], n: int = 5) -> str:
    ids = list(ids)
    head = ", ".join(str(i) for i in ids[:n])
    return f"[{head}{', …' if len(ids) > n else ''}] ({len(ids)} in all)" if len(ids) > n else f"[{head}]"


def check_same_size(image: np.ndarray, labels: np.ndarray, image_path: Path, label_path: Path) -> None:
    """Raise :class:`DatasetError` naming the image when image and label map differ in size."""
    if image.shape[:2] != labels.shape[:2]:
        ih, iw = image.shape[:2]
        lh, lw = labels.shape[:2]
        raise DatasetError(image_path, f"image is {ih}x{iw} (HxW) but its label {label_path} is {lh}x{lw}")


def png_size(path: Path) -> tuple[int, int]:
    """``(h, w)`` from an image file's header (no pixel decode, no size limit)."""
    return image_size(path)


def read_label_png(path: Path) -> np.ndarray:
    """Read a single-channel label PNG (8- or 16-bit) → ``(H, W) int32``; the header is checked against
    :data:`~prn_data.panoptic_io.MAX_PIXELS` first. Errors name the file."""
    if not path.is_file():
        raise DatasetError(path, "label PNG is missing")
    image_size(path, limit=panoptic_io.MAX_PIXELS)  # read at call time: a changed limit holds
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # image_size checked the size
            with Image.open(path) as im:
                im.load()
                arr = np.asarray(im)
    except Exception as exc:
        raise DatasetError(path, f"unreadable or truncated label PNG ({exc})") from None
    if arr.ndim != 2:
        raise DatasetError(path, f"expected a single-channel label PNG, got shape {arr.shape}")
    return arr.astype(np.int32)


def load_json(path: Path) -> Any:
    """Parse a JSON file; a missing or malformed file raises :class:`DatasetError` naming it."""
    if not path.is_file():
        raise DatasetError(path, "annotation JSON is missing")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise DatasetError(path, f"unreadable annotation JSON ({exc})") from None


def abspath(p: Path | str) -> str:
    return str(Path(p).resolve())
