"""Synthetic dataset: generated scenes read back by the COCO reader, determinism, content, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from prn_data.cli import app
from prn_data.datasets import open_dataset, open_described
from prn_data.datasets.synthetic import SyntheticConfig, is_complete, make_scene, write_synthetic
from prn_data.panoptic_io import segment_stats
from prn_data.records import VOID

N = 6


@pytest.fixture(scope="module")
def train_ds(tmp_path_factory):
    return open_dataset(f"synthetic:{N}", "train", root=tmp_path_factory.mktemp("syn"))


def test_read_back_equals_generated(train_ds):
    assert train_ds.name == "synthetic" and len(train_ds) == N
    assert train_ds.keys() == [f"train_{i:06d}" for i in range(N)]
    for i in range(N):
        scene = make_scene("train", i)
        s = train_ds.load(i)
        assert s.image_id == scene.image_id
        assert np.array_equal(s.image, scene.image)
        assert np.array_equal(s.panoptic, scene.panoptic)
        assert [g.to_json() for g in s.segments] == [g.to_json() for g in scene.segments]
        assert train_ds.orig_size(i) == scene.panoptic.shape


def test_scene_content(train_ds):
    cats = train_ds.categories
    assert [c.name for c in cats] == ["ellipse", "rectangle", "triangle", "stripes", "checkers", "speckle", "waves"]
    thing_classes, crowd, touching, sizes, stuff_per_image = set(), 0, 0, set(), []
    for i in range(N):
        s = train_ds.load(i)
        h, w = s.panoptic.shape
        assert 160 <= h <= 256 and 224 <= w <= 320
        sizes.add((h, w))
        # Ids follow the convention and areas/bboxes are the pixels'.
        stats = segment_stats(s.panoptic)
        assert set(stats) == {g.id for g in s.segments}
        for g in s.segments:
            assert stats[g.id] == (g.area, g.bbox)
            assert g.id // 1000 == g.category_id and (g.id % 1000 > 0) == g.isthing
        thing_classes |= {g.category_id for g in s.segments if g.isthing}
        crowd += sum(g.iscrowd for g in s.segments)
        stuff_per_image.append(sum(not g.isthing for g in s.segments))
        # Touching: two different thing segments 4-adjacent somewhere.
        pan = s.panoptic
        things = {g.id for g in s.segments if g.isthing}
        isthing = np.isin(pan, list(things))
        right = isthing[:, :-1] & isthing[:, 1:] & (pan[:, :-1] != pan[:, 1:])
        down = isthing[:-1] & isthing[1:] & (pan[:-1] != pan[1:])
        touching += int(right.any() or down.any())
        assert 0 < (pan == VOID).sum() < 0.05 * h * w  # thin seams only
    assert thing_classes == {1, 2, 3}
    assert crowd >= 1 and touching >= 2
    assert max(stuff_per_image) >= 2
    assert len(sizes) == N


def test_deterministic_and_splits_differ(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_synthetic(a, "val", 2)
    write_synthetic(b, "val", 2)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 6  # 2 images, 2 PNGs, JSON, marker
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    v, t = make_scene("val", 0), make_scene("train", 0)
    assert v.image.shape != t.image.shape or not np.array_equal(v.image, t.image)
    other_seed = make_scene("val", 0, SyntheticConfig(seed=1))
    assert other_seed.image.shape != v.image.shape or not np.array_equal(other_seed.image, v.image)


def test_reuse_when_complete_regenerate_otherwise(tmp_path):
    root = tmp_path / "s"
    ds = open_dataset("synthetic:2", "val", root=root, seed=3)
    json_path = root / "annotations" / "panoptic_val.json"
    stamp = json_path.stat().st_mtime_ns
    assert is_complete(root, "val", 2, SyntheticConfig(seed=3))
    open_dataset("synthetic:2", "val", root=root, seed=3)
    assert json_path.stat().st_mtime_ns == stamp  # not regenerated
    (root / "annotations" / "synthetic_val.json").unlink()  # an interrupted generation
    again = open_dataset("synthetic:2", "val", root=root, seed=3)
    assert again.keys() == ds.keys()
    assert json.loads(json_path.read_text())["info"]["seed"] == 3
    bigger = open_dataset("synthetic:3", "val", root=root, seed=3)  # other parameters: regenerated
    assert len(bigger) == 3
    d = json.loads(json.dumps(bigger.describe()))
    assert d["spec"] == "synthetic:3" and d["options"]["seed"] == 3
    assert open_described(d).keys() == bigger.keys()


def test_default_root_under_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = open_dataset("synthetic:1", "val", min_size=(40, 48), max_size=(40, 48))
    assert (tmp_path / "cache" / "synthetic" / "val-1" / "annotations" / "panoptic_val.json").is_file()
    assert ds.orig_size(0) == (40, 48)


def test_cli_writes_a_readable_dataset(tmp_path):
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["synthetic", str(out), "--split", "val", "--num", "2", "--seed", "5",
                                   "--min-size", "64x80", "--max-size", "72x96"])
    assert res.exit_code == 0, res.output
    ds = open_dataset(f"coco:{out}", "val")
    assert ds.keys() == ["val_000000", "val_000001"]
    scene = make_scene("val", 1, SyntheticConfig(seed=5, min_size=(64, 80), max_size=(72, 96)))
    assert np.array_equal(ds.load(1).panoptic, scene.panoptic)


def test_bare_synthetic_spec_has_eight_scenes(tmp_path):
    ds = open_dataset("synthetic", "val", root=tmp_path, min_size=(40, 48), max_size=(48, 64))
    assert len(ds) == 8 and ds.describe()["spec"] == "synthetic:8"
    assert all(40 <= ds.orig_size(i)[0] <= 48 and 48 <= ds.orig_size(i)[1] <= 64 for i in range(8))
