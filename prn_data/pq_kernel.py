"""PQ's pair counts in one compiled pass (numba, when installed: the ``fast`` extra), paper §4.2.

:func:`count_pairs` walks two flat id maps once, cutting them into runs (raster order) along which neither
map changes and adding each run's length to the confusion matrix cell of its (ground truth, prediction)
segment pair; segment indices are looked up in per-thread tables over every id a COCO panoptic PNG can hold,
only where a run starts; it reads ids, PNG words or a PNG's RGB bytes as decoded (two pixels per read).
It gives exactly the integers :func:`prn_data.pq.pq_image`'s numpy path counts, in about a third of its
time. :func:`match_segments` then does panopticapi's matching on those counts, as the numpy path does.
Without numba (or for ids the tables cannot hold) both return None and the caller uses numpy.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

#: False turns the compiled path off (tests, benchmarks: the numpy path alone).
ENABLED = True
#: Ids the lookup tables hold: −1 (VOID in memory) up to 2²⁴ − 1 (a PNG's largest).
LUT_SIZE = 1 << 24
_kernel = None  # the compiled kernels once built; False when numba is missing or fails
_build_lock = threading.Lock()
_tables = threading.local()
_DTYPES = (np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.uint32))


def available() -> bool:
    """Whether the compiled kernel can run here (numba importable; builds it on first call)."""
    return ENABLED and _compiled() is not None


def _compiled():
    """``(png, ids, NumbaError, match, rgb)``: the kernels and numba's error class; None without numba."""
    global _kernel
    if _kernel is None:
        with _build_lock:
            if _kernel is None:
                try:
                    _kernel = _build(cache=True)
                except ImportError:
                    _kernel = False
                except Exception:  # nowhere to cache the machine code (a read-only install): compile per process
                    try:
                        _kernel = _build(cache=False)
                    except Exception:  # a numba that does not work with this numpy
                        _kernel = False
    return _kernel or None


