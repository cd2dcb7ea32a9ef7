"""Panoptic quality (PQ = SQ × RQ) exactly as panopticapi's ``pq_compute`` defines it (paper §4.2).

Per image, one ``bincount`` over the pair of (compacted) id maps gives the whole intersection matrix;
matching, false positives and false negatives are then array operations over segments, not pixels. The
pixels are first cut into runs (raster order) along which neither map changes, so the id lookups and the
``bincount`` see a run with its length instead of every pixel: a COCO map pair has about 10× fewer runs
than pixels, and the counts are the same integers.

Rules (panopticapi, bit for bit):

- VOID is id 0 in files (-1 in memory); ground-truth ids absent from the segment list are neither VOID
  nor matchable.
- A match is a (non-crowd ground truth, prediction) pair of the same category with IoU > 0.5, the union
  leaving out the predicted pixels that lie on VOID.
- An unmatched non-crowd ground-truth segment is a false negative; crowd is never one.
- An unmatched prediction is a false positive unless more than half of it lies on VOID plus the crowd
  region of its own category (the last crowd segment of that category in the ground truth's list).
- Classes with no TP, FP or FN are left out of the averages; ``n`` counts the classes averaged.

Two entry points: :func:`pq_compute` on COCO panoptic JSON + PNG folders (like panopticapi's script) and
:func:`pq_from_arrays` on in-memory id maps and segment lists.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import numpy as np

from . import pq_kernel
from .errors import DatasetError
from .panoptic_io import _decode_png, cv2, rgb2id
from .records import Category, CategorySet, Segment

FILE_VOID = 0
MEMORY_VOID = -1

#: A segment as a record or as a COCO ``segments_info`` dict.
SegmentLike = Union[Segment, Mapping[str, Any]]
#: Categories as a :class:`CategorySet`, a list of :class:`Category` or COCO category dicts, or
#: ``{category_id: {"name", "isthing"}}``.
Categories = Union[CategorySet, Iterable[Union[Category, Mapping[str, Any]]], Mapping[int, Mapping[str, Any]]]


@dataclass
class SegmentTable:
    """The segments of one image as arrays: ``ids (S,) int64``, ``category (S,) int64``,
    ``iscrowd (S,) bool``, ``area (S,) int64 | None`` (None: take areas from the id map)."""

    ids: np.ndarray
    category: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray | None = None

    @staticmethod
    def from_segments(segments: Iterable[SegmentLike], with_area: bool = False) -> "SegmentTable":
        """From :class:`prn_data.records.Segment` objects or COCO ``segments_info`` dicts."""
        segments = segments if isinstance(segments, list) else list(segments)
        if all(type(s) is dict for s in segments):  # COCO JSON: one comprehension per field
            return SegmentTable(
                np.array([s["id"] for s in segments], dtype=np.int64),
                np.array([s["category_id"] for s in segments], dtype=np.int64),
                np.array([bool(s.get("iscrowd", 0)) for s in segments], dtype=bool),
                np.array([s.get("area", 0) for s in segments], dtype=np.int64) if with_area else None,
            )
        ids, cats, crowd, area = [], [], [], []
        for s in segments:
            if isinstance(s, Mapping):
                ids.append(int(s["id"]))
                cats.append(int(s["category_id"]))
                crowd.append(bool(s.get("iscrowd", 0)))
                area.append(int(s.get("area", 0)))
            else:
                ids.append(int(s.id))
                cats.append(int(s.category_id))
                crowd.append(bool(s.iscrowd))
                area.append(int(s.area))
        return SegmentTable(
            np.asarray(ids, dtype=np.int64),
            np.asarray(cats, dtype=np.int64),
            np.asarray(crowd, dtype=bool),
            np.asarray(area, dtype=np.int64) if with_area else None,
        )


@dataclass
class ImageStats:
    """One image's PQ counts: true positives as ``(tp_category, tp_iou)`` pairs in ground-truth id order,
    and the categories of its false positives and false negatives (one entry per segment)."""

    tp_category: np.ndarray
    tp_iou: np.ndarray
    fp_category: np.ndarray
    fn_category: np.ndarray


@dataclass
class PQStat:
    """Counts accumulated over images, per category id: ``iou`` (sum of matched IoUs), ``tp``, ``fp``, ``fn``."""

    iou: dict[int, float] = field(default_factory=dict)
    tp: dict[int, int] = field(default_factory=dict)
    fp: dict[int, int] = field(default_factory=dict)
    fn: dict[int, int] = field(default_factory=dict)

    def add(self, s: ImageStats) -> None:
        # Summed one IoU at a time in panopticapi's order so the floating-point result is the same.
        for c, v in zip(s.tp_category.tolist(), s.tp_iou.tolist()):
            self.iou[c] = self.iou.get(c, 0.0) + v
            self.tp[c] = self.tp.get(c, 0) + 1
        for c in s.fp_category.tolist():
            self.fp[c] = self.fp.get(c, 0) + 1
        for c in s.fn_category.tolist():
            self.fn[c] = self.fn.get(c, 0) + 1


_LUT_SIZE = 1 << 24  # every id a COCO panoptic PNG can hold (R + 256·G + 256²·B)
_luts = threading.local()


def _lut(dtype: type[np.unsignedinteger]) -> np.ndarray:
    """This thread's id → index table over all 2²⁴ PNG ids, every entry "unknown" (the dtype's max)
    between uses: a gather replaces a sort of the whole map."""
    key = np.dtype(dtype).str
    lut = getattr(_luts, key, None)
    if lut is None:
        lut = np.full(_LUT_SIZE + 1, np.iinfo(dtype).max, dtype=dtype)
        setattr(_luts, key, lut)
    return lut


def _compact(ids: np.ndarray, keys: np.ndarray, unknown: int) -> np.ndarray:
    """Map every value of ``ids`` (flat int) to its position in ``keys`` (distinct ints), ``unknown`` where
    absent. Returns the smallest unsigned dtype that holds the indices (uint8 for up to 254 keys)."""
    keys = np.asarray(keys, dtype=np.int64)
    lo = 0 if ids.dtype.kind == "u" or not ids.size else int(ids.min())
    hi = int(ids.max()) if ids.size else 0
    if lo >= -1 and hi < _LUT_SIZE and len(keys) < 0xFFFF:
        dtype = np.uint8 if len(keys) < 0xFF else np.uint16
        lut = _lut(dtype)
        # Shift by one so VOID = -1 (in memory) has a slot; keys outside the table cannot occur in ids.
        inside = (keys >= -1) & (keys < _LUT_SIZE)
        slots = keys[inside] + 1
        lut[slots] = np.nonzero(inside)[0]
        try:
            # np.take: about half the time of fancy indexing for a flat gather
            idx = np.take(lut, ids + 1) if lo < 0 else np.take(lut[1:], ids)
        finally:
            lut[slots] = 0xFF if dtype is np.uint8 else 0xFFFF
        # Untouched entries hold the dtype's max, which is ≥ unknown: one in-place minimum relabels them.
        np.minimum(idx, unknown, out=idx)
        return idx
    # Ids beyond any PNG's range: sort them instead.
    uniq, inv = np.unique(ids, return_inverse=True)
    order = np.argsort(keys)
    pos = np.minimum(np.searchsorted(keys[order], uniq), len(keys) - 1)
    table = np.where(keys[order][pos] == uniq, order[pos], unknown)
    return table[inv.ravel()]


#: Past this share of run starts among the pixels (noise-like maps), counting pixel by pixel is cheaper.
_MAX_RUN_SHARE = 0.25


def _runs(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Flat id maps ``(N,)`` → the maps' values at the start of each run of pixels (raster order) along
    which neither changes, and the runs' lengths ``(R,) intp``; the maps themselves and ``None`` when runs
    would save little. A run may wrap from one row to the next: only the count of each pair matters."""
    n = gt.size
    if n < 2:
        return gt, pred, None
    change = np.not_equal(gt[1:], gt[:-1])
    change |= np.not_equal(pred[1:], pred[:-1])
    cut = np.flatnonzero(change)
    if len(cut) > _MAX_RUN_SHARE * n:
        return gt, pred, None
    starts = np.empty(len(cut) + 1, dtype=np.intp)
    starts[0] = 0
    np.add(cut, 1, out=starts[1:])
    length = np.empty_like(starts)
    np.subtract(cut, starts[:-1], out=length[:-1])
    length[:-1] += 1
    length[-1] = n - starts[-1]
    # np.take: about half the time of fancy indexing for a flat gather
    return np.take(gt, starts), np.take(pred, starts), length


