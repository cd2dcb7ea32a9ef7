"""``prn info``: a store's summary, its arrays' layout and compression, and its provenance.

Works on any URL :func:`prn_data.store.open_store` opens (directory, zip, ``http(s)://``, fsspec), read-only.
Sizes are bytes as stored (what a copy or a download costs); the compression ratio is the decoded size of
the *done* samples over their stored size (chunks never written count as neither).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import zarr
from rich.console import Console
from rich.table import Table
from zarr.abc.codec import Codec

from .store import open_store

# Root attributes shown in the summary, each under the first of its candidate names present (the rest of
# the attributes go to the provenance section, so nothing recorded is hidden).
_SUMMARY_KEYS: dict[str, tuple[str, ...]] = {
    "prn_schema": ("prn_schema",),
    "dataset": ("dataset_name", "dataset"),
    "split": ("split",),
    "base": ("base", "base_network", "base_spec"),
    "canvas": ("canvas", "canvas_size"),
    "label_divisor": ("label_divisor",),
}


def _codec_str(codec: Codec) -> str:
    """``"zstd(level=3)"`` from a zarr codec object."""
    d = codec.to_dict()
    conf = d.get("configuration") or {}
    args = ", ".join(f"{k}={v}" for k, v in conf.items() if not isinstance(v, (list, tuple, dict)))
    return f"{d['name']}({args})" if args else str(d["name"])


def array_info(array: zarr.Array, n_done: int | None = None, stored: int | None = None) -> dict:
    """Layout and size of one ``zarr.Array``: path, shape, dtype, chunks, shards (``None`` when not
    sharded), dimension names, codec chain (filters → serializer → compressors, inside the shard), stored
    bytes, decoded bytes of the done samples, and their ratio. ``n_done`` scales the decoded size when the
    first axis is the sample axis. ``stored``: the stored bytes when known (the build's record,
    :func:`recorded_sizes`); otherwise they are summed over a listing of the array's objects."""
    shape = tuple(int(s) for s in array.shape)
    codecs = [*array.filters, array.serializer, *array.compressors]
    stored = int(array.nbytes_stored()) if stored is None else int(stored)
    nbytes = int(array.nbytes)
    if n_done is not None and shape and shape[0] > 0:
        nbytes = nbytes * n_done // shape[0]
    return {
        "path": array.path,
        "shape": list(shape),
        "dtype": "string" if array.dtype.kind in "OTU" else str(array.dtype),
        "chunks": list(array.chunks),
        "shards": None if array.shards is None else list(array.shards),
        "dimension_names": None if array.metadata.dimension_names is None else list(array.metadata.dimension_names),
        "codecs": [_codec_str(c) for c in codecs if c is not None],
        "stored_bytes": stored,
        "nbytes": nbytes,
        "ratio": (nbytes / stored) if stored else None,
    }


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


#: Root attribute in which the build records each array's stored bytes: ``{"samples_done": n, "arrays":
#: {path: bytes}}`` (:func:`record_sizes`).
SIZES_ATTR = "stored_bytes"


def record_sizes(group: zarr.Group, n_done: int) -> dict:
    """The attribute value :data:`SIZES_ATTR` for ``group`` as it is now: each array's stored bytes (its
    objects, ``zarr.json`` included, listed once here, at the end of the build) and the done count it is
    valid for."""
    arrays = {p: a for p, a in group.members(max_depth=None) if isinstance(a, zarr.Array)}
    return {"samples_done": int(n_done), "arrays": {p: int(a.nbytes_stored()) for p, a in sorted(arrays.items())}}


def recorded_sizes(attrs: dict, paths: list[str], n_done: int) -> dict[str, int] | None:
    """The build's record of the arrays' stored bytes when it covers ``paths`` and was made at ``n_done``
    done samples (a build interrupted after that point has changed the shards), else None."""
    rec = attrs.get(SIZES_ATTR)
    if not isinstance(rec, dict) or rec.get("samples_done") != n_done:
        return None
    sizes = rec.get("arrays")
    if not isinstance(sizes, dict) or not all(isinstance(sizes.get(p), int) for p in paths):
        return None
    return {p: sizes[p] for p in paths}


