"""``prn build``: stores built with Dask equal the targets computed directly; failures are reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from prn_data.base import open_base
from prn_data.base.encode import encode_base
from prn_data.build import BuildConfig, build, default_out, plan_canvas, sanitize
from prn_data.datasets import open_dataset
from prn_data.errors import StoreError
from prn_data.resize import ResizePolicy, resize_sample
from prn_data.store import open_store
from prn_data.targets import TargetParams, compute_targets

KEEP = ResizePolicy(short=0)  # synthetic scenes at their small native size keep the tests fast


def direct(dataset, base, i: int, policy: ResizePolicy, params: TargetParams = TargetParams()) -> dict:
    """What sample ``i`` must decode to, computed here without the build: resize, targets, base inputs."""
    raw = dataset.load(i)
    s = resize_sample(raw, policy)
    t = compute_targets(s.panoptic, s.segments, params)
    want = {"image": s.image.transpose(2, 0, 1), "size": s.size, "orig_size": tuple(raw.panoptic.shape),
            "image_id": s.image_id, "file_name": s.file_name,
            "gt/segments": [seg.to_json() for seg in s.segments]} | {f"gt/{k}": v for k, v in t.items()}
    if base is not None:
        b = encode_base(base.predict([raw])[0], s.size, len(dataset.categories), params)
        want |= {"base/instance": b["instance"], "base/semantic": b["semantic"], "base/panoptic": b["panoptic"],
                 "base/segments": b["segments"]}
    return want


TOL = {"gt/center": 1e-3, "base/semantic": 1e-3, "gt/center_offset": 1 / 16, "gt/box_offset": 1 / 16}


def assert_sample_equal(got: dict, want: dict) -> None:
    assert set(want) <= set(got)
    for k, v in want.items():
        g = got[k]
        if isinstance(v, np.ndarray):
            assert g.shape == v.shape and g.dtype == v.dtype, k
            if k in TOL:
                assert np.abs(g - v).max(initial=0) <= TOL[k], k
            elif k == "base/instance":
                assert np.abs(g[0] - v[0]).max(initial=0) <= 1e-3
                assert np.abs(g[1:] - v[1:]).max(initial=0) <= 1 / 16
            else:
                np.testing.assert_array_equal(g, v, err_msg=k)
        else:
            assert g == v, k


def assert_store_matches(url, dataset, base, policy) -> None:
    st = open_store(url)
    assert st.done.all()
    for i in range(len(st)):
        assert_sample_equal(st.read_sample(i), direct(dataset, base, i, policy))
        assert st.verify_sample(i)


@pytest.fixture()
def scenes(tmp_path) -> Path:
    """Eight synthetic scenes written in the COCO panoptic layout (split ``train``) under tmp_path."""
    from prn_data.datasets.synthetic import write_synthetic

    root = tmp_path / "scenes"
    write_synthetic(root, "train", 8)
    return root


def test_sanitize_default_out_and_canvas(coco_sample):
    assert sanitize("files:/data/preds v2") == "files-data-preds-v2"
    assert default_out("coco", "val2017", "python:my.mod:make") == "cache/coco-val2017-python-my.mod-make.zarr"
    ds = open_dataset(f"coco:{coco_sample}", "val2017")
    # (427, 640) → ×1.25 → (534, 800); (360, 640) → (450, 800); each side up to a multiple of 32
    assert plan_canvas(ds, 2, ResizePolicy()) == (544, 800)
    assert plan_canvas(ds, 2, ResizePolicy(short=0)) == (448, 640)


@pytest.mark.parametrize("base_spec", ["none", "simulated"])
def test_coco_sample_equals_direct_targets(tmp_path, coco_sample, base_spec):
    out = tmp_path / "coco.zarr"
    res = build(BuildConfig(f"coco:{coco_sample}", "val2017", base=base_spec, out=str(out), scheduler="threads",
                            workers=1))
    assert res.ok and (res.built, res.skipped, res.n_samples) == (2, 0, 2)
    st = open_store(out)
    assert st.canvas == (544, 800) and st.has_base == (base_spec != "none")
    a = st.attrs
    assert a["split"] == "val2017" and a["base"] == base_spec and a["label_divisor"] == 1000
    assert a["target_params"]["sigma"] == 8.0 and a["resize_policy"]["short"] == 640
    assert a["dataset"]["gt"]["json"].endswith("panoptic_val2017.json") and a["package_version"]
    assert len(a["categories"]) == 133 and a["complete"] is True
    assert (out / "zarr.json").is_file() and "consolidated_metadata" in json.loads((out / "zarr.json").read_text())
    ds = open_dataset(f"coco:{coco_sample}", "val2017")
    assert_store_matches(out, ds, open_base(base_spec, ds.categories), ResizePolicy())
    if base_spec != "none":
        assert st.read_sample(0)["base/semantic"].shape == (133, 134, 200)  # ⌈534/4⌉, 800/4


@pytest.mark.slow
def test_synthetic_on_a_two_process_local_cluster(tmp_path, scenes):
    from distributed import LocalCluster

    out = tmp_path / "syn.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        res = build(BuildConfig(f"coco:{scenes}", "train", base="simulated", out=str(out), shard_size=3,
                                scheduler=cluster.scheduler_address, policy=KEEP))
    assert res.ok and res.built == 8
    # 13 map arrays × ⌈8/3⌉ = 3 whole shards, 8 small arrays × 1 chunk and 8 coordinate arrays × 1 chunk:
    # files scale with shards
    assert len([p for p in out.rglob("*") if p.is_file() and p.name != "zarr.json"]) == 13 * 3 + 8 + 8
    ds = open_dataset(f"coco:{scenes}", "train")
    assert_store_matches(out, ds, open_base("simulated", ds.categories), KEEP)


def test_corrupt_image_is_listed_then_filled_in(tmp_path, scenes):
    from typer.testing import CliRunner

    from prn_data.cli import app

    bad = scenes / "train" / "train_000005.png"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[:200])  # truncated PNG
    out = tmp_path / "c.zarr"
    args = ["build", f"coco:{scenes}", "--split", "train", "--out", str(out), "--scheduler", "threads",
            "--workers", "2", "--shard-size", "3", "--short", "0"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    assert "train_000005.png" in r.output and "1 failed" in r.output and "samples/s" in r.output
    st = open_store(out)
    assert st.done.tolist() == [True] * 5 + [False] + [True] * 2
    assert [f["index"] for f in st.failures] == [5] and "train_000005.png" in st.failures[0]["file"]
    ds = open_dataset(f"coco:{scenes}", "train")
    before = {i: st.read_raw(i) for i in (3, 4, 6)}  # shard 1 = samples 3, 4, 5
    for i in (0, 4, 7):
        assert_sample_equal(st.read_sample(i), direct(ds, None, i, KEEP))

    bad.write_bytes(good_bytes)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "1 built, 7 already done, 0 failed" in r.output
    st = open_store(out)
    assert st.done.all() and st.failures == []
    assert_sample_equal(st.read_sample(5), direct(ds, None, 5, KEEP))
    for i, raw in before.items():  # nothing already written changed
        for k, v in raw.items():
            np.testing.assert_array_equal(np.asarray(st.read_raw(i)[k]), np.asarray(v))
        assert st.verify_sample(i)


def test_resume_with_other_settings_is_refused(tmp_path, scenes):
    out = str(tmp_path / "r.zarr")
    cfg = dict(dataset=f"coco:{scenes}", split="train", out=out, scheduler="threads", workers=1, limit=2)
    build(BuildConfig(**cfg, policy=KEEP))
    with pytest.raises(StoreError, match="resize_policy"):
        build(BuildConfig(**cfg, policy=ResizePolicy(short=200, max_long=300)))
    res = build(BuildConfig(**cfg, policy=ResizePolicy(short=200, max_long=300), overwrite=True))
    assert res.built == 2 and open_store(out).attrs["resize_policy"]["short"] == 200
    shutil.rmtree(out)


def test_cli_target_parameters_are_recorded_and_used(tmp_path, scenes):
    """``prn build --sigma --small-instance-area``: recorded in the store, the targets and the base inputs
    computed with them; resuming with another sigma is refused; a bad value is a one-line error."""
    from prn_data.testing import run_prn

    out = tmp_path / "s.zarr"
    args = [f"coco:{scenes}", "--split", "train", "--short", "0", "--limit", "2", "--workers", "1",
            "--base", "simulated", "--out", out]
    run_prn("build", *args, "--sigma", "2.5", "--small-instance-area", "100")
    st = open_store(str(out))
    assert st.attrs["target_params"]["sigma"] == 2.5 and st.attrs["target_params"]["small_instance_area"] == 100
    assert st.attrs["target_params"]["patch_size"] == 19  # 2·(⌊3σ + ½⌋ + 1) + 1
    params = TargetParams(sigma=2.5, small_instance_area=100)
    ds = open_dataset(f"coco:{scenes}", "train")
    for i in range(2):
        assert_sample_equal(st.read_sample(i), direct(ds, open_base("simulated", ds.categories), i, KEEP, params))
    # the default σ = 8 would have given wider Gaussians: the stored ones are not those
    s0 = resize_sample(ds.load(0), KEEP)
    assert compute_targets(s0.panoptic, s0.segments)["center"].sum() > st.read_sample(0)["gt/center"].sum()
    again = run_prn("build", *args, "--sigma", "3", check=False)
    assert again.returncode == 2 and "target_params" in again.stderr and "Traceback" not in again.stderr
    bad = run_prn("build", *args, "--sigma", "0", "--overwrite", check=False)
    assert bad.returncode == 2 and "sigma must be a positive number" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