#: The bits of a PNG word (R, G, B and a 4th byte: alpha, 255 or another pixel's) that make its id.
_PNG_ID_BITS = 0xFFFFFF


def _ids(m: np.ndarray, form: str, negative_as: int | None) -> np.ndarray:
    """Flat ids of ``m`` (``form`` as :func:`prn_data.pq_kernel.count_pairs`'); with ``negative_as``,
    negative ids replaced by it."""
    if form == "words":
        m = np.bitwise_and(m, _PNG_ID_BITS)
    elif form == "rgb":
        m = rgb2id(m.reshape(-1, 1, 3)).reshape(-1)
    if negative_as is not None:
        m = np.where(m < 0, negative_as, m)
    return m


def pq_image(
    gt_ids: np.ndarray,
    gt: SegmentTable,
    pred_ids: np.ndarray,
    pred: SegmentTable,
    *,
    void: int = FILE_VOID,
    negative_void: bool = False,
    categories: Iterable[int] | None = None,
    name: str | None = None,
) -> ImageStats:
    """PQ counts of one image.

    ``gt_ids``/``pred_ids``: ``(H, W)`` integer id maps with VOID = ``void``; with ``negative_void`` every
    negative predicted id counts as VOID too (predictions in memory, VOID = −1, against files, VOID = 0).
    ``gt.area`` (when given) is used as the ground-truth areas, as panopticapi takes them from the JSON;
    prediction areas always come from the map. A predicted id missing from ``pred``, a listed prediction
    absent from the map (when ``name`` is given, i.e. for files) or a prediction of a category outside
    ``categories`` raises :class:`DatasetError` naming ``name``.
    """
    if gt_ids.shape != pred_ids.shape:
        raise DatasetError(name, f"prediction is {pred_ids.shape}, ground truth {gt_ids.shape}")
    return _image_stats(gt_ids.reshape(-1), gt, pred_ids.reshape(-1), pred, form="ids", void=void,
                        negative_void=negative_void, categories=categories, name=name)


