"""The synthetic dataset's three splits (train / val / test) are disjoint sets of scenes."""

from __future__ import annotations

import numpy as np

from prn_data.datasets import open_dataset
from prn_data.datasets.synthetic import SPLITS, make_scene


def test_three_splits_share_no_scene():
    assert SPLITS == ("train", "val", "test")
    seen: dict[bytes, str] = {}
    for split in SPLITS:
        for i in range(15):
            scene = make_scene(split, i)
            key = scene.image.tobytes()
            assert key not in seen, (split, i, seen.get(key))
            seen[key] = f"{split}_{i}"
    assert make_scene("test", 3).image_id == "test_000003"
    assert np.array_equal(make_scene("test", 3).panoptic, make_scene("test", 3).panoptic)


def test_test_split_opens_like_the_others(tmp_path):
    ds = open_dataset("synthetic:2", "test", root=str(tmp_path / "s"))
    assert len(ds) == 2 and ds.split == "test"
    sample = ds.load(1)
    assert sample.image_id == "test_000001"
    assert np.array_equal(sample.panoptic, make_scene("test", 1).panoptic)
