"""``prn verify``: is a store (a copy, a download, a share) complete and intact?

Three levels:

1. **Schema and attributes**: :func:`prn_data.store.open_store` accepts it (a prn store of this schema
   version), the root attributes a reader needs are present, every array of the schema exists with shape
   ``(N, …)`` and its dtype.
2. **Every sample**: marked ``done``, readable (every chunk decodes), and its stored ``checksum`` equals
   the BLAKE2b digest recomputed from the values read back (:meth:`prn_data.store.Store.sample_checksum`).
   A flipped byte inside one sample's chunk fails exactly that sample; a damaged shard index fails the
   samples of that shard.
3. **``--deep N``**: N random done samples are recomputed from the source dataset recorded in the store
   (:func:`prn_data.datasets.open_recorded`, which only reads where the store points: a synthetic dataset
   missing there is generated again under ``cache/regenerated/``; the stored resize policy, then
   :func:`prn_data.targets.compute_targets`, README "Conventions" / paper §3.2) and compared with the stored ground
   truth: integer maps exactly, offsets within 1/16 px, heatmaps within 1e-3, the image exactly (within 8
   levels on average for a lossy JPEG / JPEG XL image).

Opening is read-only: nothing is ever written to the store.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .datasets import Dataset, open_recorded
from .errors import PrnError
from .resize import ResizePolicy, resize_sample
from .store import Store, open_store
from .targets import TargetParams, compute_targets

REQUIRED_ATTRS = (
    "prn_schema", "dataset", "split", "categories", "label_divisor", "resize_policy", "canvas",
    "target_params", "base", "package_version", "git_revision", "created", "n_samples", "shard_size",
)

# Deep comparison tolerances by stored path (absolute, in decoded units); absent = exact.
_TOLERANCE = {
    "gt/center": 1e-3,
    "gt/center_offset": 1.0 / 16,
    "gt/box_offset": 1.0 / 16,
}


@dataclass
class BadSample:
    """One failed sample: index, its image id (when readable) and what is wrong."""

    index: int
    image_id: str | None
    problem: str

    def __str__(self) -> str:
        who = f"sample {self.index}" + (f" ({self.image_id})" if self.image_id else "")
        return f"{who}: {self.problem}"


@dataclass
class VerifyReport:
    """Result of :func:`verify_store`. ``ok`` when no problem, no bad sample and every sample done."""

    url: str
    n_samples: int = 0
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    bad: list[BadSample] = field(default_factory=list)
    deep_checked: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.bad

    @property
    def bad_indices(self) -> list[int]:
        return sorted({b.index for b in self.bad})

    def to_json(self) -> dict:
        return {
            "url": self.url,
            "ok": self.ok,
            "n_samples": self.n_samples,
            "checked": self.checked,
            "problems": list(self.problems),
            "bad": [{"index": b.index, "image_id": b.image_id, "problem": b.problem} for b in self.bad],
            "deep_checked": list(self.deep_checked),
        }


def check_schema(store: Store) -> list[str]:
    """Problems with the root attributes and the arrays' presence, shapes and dtypes (``[]`` if none)."""
    problems = [f"attribute {k!r} is missing" for k in REQUIRED_ATTRS if k not in store.attrs]
    n = len(store)
    for path, d in store.defs.items():
        try:
            a = store.group[path]
        except KeyError:
            problems.append(f"array {path!r} is missing")
            continue
        want_shape = (n,) + tuple(d.shape)
        if tuple(a.shape) != want_shape:
            problems.append(f"array {path!r} has shape {tuple(a.shape)}, expected {want_shape}")
        got = "str" if a.dtype.kind in "OTU" else str(a.dtype)
        if got != d.dtype:
            problems.append(f"array {path!r} has dtype {got}, expected {d.dtype}")
    return problems


def _image_id(store: Store, i: int) -> str | None:
    try:
        return str(store.array("image_id")[i]) or None
    except Exception:
        return None


def check_sample(store: Store, i: int, done: bool, stored_checksum: int) -> str | None:
    """Why sample ``i`` is bad, or ``None``: not done, unreadable (a chunk fails to decode), or its
    checksum differs from the one recomputed from its values."""
    if not done:
        return "not done (build incomplete or failed for it)"
    try:
        actual = store.sample_checksum(i)
    except Exception as exc:  # a damaged chunk raises whatever its codec raises
        return f"unreadable ({type(exc).__name__}: {exc})"
    if actual != stored_checksum:
        return f"checksum mismatch (stored {stored_checksum:016x}, recomputed {actual:016x})"
    return None


def _compare(path: str, stored: np.ndarray, fresh: np.ndarray, lossy_image: bool) -> str | None:
    if stored.shape != fresh.shape:
        return f"{path}: shape {stored.shape} stored, {fresh.shape} recomputed"
    if path == "image" and lossy_image:
        err = float(np.abs(stored.astype(np.float32) - fresh.astype(np.float32)).mean())
        return None if err <= 8 else f"image: mean difference {err:.1f} levels"
    tol = _TOLERANCE.get(path)
    if tol is None:
        n = int((stored != fresh).sum())
        return None if n == 0 else f"{path}: {n} pixel values differ"
    err = float(np.abs(stored.astype(np.float64) - fresh.astype(np.float64)).max()) if stored.size else 0.0
    # A hair above the tolerance is float32 rounding of q·scale, not a wrong value.
    return None if err <= tol + 1e-6 else f"{path}: max difference {err:.4g} > {tol:.4g}"