def _count_numpy(g: np.ndarray, p: np.ndarray, g_keys: np.ndarray, p_keys: np.ndarray, form: str,
                 negative_as: int | None) -> np.ndarray:
    """:func:`prn_data.pq_kernel.count_pairs`'s counts with numpy: runs, compacted ids, one ``bincount``.
    ``form``: ``"ids"`` or ``"words"``. Words and ``negative_as`` (see :func:`_ids`) become ids at the
    runs only: a word's 4th byte can only cut a run in two, which leaves every pair's count as it is."""
    G, P = len(g_keys) - 1, len(p_keys) - 1
    g, p, length = _runs(g, p)
    g, p = _ids(g, form, None), _ids(p, form, negative_as)
    # Index 0 is VOID, 1..S the listed segments, S+1 any id not listed.
    gi = _compact(g, g_keys, G + 1)
    pj = _compact(p, p_keys, P + 1)
    pair = np.multiply(gi, P + 2, dtype=np.intp)
    pair += pj
    # Run lengths as float64 weights: sums of integers below 2**53, exact.
    conf = np.bincount(pair, weights=length, minlength=(G + 2) * (P + 2)).reshape(G + 2, P + 2)
    return conf.astype(np.int64) if length is not None else conf


def _image_stats(
    g: np.ndarray,
    gt: SegmentTable,
    p: np.ndarray,
    pred: SegmentTable,
    *,
    form: str,
    void: int,
    negative_void: bool,
    categories: Iterable[int] | None,
    name: str | None,
) -> ImageStats:
    """:func:`pq_image` on flat maps in ``form`` (:func:`prn_data.pq_kernel.count_pairs`'): ids, PNG words
    (the high byte left as the decoder gave it) or a PNG's RGB bytes."""
    G, P = len(gt.ids), len(pred.ids)
    g_keys = np.concatenate([[void], gt.ids]).astype(np.int64, copy=False)
    p_keys = np.concatenate([[void], pred.ids]).astype(np.int64, copy=False)
    # a negative prediction counts where VOID's own value would (the last key equal to it wins, as in _compact)
    p_negative = int(np.flatnonzero(p_keys == void)[-1]) if negative_void else -1
    conf = pq_kernel.count_pairs(g, g_keys, p, p_keys, form=form, p_negative=p_negative)
    if conf is None:
        if form == "rgb":
            g, p, form = _ids(g, form, None), _ids(p, form, None), "ids"
        conf = _count_numpy(g, p, g_keys, p_keys, form, void if negative_void else None)
    if conf[:, P + 1].any():
        bad = np.setdiff1d(np.unique(_ids(p, form, void if negative_void else None)), p_keys)[:5].tolist()
        raise DatasetError(name, f"predicted segment ids {bad} are in the PNG but not in the JSON")
    pred_area = conf[:, 1 : P + 1].sum(0)
    present = pred_area > 0
    if name is not None and not present.all():
        raise DatasetError(name, f"predicted segment ids {pred.ids[~present][:5].tolist()} are in the JSON but not in the PNG")
    if categories is not None:
        known = categories if isinstance(categories, (set, frozenset, dict)) else set(categories)
        unknown = {c for c in pred.category[present].tolist() if c not in known}
        if unknown:
            raise DatasetError(name, f"predicted category ids {sorted(unknown)} are unknown")
    gt_area = gt.area if gt.area is not None else conf[1 : G + 1, :].sum(1)
    matched = pq_kernel.match_segments(conf, gt.ids, gt.category, gt.iscrowd, gt_area, pred.category, pred_area)
    if matched is not None:
        rows, iou, fp, fn = matched
        return ImageStats(tp_category=gt.category[rows], tp_iou=iou, fp_category=pred.category[fp],
                          fn_category=gt.category[fn])
    inter = conf[1 : G + 1, 1 : P + 1]
    on_void = conf[0, 1 : P + 1]

    # Candidates: overlapping pairs of one category, the ground truth not crowd (few: work on the list).
    gm, pm = np.nonzero(inter)
    same = (gt.category[gm] == pred.category[pm]) & ~gt.iscrowd[gm]
    gm, pm = gm[same], pm[same]
    common = inter[gm, pm]
    union = pred_area[pm] + gt_area[gm] - common - on_void[pm]
    if (union > 0).all():  # always, unless the JSON's areas are wrong: spares the errstate's cost
        iou = common / union
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = common / union
    match = iou > 0.5
    gm, pm, iou = gm[match], pm[match], iou[match]
    order = np.argsort(gt.ids[gm], kind="stable")
    gm, pm, iou = gm[order], pm[order], iou[order]
    gt_matched = np.zeros(G, dtype=bool)
    gt_matched[gm] = True
    pred_matched = np.zeros(P, dtype=bool)
    pred_matched[pm] = True

    fn = ~gt_matched & ~gt.iscrowd
    # panopticapi keeps, per category, the last crowd segment listed.
    crowd_row = {}
    for r in np.nonzero(gt.iscrowd & ~gt_matched)[0].tolist():
        crowd_row[int(gt.category[r])] = r
    ignored = on_void.copy()
    if crowd_row:
        rows = np.array([crowd_row.get(c, -1) for c in pred.category.tolist()], dtype=np.int64)
        has = rows >= 0
        ignored[has] += inter[rows[has], np.nonzero(has)[0]]
    # panopticapi's ignored / area > 0.5, in integers: the same for every area below 2**53, and for the
    # segments absent from the map (area 0) too, which present leaves out
    fp = ~pred_matched & present & (2 * ignored <= pred_area)
    return ImageStats(
        tp_category=gt.category[gm],
        tp_iou=iou.astype(np.float64, copy=False),
        fp_category=pred.category[fp],
        fn_category=gt.category[fn],
    )