def _build(cache: bool):
    # numba is optional and takes a while to import: only here, on the first count
    import numba
    from numba.core.errors import NumbaError

    # Tables hold a key's index + 1, 0 for an id not listed: the run loops count into a matrix whose row
    # and column 0 are "not listed", moved last at the end.

    @numba.njit(nogil=True, cache=cache, boundscheck=False)
    def png_runs(g, p, g_lut, p_lut, conf):
        # PNG words: the id is the low 24 bits, always inside the tables (g_lut, p_lut start at id 0).
        # Two pixels at a time first: a pair of words equal to the current run's value twice (most pairs)
        # takes one comparison per map.
        n = g.size
        m = n // 2
        g2 = g[: 2 * m].view(np.uint64)
        p2 = p[: 2 * m].view(np.uint64)
        start = 0
        prev_g = g[0]
        prev_p = p[0]
        twice = np.uint64(0x100000001)
        g_twice = np.uint64(prev_g) * twice
        p_twice = np.uint64(prev_p) * twice
        for k in range(m):
            if g2[k] == g_twice and p2[k] == p_twice:
                continue
            for i in range(2 * k, 2 * k + 2):
                a = g[i]
                b = p[i]
                if a != prev_g or b != prev_p:
                    conf[g_lut[prev_g & 0xFFFFFF], p_lut[prev_p & 0xFFFFFF]] += i - start
                    start = i
                    prev_g = a
                    prev_p = b
            g_twice = np.uint64(prev_g) * twice
            p_twice = np.uint64(prev_p) * twice
        for i in range(2 * m, n):
            a = g[i]
            b = p[i]
            if a != prev_g or b != prev_p:
                conf[g_lut[prev_g & 0xFFFFFF], p_lut[prev_p & 0xFFFFFF]] += i - start
                start = i
                prev_g = a
                prev_p = b
        conf[g_lut[prev_g & 0xFFFFFF], p_lut[prev_p & 0xFFFFFF]] += n - start

    @numba.njit(nogil=True, cache=cache, boundscheck=False)
    def rgb_runs(g6, p6, g, p, g_lut, p_lut, conf):
        # RGB bytes g, p (3 per pixel), and g6, p6: 8 bytes read at every 6th, whose low 6 are two pixels:
        # a pair equal to the current run's pixel twice (most pairs) takes one comparison per map. The
        # pixels past the last whole 8-byte read are assembled byte by byte.
        n = g.size // 3
        m = g6.size
        M = np.uint64(0xFFFFFF)
        M2 = np.uint64(0xFFFFFFFFFFFF)
        start = 0
        prev_g = np.uint64(g[0]) | (np.uint64(g[1]) << 8) | (np.uint64(g[2]) << 16)
        prev_p = np.uint64(p[0]) | (np.uint64(p[1]) << 8) | (np.uint64(p[2]) << 16)
        g_twice = prev_g | (prev_g << 24)
        p_twice = prev_p | (prev_p << 24)
        for k in range(m):
            wg = g6[k] & M2
            wp = p6[k] & M2
            if wg == g_twice and wp == p_twice:
                continue
            for h in range(2):
                a = (wg >> (24 * h)) & M
                b = (wp >> (24 * h)) & M
                if a != prev_g or b != prev_p:
                    i = 2 * k + h
                    conf[g_lut[prev_g], p_lut[prev_p]] += i - start
                    start = i
                    prev_g = a
                    prev_p = b
            g_twice = prev_g | (prev_g << 24)
            p_twice = prev_p | (prev_p << 24)
        for i in range(2 * m, n):
            a = np.uint64(g[3 * i]) | (np.uint64(g[3 * i + 1]) << 8) | (np.uint64(g[3 * i + 2]) << 16)
            b = np.uint64(p[3 * i]) | (np.uint64(p[3 * i + 1]) << 8) | (np.uint64(p[3 * i + 2]) << 16)
            if a != prev_g or b != prev_p:
                conf[g_lut[prev_g], p_lut[prev_p]] += i - start
                start = i
                prev_g = a
                prev_p = b
        conf[g_lut[prev_g], p_lut[prev_p]] += n - start

    @numba.njit(inline="always")
    def look(v, lut, negative):
        # every key lies in -1 .. LUT_SIZE - 1 (lut[0] is -1's entry): a value outside is not listed
        if v < 0:
            if negative >= 0:
                return negative
            return lut[0] if v == -1 else 0
        if v >= lut.size - 1:
            return 0
        return lut[v + 1]

    @numba.njit(nogil=True, cache=cache, boundscheck=False)
    def id_runs(g, p, g_lut, p_lut, p_negative, conf):
        n = g.size
        start = 0
        prev_g = g[0]
        prev_p = p[0]
        for i in range(1, n):
            a = g[i]
            b = p[i]
            if a != prev_g or b != prev_p:
                conf[look(prev_g, g_lut, -1), look(prev_p, p_lut, p_negative)] += i - start
                start = i
                prev_g = a
                prev_p = b
        conf[look(prev_g, g_lut, -1), look(prev_p, p_lut, p_negative)] += n - start

    @numba.njit(inline="always")
    def fill(lut, keys, on):
        for i in range(keys.size):
            lut[keys[i] + 1] = i + 1 if on else 0

    @numba.njit(inline="always")
    def usable(g_keys, p_keys, lut_size):
        for keys in (g_keys, p_keys):
            if keys.size >= 0xFFFF:
                return False
            for k in keys:
                if k < -1 or k >= lut_size - 1:
                    return False
        return True

    @numba.njit(inline="always")
    def not_listed_last(conf):
        G, P = conf.shape[0] - 1, conf.shape[1] - 1
        out = np.empty_like(conf)
        out[:G, :P] = conf[1:, 1:]
        out[:G, P] = conf[1:, 0]
        out[G, :P] = conf[0, 1:]
        out[G, P] = conf[0, 0]
        return out

    @numba.njit(nogil=True, cache=cache)
    def count_png(g, p, g_keys, p_keys, g_lut, p_lut):
        if not usable(g_keys, p_keys, g_lut.size):
            return np.zeros((0, 0), np.int64)
        conf = np.zeros((g_keys.size + 1, p_keys.size + 1), np.int64)
        fill(g_lut, g_keys, True)
        fill(p_lut, p_keys, True)
        png_runs(g, p, g_lut[1:], p_lut[1:], conf)
        fill(g_lut, g_keys, False)
        fill(p_lut, p_keys, False)
        return not_listed_last(conf)

    @numba.njit(nogil=True, cache=cache)
    def count_rgb(g6, p6, g, p, g_keys, p_keys, g_lut, p_lut):
        if not usable(g_keys, p_keys, g_lut.size):
            return np.zeros((0, 0), np.int64)
        conf = np.zeros((g_keys.size + 1, p_keys.size + 1), np.int64)
        fill(g_lut, g_keys, True)
        fill(p_lut, p_keys, True)
        rgb_runs(g6, p6, g, p, g_lut[1:], p_lut[1:], conf)
        fill(g_lut, g_keys, False)
        fill(p_lut, p_keys, False)
        return not_listed_last(conf)

    @numba.njit(nogil=True, cache=cache)
    def count_ids(g, p, g_keys, p_keys, g_lut, p_lut, p_negative):
        if not usable(g_keys, p_keys, g_lut.size):
            return np.zeros((0, 0), np.int64)
        conf = np.zeros((g_keys.size + 1, p_keys.size + 1), np.int64)
        fill(g_lut, g_keys, True)
        fill(p_lut, p_keys, True)
        id_runs(g, p, g_lut, p_lut, p_negative, conf)
        fill(g_lut, g_keys, False)
        fill(p_lut, p_keys, False)
        return not_listed_last(conf)

    @numba.njit(nogil=True, cache=cache, error_model="numpy")
    def match(conf, gt_ids, gt_cat, gt_crowd, gt_area, pred_cat, pred_area):
        # conf: count_pairs' layout (VOID first, "not listed" last); division by a zero union as numpy's
        G = gt_ids.size
        P = pred_cat.size
        n = 0
        for i in range(G):
            if not gt_crowd[i]:
                for j in range(P):
                    c = conf[i + 1, j + 1]
                    if c and gt_cat[i] == pred_cat[j] and c / (pred_area[j] + gt_area[i] - c - conf[0, j + 1]) > 0.5:
                        n += 1
        rows = np.empty(n, np.int64)
        iou = np.empty(n, np.float64)
        gt_matched = np.zeros(G, np.bool_)
        pred_matched = np.zeros(P, np.bool_)
        k = 0
        for i in range(G):
            if not gt_crowd[i]:
                for j in range(P):
                    c = conf[i + 1, j + 1]
                    if c and gt_cat[i] == pred_cat[j]:
                        v = c / (pred_area[j] + gt_area[i] - c - conf[0, j + 1])
                        if v > 0.5:
                            rows[k] = i
                            iou[k] = v
                            k += 1
                            gt_matched[i] = True
                            pred_matched[j] = True
        order = np.argsort(gt_ids[rows], kind="mergesort")
        fn = np.empty(G, np.bool_)
        for i in range(G):
            fn[i] = not gt_matched[i] and not gt_crowd[i]
        fp = np.zeros(P, np.bool_)
        for j in range(P):
            if pred_matched[j] or pred_area[j] <= 0:
                continue
            ignored = conf[0, j + 1]
            for i in range(G - 1, -1, -1):  # the last crowd segment of the category listed
                if gt_crowd[i] and not gt_matched[i] and gt_cat[i] == pred_cat[j]:
                    ignored += conf[i + 1, j + 1]
                    break
            fp[j] = 2 * ignored <= pred_area[j]
        return rows[order], iou[order], fp, fn

    return count_png, count_ids, NumbaError, match, count_rgb


