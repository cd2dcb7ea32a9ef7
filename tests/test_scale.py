"""What keeps a store's costs flat in its number of samples (README "At COCO scale"): opening reads the
consolidated metadata only, that metadata does not grow with the sample count, ``prn info`` reads no more
than opening does (no listing: the build records each array's stored bytes), and ``prn verify`` reads each
small-array chunk and shard index once, not once per sample. Structural checks (objects read, bytes), never
timings; ``benchmarks/scale.py`` measures the times."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from prn_data.datasets.synthetic import synthetic_categories
from prn_data.inspect import SIZES_ATTR, store_info
from prn_data.store import SMALL_CHUNK, core, create_store, open_store
from prn_data.testing import build_tiny_store, run_prn
from prn_data.verify import verify_store
from http_serving import Behaviour, serve

COCO_TRAIN2017 = 118_287


@pytest.fixture
def gets(monkeypatch) -> Counter:
    """Counts, by key, the objects every store opened by :func:`open_store` is asked for."""
    seen: Counter = Counter()
    real = core.zarr_store

    def counted(url: str, mode: str = "r"):
        zs = real(url, mode)
        get = zs.get

        async def counting_get(key, prototype, byte_range=None):
            seen[key] += 1
            return await get(key, prototype, byte_range)

        zs.get = counting_get
        return zs

    monkeypatch.setattr(core, "zarr_store", counted)
    return seen


def _empty_store(path: Path, n: int) -> str:
    st = create_store(path, n=n, canvas=(32, 32), categories=synthetic_categories(), has_base=True,
                      attrs={"dataset": {"spec": "synthetic:1"}, "split": "train", "base": "simulated",
                             "target_params": {"small_instance_weight": 3.0}})
    st.consolidate()
    return str(path)


def test_consolidated_metadata_does_not_grow_with_the_sample_count(tmp_path):
    small = _empty_store(tmp_path / "small.zarr", 10)
    big = _empty_store(tmp_path / "big.zarr", COCO_TRAIN2017)
    a, b = (Path(s, "zarr.json").read_bytes() for s in (small, big))
    # only the digits of the sample axis differ (one shape per array, "10" → "118287"): no per-sample list
    n_arrays = len(json.loads(a)["consolidated_metadata"]["metadata"])
    assert 0 < len(b) - len(a) <= 4 * n_arrays + 8
    assert len(b) < 64_000


def test_opening_reads_the_consolidated_metadata_and_the_done_chunks_only(tmp_path, gets):
    url = _empty_store(tmp_path / "big.zarr", COCO_TRAIN2017)
    st = open_store(url)
    assert list(gets) == ["zarr.json"] and gets["zarr.json"] == 1  # no per-array metadata, no listing
    assert len(st) == COCO_TRAIN2017
    gets.clear()
    done = st.done
    assert done.shape == (COCO_TRAIN2017,) and not done.any()
    n_chunks = -(-COCO_TRAIN2017 // SMALL_CHUNK)
    assert sorted(gets) == sorted(f"done/c/{k}" for k in range(n_chunks))  # each done chunk once
    assert set(gets.values()) == {1}


def test_verify_reads_each_small_chunk_and_shard_index_once(tmp_path, gets):
    url = build_tiny_store(tmp_path / "s.zarr", n=5, short=32, max_long=32)
    gets.clear()
    rep = verify_store(url, workers=1)
    assert rep.ok and rep.checked == 5
    st = open_store(url)
    small = [p for p, d in st.defs.items() if not d.sharded]
    for p in small:  # one chunk (5 samples < SMALL_CHUNK), read once, not once per sample
        keys = [k for k in gets if k.startswith(f"{p}/c/")]
        assert len(keys) == 1 and gets[keys[0]] == 1, (p, keys, [gets[k] for k in keys])
    for p in st.map_paths:  # one shard: its index once (suffix read), then one range read per sample
        key = next(k for k in gets if k.startswith(f"{p}/c/"))
        assert gets[key] == 1 + 5, (p, gets[key])


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_info_over_http_reads_the_metadata_and_done_only(tmp_path):
    url = build_tiny_store(tmp_path / "s.zarr", n=5, short=32, max_long=32)
    seen = Behaviour()
    with serve(tmp_path, ranges=True, behaviour=seen) as base:
        remote = json.loads(run_prn("info", "--json", f"{base}/s.zarr").stdout)
    # the root zarr.json (consolidated metadata) and the one done chunk: no listing, no per-array object
    assert set(seen.paths) == {"/s.zarr/zarr.json", "/s.zarr/done/c/0"}, seen.paths
    assert remote["summary"]["samples_done"] == 5
    # the recorded sizes are what the files under each array's folder occupy
    for row in remote["arrays"]:
        assert row["stored_bytes"] == _dir_bytes(tmp_path / "s.zarr" / row["path"]), row["path"]
    assert SIZES_ATTR not in remote["provenance"]


def test_info_lists_the_objects_when_the_record_does_not_match(tmp_path):
    url = build_tiny_store(tmp_path / "s.zarr", n=3, short=32, max_long=32)
    st = open_store(url, mode="r+")
    rec = st.attrs[SIZES_ATTR]
    fake = {"samples_done": rec["samples_done"], "arrays": {p: 1 for p in rec["arrays"]}}
    st.set_attrs(**{SIZES_ATTR: fake})
    st.consolidate()
    assert {r["stored_bytes"] for r in store_info(url)["arrays"]} == {1}  # a matching record is used as is
    st.set_attrs(**{SIZES_ATTR: {**fake, "samples_done": 2}})  # made before the last samples were done
    st.consolidate()
    for row in store_info(url)["arrays"]:
        assert row["stored_bytes"] == _dir_bytes(Path(url) / row["path"]), row["path"]