def _category_info(categories: Categories) -> dict[int, dict]:
    """``{category_id: {"name", "isthing"}}`` from a CategorySet, a list of COCO category dicts or a dict."""
    if isinstance(categories, Mapping):
        return {int(k): dict(v) for k, v in categories.items()}
    out = {}
    for c in categories:
        if isinstance(c, Mapping):
            out[int(c["id"])] = {"name": c.get("name", str(c["id"])), "isthing": int(c["isthing"])}
        else:
            out[int(c.id)] = {"name": c.name, "isthing": int(c.isthing)}
    return out


def pq_average(stat: PQStat, categories: Categories) -> dict:
    """pq_compute's result: ``All``/``Things``/``Stuff`` → ``{"pq", "sq", "rq", "n"}`` (fractions) and
    ``per_class`` → ``{category_id: {"pq", "sq", "rq"}}``. An average over no class is 0. Also (beyond
    panopticapi's form) ``counts`` → ``{category_id: {"tp", "fp", "fn"}}`` for the classes that occur in
    the ground truth or the predictions (a per-class PQ of 0 is then a miss, not an absent class)."""
    cats = _category_info(categories)
    results: dict = {"counts": {}}
    for cid in cats:
        tp, fp, fn = stat.tp.get(cid, 0), stat.fp.get(cid, 0), stat.fn.get(cid, 0)
        if tp + fp + fn:
            results["counts"][cid] = {"tp": int(tp), "fp": int(fp), "fn": int(fn)}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        pq = sq = rq = 0.0
        n = 0
        per_class = {}
        for cid, info in cats.items():
            if isthing is not None and (int(info["isthing"]) == 1) != isthing:
                continue
            iou, tp = stat.iou.get(cid, 0.0), stat.tp.get(cid, 0)
            fp, fn = stat.fp.get(cid, 0), stat.fn.get(cid, 0)
            if tp + fp + fn == 0:
                per_class[cid] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            denom = tp + 0.5 * fp + 0.5 * fn
            pc = {"pq": iou / denom, "sq": iou / tp if tp else 0, "rq": tp / denom}
            per_class[cid] = pc
            pq += pc["pq"]
            sq += pc["sq"]
            rq += pc["rq"]
        results[name] = {"pq": pq / n if n else 0.0, "sq": sq / n if n else 0.0, "rq": rq / n if n else 0.0, "n": n}
        if name == "All":
            results["per_class"] = per_class
    return results