def _table(role: str) -> np.ndarray:
    """This thread's ``(LUT_SIZE + 1,) uint16`` table for ``role``, all zeros between uses. Zeroed lazily
    by the OS: only the pages of ids actually looked up ever take memory."""
    lut = getattr(_tables, role, None)
    if lut is None:
        lut = np.zeros(LUT_SIZE + 1, dtype=np.uint16)
        setattr(_tables, role, lut)
    return lut


def count_pairs(
    g: np.ndarray,
    g_keys: np.ndarray,
    p: np.ndarray,
    p_keys: np.ndarray,
    *,
    form: str = "ids",
    p_negative: int = -1,
) -> np.ndarray | None:
    """Confusion counts ``(G + 1, P + 1) int64`` of flat maps ``g``, ``p``: cell ``[i, j]`` is the number
    of pixels whose ground-truth id is ``g_keys[i]`` and predicted id ``p_keys[j]``, the last row / column
    for ids not among the keys (a key listed twice counts at its last place). ``form``: ``"ids"``, maps of
    ids ``(N,)`` (int32, int64 or uint32); ``"words"``, PNG words ``(N,) uint32`` (the id in the low 24
    bits, the high byte ignored); ``"rgb"``, a PNG's RGB bytes ``(3N,) uint8``. With ``p_negative`` ≥ 0
    every negative predicted id counts at column ``p_negative``. None when the kernel is off or cannot
    take these maps or keys (the caller then counts otherwise)."""
    kernels = _compiled() if ENABLED else None
    if kernels is None or not g.size or g.size != p.size:
        return None
    want = {"words": (np.uint32,), "rgb": (np.uint8,)}.get(form, _DTYPES)
    if g.dtype not in want or p.dtype not in want or (form == "rgb" and (g.size % 3 or sys.byteorder != "little")):
        return None
    g, p = np.ascontiguousarray(g).reshape(-1), np.ascontiguousarray(p).reshape(-1)
    g_keys = np.asarray(g_keys, dtype=np.int64)
    p_keys = np.asarray(p_keys, dtype=np.int64)
    try:
        if form == "rgb":
            # whole 8-byte reads at pixels 0, 2, 4, ...: the k-th ends at byte 6k + 8, inside the 3N bytes
            m = max(0, (g.size - 8) // 6 + 1)
            g6 = np.ndarray((m,), dtype="<u8", buffer=g, strides=(6,))
            p6 = np.ndarray((m,), dtype="<u8", buffer=p, strides=(6,))
            conf = kernels[4](g6, p6, g, p, g_keys, p_keys, _table("g"), _table("p"))
        elif form == "words":
            conf = kernels[0](g, p, g_keys, p_keys, _table("g"), _table("p"))
        else:
            conf = kernels[1](g, p, g_keys, p_keys, _table("g"), _table("p"), p_negative + 1 if p_negative >= 0 else -1)
    except kernels[2]:  # maps of a kind the kernel cannot compile for: the numpy path counts them
        return None
    return conf if conf.size else None


def match_segments(
    conf: np.ndarray,
    gt_ids: np.ndarray,
    gt_category: np.ndarray,
    gt_crowd: np.ndarray,
    gt_area: np.ndarray,
    pred_category: np.ndarray,
    pred_area: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """panopticapi's matching on :func:`count_pairs`' counts ``conf (G + 2, P + 2)``: the true positives'
    ground-truth rows ``(T,) int64`` in ground-truth id order and their IoUs ``(T,) float64``, and the
    false-positive ``(P,) bool`` and false-negative ``(G,) bool`` masks — as :func:`prn_data.pq.pq_image`'s
    numpy matching finds them. None when the kernel is off."""
    kernels = _compiled() if ENABLED else None
    if kernels is None:
        return None
    i64 = np.int64
    return kernels[3](conf, np.asarray(gt_ids, i64), np.asarray(gt_category, i64), np.asarray(gt_crowd, np.bool_),
                      np.asarray(gt_area, i64), np.asarray(pred_category, i64), np.asarray(pred_area, i64))


__all__ = ["count_pairs", "match_segments", "available", "ENABLED", "LUT_SIZE"]