def deep_check(store: Store, i: int, *, dataset: Dataset, policy: ResizePolicy, params: TargetParams) -> list[str]:
    """Recompute sample ``i`` from ``dataset`` and compare with the store; the differences found."""
    out = []
    stored = store.read_sample(i)
    raw = dataset.load(i)
    s = resize_sample(raw, policy)
    if str(raw.image_id) != stored["image_id"]:
        return [f"the dataset's sample {i} is {raw.image_id}, the store has {stored['image_id']}"]
    if tuple(s.size) != tuple(stored["size"]):
        return [f"size {tuple(stored['size'])} stored, {tuple(s.size)} recomputed"]
    if tuple(int(v) for v in raw.orig_size) != tuple(stored["orig_size"]):
        out.append(f"orig_size {tuple(stored['orig_size'])} stored, {tuple(raw.orig_size)} recomputed")
    t = compute_targets(s.panoptic, s.segments, params, source=s.file_name)
    fresh = {"image": np.moveaxis(s.image, -1, 0)} | {f"gt/{k}": v for k, v in t.items()}
    # JPEG / JPEG XL image chunks are lossy; the lossless codecs are the zstd and Blosc families.
    lossy = not str(store.attrs.get("image_codec", "zstd")).startswith(("zstd", "blosc"))
    for path, v in fresh.items():
        if path not in stored:
            out.append(f"{path}: not in the store")
            continue
        msg = _compare(path, np.asarray(stored[path]), np.asarray(v), lossy)
        if msg:
            out.append(msg)
    segs = [seg.to_json() for seg in s.segments]
    if stored.get("gt/segments") != segs:
        out.append("gt/segments differ from the recomputed segments")
    return out


def default_workers() -> int:
    """Reader threads when none are asked for: the cores, at most 4. The checksum pass is range reads
    and CRC-32 of encoded bytes, which release the GIL: ``benchmarks/verify.py`` measured 1.5–2.0× with 2
    threads and 1.6–2.7× with 4 on the shared 2-core dev machine (synthetic:16, best of 3)."""
    return max(1, min(4, os.cpu_count() or 1))


def verify_store(
    url: str,
    *,
    deep: int = 0,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> VerifyReport:
    """Verify the store at ``url`` (levels 1–3 above) with ``workers`` threads (default
    :func:`default_workers`). Raises :class:`~prn_data.errors.StoreError` only when it cannot be opened as
    a prn store at all; everything else is collected in the report, bad samples in index order."""
    store = open_store(str(url), mode="r")
    report = VerifyReport(url=str(url), n_samples=len(store))
    report.problems += check_schema(store)
    if any(p.startswith("array ") for p in report.problems):
        return report  # samples cannot be checked against a broken layout; attribute problems alone can
    n = len(store)
    done = store.done
    sums = np.asarray(store.values("checksum"), dtype=np.uint64)
    total = n + min(deep, int(done.sum()))

    def one(i: int) -> str | None:
        return check_sample(store, i, bool(done[i]), int(sums[i]))

    with ThreadPoolExecutor(max(1, workers or default_workers())) as pool:
        for i, problem in enumerate(pool.map(one, range(n))):
            if problem:
                report.bad.append(BadSample(i, _image_id(store, i), problem))
            report.checked += 1
            if progress:
                progress(i + 1, total)
    if deep > 0:
        report.deep_checked = _deep(store, report, deep=deep, seed=seed, progress=progress, start=n, total=total)
    return report


def _deep(
    store: Store,
    report: VerifyReport,
    *,
    deep: int,
    seed: int,
    progress: Callable[[int, int], None] | None,
    start: int,
    total: int,
) -> list[int]:
    """Level 3: recompute ``deep`` random done samples not already bad, adding their differences to
    ``report``; the indices checked."""
    bad_now = set(report.bad_indices)
    candidates = [i for i in np.flatnonzero(store.done).tolist() if i not in bad_now]
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(candidates, size=min(deep, len(candidates)), replace=False).tolist()) if candidates else []
    try:
        dataset = open_recorded(store.attrs["dataset"], max_samples=len(store))
        policy = ResizePolicy.from_json(store.attrs["resize_policy"])
        params = TargetParams.from_json(store.attrs["target_params"])
    except (PrnError, KeyError, TypeError, ValueError, OSError) as exc:  # OSError: cache/ not writable
        report.problems.append(f"--deep: cannot reopen the source dataset ({exc})")
        return []
    if len(dataset) < len(store):
        report.problems.append(f"--deep: the source dataset has {len(dataset)} samples, the store {len(store)}")
        return []
    for k, i in enumerate(picked):
        try:
            diffs = deep_check(store, i, dataset=dataset, policy=policy, params=params)
        except PrnError as exc:
            diffs = [f"cannot recompute ({exc})"]
        for d in diffs:
            report.bad.append(BadSample(i, _image_id(store, i), f"deep: {d}"))
        if progress:
            progress(start + k + 1, total)
    return picked


__all__ = ["REQUIRED_ATTRS", "BadSample", "VerifyReport", "check_schema", "check_sample", "deep_check", "verify_store"]
