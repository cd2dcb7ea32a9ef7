"""prn verify: checksums of every sample, --deep recomputation from the source dataset, read-only opening."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from prn_data.testing import build_sample_store, run_prn
from prn_data.verify import verify_store


@pytest.fixture(scope="session")
def built_store(tmp_path_factory) -> Path:
    return build_sample_store(tmp_path_factory)


@pytest.fixture
def store_copy(built_store, tmp_path) -> Path:
    dst = tmp_path / built_store.name
    shutil.copytree(built_store, dst)
    return dst


def _shard_chunk_ranges(shard_file: Path, n_chunks: int) -> list[tuple[int, int]]:
    """(offset, nbytes) of each chunk of a zarr v3 shard, from its index at the end of the file:
    n_chunks × (uint64 offset, uint64 nbytes) little endian, then a 4-byte CRC32C."""
    blob = shard_file.read_bytes()
    index = np.frombuffer(blob[-(16 * n_chunks + 4) : -4], dtype="<u8").reshape(n_chunks, 2)
    return [(int(o), int(n)) for o, n in index]


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_ok_and_deep(built_store):
    proc = run_prn("verify", built_store, "--deep", "2")
    assert proc.stdout.strip().startswith("OK") and "2 samples checked, 2 recomputed" in proc.stdout
    rep = verify_store(str(built_store), deep=1, seed=3)
    assert rep.ok and rep.checked == 2 and len(rep.deep_checked) == 1 and rep.bad == []


@pytest.mark.parametrize("array,sample", [("gt/panoptic", 1), ("image", 0), ("base/instance", 1)])
def test_flipped_byte_names_exactly_that_sample(store_copy, array, sample):
    # Both samples live in shard 0 of every map array (shard size 2); damage only one sample's chunk.
    ndim = 4 if array in ("image", "base/instance") else 3
    shard = store_copy / array / "c" / Path(*["0"] * ndim)
    offset, nbytes = _shard_chunk_ranges(shard, 2)[sample]
    assert nbytes > 16
    _flip_byte(shard, offset + nbytes // 2)
    rep = verify_store(str(store_copy))
    assert not rep.ok and rep.problems == []
    assert [b.index for b in rep.bad] == [sample] and rep.bad[0].image_id
    assert verify_store(str(store_copy), workers=2).to_json() == rep.to_json()
    if array == "gt/panoptic":  # the command's own output and exit status, once
        text = run_prn("verify", store_copy, check=False)
        assert text.returncode == 1
        bad_lines = [ln for ln in text.stdout.splitlines() if ln.startswith("BAD")]
        assert len(bad_lines) == 1 and bad_lines[0].startswith(f"BAD sample {sample} ")
        assert text.stdout.strip().splitlines()[-1].startswith("FAILED: 1 bad samples")


def test_damaged_shard_index_names_every_sample_of_that_shard(store_copy):
    shard = store_copy / "gt" / "semantic" / "c" / "0" / "0" / "0"
    _flip_byte(shard, shard.stat().st_size - 10)  # inside the chunk index, guarded by its CRC32C
    rep = verify_store(str(store_copy))
    assert sorted(b.index for b in rep.bad) == [0, 1]


def test_not_done_sample_is_reported(store_copy):
    import zarr

    zarr.open_array(store_copy / "done", mode="r+")[1] = False
    rep = verify_store(str(store_copy))
    assert [(b.index, "not done" in b.problem) for b in rep.bad] == [(1, True)]


def _edit_root_attrs(store: Path, **changes) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            meta["attributes"][key].update(value)
        else:
            meta["attributes"][key] = value
    (store / "zarr.json").write_text(json.dumps(meta))


def test_deep_detects_ground_truth_that_differs_from_the_dataset(store_copy):
    # Claim σ = 6 while the maps were made with σ = 8: checksums still hold, the recomputation does not.
    _edit_root_attrs(store_copy, target_params={"sigma": 6.0})
    assert verify_store(str(store_copy)).ok
    rep = verify_store(str(store_copy), deep=2)
    assert not rep.ok and rep.bad_indices == [0, 1] and sorted(rep.deep_checked) == [0, 1]
    problems = [b.problem for b in rep.bad]
    assert all(p.startswith("deep: gt/center:") for p in problems), problems


def test_missing_attribute_is_a_schema_problem(store_copy):
    meta = json.loads((store_copy / "zarr.json").read_text())
    del meta["attributes"]["git_revision"]
    (store_copy / "zarr.json").write_text(json.dumps(meta))
    rep = verify_store(str(store_copy))
    assert rep.problems == ["attribute 'git_revision' is missing"] and rep.bad == [] and not rep.ok


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_reading_never_writes(store_copy, tmp_path):
    before = _snapshot(store_copy)
    paths = [store_copy, *store_copy.rglob("*")]
    for p in paths:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        run_prn("info", store_copy)
        run_prn("verify", store_copy, "--deep", "1")
        # stats and show read through the same opening; in-process keeps the test short.
        from prn_data.cli.inspect import show, stats

        stats(str(store_copy), as_json=True, workers=2)
        show(str(store_copy), 0, None, tmp_path / "ro.png", 20)
    finally:
        for p in paths:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    assert _snapshot(store_copy) == before
    # (Run as root the permission bits do not stop writes; the unchanged snapshot is the check that counts.)
    assert (tmp_path / "ro.png").is_file()


def test_missing_array_is_a_schema_problem(store_copy):
    meta = json.loads((store_copy / "zarr.json").read_text())
    meta["consolidated_metadata"]["metadata"].pop("gt/foreground")
    (store_copy / "zarr.json").write_text(json.dumps(meta))
    shutil.rmtree(store_copy / "gt" / "foreground")
    rep = verify_store(str(store_copy))
    assert rep.problems == ["array 'gt/foreground' is missing"] and not rep.ok and rep.checked == 0