def worker_count(workers: int | None) -> int:
    """The scoring threads to use: ``workers`` when given (at least 1), else up to 8 by the CPU count."""
    return max(1, workers if workers is not None else min(8, os.cpu_count() or 1))


def pq_from_arrays(
    items: Sequence[tuple[np.ndarray, Sequence[SegmentLike], np.ndarray, Sequence[SegmentLike]]],
    categories: Categories,
    *,
    void: int = MEMORY_VOID,
    workers: int | None = None,
) -> dict:
    """PQ over in-memory images. ``items``: ``(gt_ids, gt_segments, pred_ids, pred_segments)`` per image,
    ``(H, W)`` integer maps with VOID = ``void`` (−1, the in-memory convention) and lists of
    :class:`~prn_data.records.Segment` or COCO segment dicts. Areas come from the maps; listed segments
    absent from a map are ignored. Returns :func:`pq_average`'s dict."""

    def one(it):
        g, gs, p, ps = it
        return pq_image(np.asarray(g), SegmentTable.from_segments(gs), np.asarray(p), SegmentTable.from_segments(ps), void=void)

    stat = PQStat()
    n = worker_count(workers)
    with ThreadPoolExecutor(n) as pool:
        for s in pool.map(one, items) if n > 1 and len(items) > 1 else map(one, items):
            stat.add(s)
    return pq_average(stat, categories)