def store_info(url: str) -> dict:
    """Everything ``prn info`` shows, as a JSON-ready dict:

    - ``summary``: ``prn_schema``, ``dataset``, ``split``, ``base``, ``canvas``, ``label_divisor``,
      ``samples_total``, ``samples_done``, ``num_categories``;
    - ``arrays``: one :func:`array_info` per array, sorted by path;
    - ``totals``: ``stored_bytes``, ``nbytes``, ``ratio``, ``stored_bytes_per_sample``;
    - ``provenance``: every other root attribute (package version, git revision, creation time, target
      and resize parameters, …).

    Reads the consolidated metadata and the ``done`` chunks only, whatever the number of samples (README
    "At COCO scale"): the stored bytes come from the build's record (:data:`SIZES_ATTR`). A store without a
    valid record (built before it existed, or an interrupted build) has its objects listed instead, which
    over HTTP means one request per object.
    """
    store = open_store(str(url), mode="r")
    group = store.group
    attrs = dict(store.attrs)
    summary: dict[str, Any] = {}
    used = {"categories", SIZES_ATTR}
    for key, names in _SUMMARY_KEYS.items():
        name = next((n for n in names if n in attrs), None)
        summary[key] = attrs.get(name) if name else None
        if name:
            used.add(name)
    members = dict(group.members(max_depth=None))
    arrays = {p: a for p, a in members.items() if isinstance(a, zarr.Array)}
    if "done" in arrays:
        done = np.asarray(arrays["done"][:], dtype=bool)
        n_total, n_done = int(done.shape[0]), int(done.sum())
    else:
        n_total = int(arrays["image"].shape[0]) if "image" in arrays else 0
        n_done = 0
    summary["samples_total"] = n_total
    summary["samples_done"] = n_done
    summary["num_categories"] = len(attrs.get("categories") or [])
    sizes = recorded_sizes(attrs, list(arrays), n_done) or {}
    rows = [
        array_info(arrays[p], n_done if arrays[p].ndim and arrays[p].shape[0] == n_total else None, sizes.get(p))
        for p in sorted(arrays)
    ]
    stored = sum(r["stored_bytes"] for r in rows)
    nbytes = sum(r["nbytes"] for r in rows)
    totals = {
        "stored_bytes": stored,
        "nbytes": nbytes,
        "ratio": nbytes / stored if stored else None,
        "stored_bytes_per_sample": stored / n_done if n_done else None,
    }
    provenance = {k: v for k, v in attrs.items() if k not in used}
    return _jsonable(
        {"url": str(url), "summary": summary, "arrays": rows, "totals": totals, "provenance": provenance}
    )


def _human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _short_codec(text: str) -> str:
    """``zstd(level=3, checksum=False)`` → ``zstd(level=3)``; ``bytes(endian=little)`` → ``bytes``."""
    text = text.replace(", checksum=False", "").replace("(checksum=False)", "")
    return "bytes" if text.startswith("bytes(") else text


def render_info(info: dict, console: Console) -> None:
    """Print :func:`store_info`'s dict as rich tables on ``console``."""
    s = info["summary"]
    head = Table(title=f"prn store {info['url']}", show_header=False, box=None)
    for k in ("dataset", "split", "base", "prn_schema", "canvas", "label_divisor", "num_categories"):
        head.add_row(k, str(s.get(k)))
    head.add_row("samples", f"{s['samples_done']} done / {s['samples_total']}")
    t = info["totals"]
    head.add_row(
        "stored", f"{_human(t['stored_bytes'])} ({_human(t['stored_bytes_per_sample'])} per sample, "
        f"ratio {t['ratio'] or 0:.2f})"
    )
    console.print(head)
    tab = Table(title="arrays")
    for col in ("path", "shape", "dtype", "chunks", "shards", "codecs", "stored", "ratio"):
        tab.add_column(col, justify="right" if col in ("stored", "ratio") else "left")
    for r in info["arrays"]:
        tab.add_row(
            r["path"],
            "×".join(map(str, r["shape"])),
            r["dtype"],
            "×".join(map(str, r["chunks"])),
            "-" if r["shards"] is None else "×".join(map(str, r["shards"])),
            " → ".join(_short_codec(c) for c in r["codecs"]),
            _human(r["stored_bytes"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
        )
    console.print(tab)
    prov = Table(title="provenance", show_header=False, box=None)
    for k, v in info["provenance"].items():
        prov.add_row(k, v if isinstance(v, str) else json.dumps(v))
    console.print(prov)


__all__ = ["array_info", "store_info", "render_info", "record_sizes", "recorded_sizes", "SIZES_ATTR"]