def read_png_ids(path: str | Path, out: np.ndarray | None = None) -> np.ndarray:
    """COCO panoptic PNG → ``(H, W) uint32`` ids R + 256·G + 256²·B (an alpha channel is ignored).
    ``out``: an int32 buffer of at least H·W elements to reuse across images (the result is a view of it),
    as :func:`prn_data.panoptic_io.rgb2id`'s."""
    return rgb2id(_png_rgb(path), out=out).view(np.uint32)


def _png_rgb(path: str | Path, scratch: bool | str = True) -> np.ndarray:
    """A panoptic PNG's ``(H, W, 3|4) uint8`` pixels, possibly in this thread's decode scratch buffer
    (one per name when ``scratch`` is a str: :func:`prn_data.panoptic_io._decode_png`'s ``reuse``)."""
    try:
        rgb = _decode_png(path, reuse=scratch)
    except DatasetError:
        if not os.path.isfile(path):  # asked only after a failure: a stat less per image
            raise DatasetError(path, "panoptic PNG is missing") from None
        raise
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.dtype != np.uint8:
        raise DatasetError(path, f"panoptic PNG must be 8-bit RGB, got shape {rgb.shape} {rgb.dtype}")
    return rgb


class PngIdReader(threading.local):
    """Reads COCO panoptic PNGs as :func:`read_png_ids` does, into one reusable buffer per thread and
    ``role`` (e.g. ``"gt"``, ``"pred"``): an id map stays valid until the same thread reads the next one in
    that role. Decoding image after image into the same memory spares a fresh allocation's page faults,
    which cost about as much as the decode on a busy machine. Maps over ``limit`` pixels get fresh memory."""

    def __init__(self, limit: int = 16 << 20):
        self.limit = limit
        self.buffers: dict[str, np.ndarray] = {}

    def read(self, path: str | Path, role: str = "gt") -> np.ndarray:
        """``(H, W) uint32`` ids of the PNG at ``path`` (errors as :func:`read_png_ids`)."""
        rgb = _png_rgb(path)
        return rgb2id(rgb, out=self._buffer(rgb, role)).view(np.uint32)

    def words(self, path: str | Path, role: str = "gt") -> np.ndarray:
        """``(H, W) uint32`` words whose low 24 bits are the ids of :meth:`read` (the high byte is left
        as it comes: 255, the alpha, or 0): one pass less over the map where the ids are masked later."""
        return self.words_of(_png_rgb(path), role)

    def words_of(self, rgb: np.ndarray, role: str = "gt") -> np.ndarray:
        """:meth:`words` of decoded pixels ``(H, W, 3|4) uint8``."""
        buf = self._buffer(rgb, role)
        h, w, c = rgb.shape
        if c == 3 and cv2 is not None and buf is not None and h * w and rgb.flags.c_contiguous and sys.byteorder == "little":
            # OpenCV widens RGB to RGBA (alpha 255) straight into the words' memory (SIMD)
            cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA, dst=buf[: h * w].view(np.uint8).reshape(h, w, 4))
            return buf[: h * w].view(np.uint32).reshape(h, w)
        return rgb2id(rgb, out=buf).view(np.uint32)

    def _buffer(self, rgb: np.ndarray, role: str) -> np.ndarray | None:
        n = rgb.shape[0] * rgb.shape[1]
        if n > self.limit:
            return None
        buf = self.buffers.get(role)
        if buf is None or buf.size < n:
            buf = self.buffers[role] = np.empty(max(n, 1 << 18), dtype=np.int32)
        return buf


def load_panoptic_json(path: str | Path) -> dict:
    """A COCO panoptic JSON (a dict with ``annotations``); a missing, unreadable or other file raises
    :class:`DatasetError`."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "JSON file is missing")
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as exc:
        raise DatasetError(path, f"unreadable JSON ({exc})") from None
    if not isinstance(d, dict) or "annotations" not in d:
        raise DatasetError(path, "not a COCO panoptic JSON (no 'annotations')")
    return d


def pq_compute(
    gt_json: str | Path,
    gt_dir: str | Path,
    pred_json: str | Path,
    pred_dir: str | Path,
    *,
    workers: int | None = None,
    categories: Categories | None = None,
    progress: Callable[[int], object] | None = None,
) -> dict:
    """panopticapi's ``pq_compute`` on a COCO panoptic pair (JSON + PNG folder each); images are matched by
    ``image_id`` and scored in parallel threads. ``categories`` defaults to the ground-truth JSON's.
    ``progress(n_done)`` is called after each image when given. Returns :func:`pq_average`'s dict."""
    gt_d, pred_d = load_panoptic_json(gt_json), load_panoptic_json(pred_json)
    if categories is None:
        if "categories" not in gt_d:
            raise DatasetError(gt_json, "no 'categories' in the ground-truth JSON")
        categories = gt_d["categories"]
    cats = _category_info(categories)
    preds = {a["image_id"]: a for a in pred_d["annotations"]}
    pairs = []
    for g in gt_d["annotations"]:
        if g["image_id"] not in preds:
            raise DatasetError(pred_json, f"no prediction for the image with id {g['image_id']}")
        pairs.append((g, preds[g["image_id"]]))

    reader = PngIdReader()
    known = frozenset(cats)
    gt_dir, pred_dir = os.fspath(gt_dir), os.fspath(pred_dir)
    compiled = pq_kernel.available()

    def one(pair):
        g, p = pair
        # str paths: two Path objects would cost about as much as reading the files
        ppath = os.path.join(pred_dir, p["file_name"])
        # each role its own decode scratch: both images stay in hand
        gx, px = _png_rgb(os.path.join(gt_dir, g["file_name"]), "pq_gt"), _png_rgb(ppath, "pq_pred")
        if gx.shape[:2] != px.shape[:2]:
            raise DatasetError(ppath, f"prediction is {px.shape[:2]}, ground truth {gx.shape[:2]}")
        if gx.shape[2] == px.shape[2] == 3 and compiled and gx.flags.c_contiguous and px.flags.c_contiguous:
            form = "rgb"  # the compiled count reads the RGB bytes as they come
        else:
            # words: the ids' masking is left to the counting, which does it per run, not per pixel
            gx, px, form = reader.words_of(gx, "gt"), reader.words_of(px, "pred"), "words"
        return _image_stats(
            gx.reshape(-1),
            SegmentTable.from_segments(g["segments_info"], with_area=True),
            px.reshape(-1),
            SegmentTable.from_segments(p["segments_info"]),
            form=form,
            void=FILE_VOID,
            negative_void=False,
            categories=known,
            name=ppath,
        )

    stat = PQStat()
    n = worker_count(workers)
    with ThreadPoolExecutor(n) as pool:
        for i, s in enumerate(pool.map(one, pairs) if n > 1 else map(one, pairs)):
            stat.add(s)
            if progress is not None:
                progress(i + 1)
    return pq_average(stat, cats)


def format_table(results: dict, categories: Categories | None = None, *, per_class: bool = False) -> str:
    """panopticapi's printout: optional per-class rows, then All / Things / Stuff with PQ, SQ, RQ (in %)
    and N."""
    lines = []
    if per_class and categories is not None:
        cats = _category_info(categories)
        lines.append(f"{'Category':24s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s}")
        for cid in sorted(results["per_class"]):
            r = results["per_class"][cid]
            lines.append(f"{str(cats[cid]['name'])[:24]:24s}| {100 * r['pq']:5.1f}  {100 * r['sq']:5.1f}  {100 * r['rq']:5.1f}")
        lines.append("-" * 51)
    lines.append(f"{'':24s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'N':>5s}")
    for name in ("All", "Things", "Stuff"):
        r = results[name]
        lines.append(f"{name:24s}| {100 * r['pq']:5.1f}  {100 * r['sq']:5.1f}  {100 * r['rq']:5.1f} {r['n']:5d}")
    return "\n".join(lines)


__all__ = [
    "SegmentTable",
    "ImageStats",
    "PQStat",
    "pq_image",
    "pq_average",
    "pq_from_arrays",
    "pq_compute",
    "read_png_ids",
    "PngIdReader",
    "load_panoptic_json",
    "worker_count",
    "format_table",
    "FILE_VOID",
    "MEMORY_VOID",
    "SegmentLike",
    "Categories",
]
