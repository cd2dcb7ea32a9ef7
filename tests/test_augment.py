"""Augmentations (prn_model.augment): flip consistency with regenerated targets, GridMask, crop."""

from __future__ import annotations

import numpy as np
import pytest

from prn_data.records import Segment
from prn_data.targets import TargetParams, compute_targets, encode_instances
from prn_model.augment import (
    AugmentConfig,
    GridMaskConfig,
    augment,
    crop,
    gridmask,
    gridmask_keep,
    hflip,
    random_crop,
)

CANVAS = (32, 48)
VALID = (24, 37)  # odd width, padding on the right and at the bottom
PARAMS = TargetParams(sigma=2.0, small_instance_area=40)


def _scene() -> tuple[np.ndarray, list[Segment]]:
    """A hand-made label map: stuff, two touching things of one class (one L-shaped, so its center of mass
    is fractional), a crowd region, a thing on the valid region's right border, VOID, and padding."""
    H, W = CANVAS
    h, w = VALID
    pan = np.full((H, W), -1, dtype=np.int32)
    pan[:h, :w] = 5000  # stuff
    pan[2:8, 3:10] = 1001  # center of mass x = 6
    pan[10:16, 5:12] = 1002
    pan[16:18, 5:7] = 1002  # L-shape: x̄ = (42·8 + 4·5.5) / 46, not a half-integer
    pan[18:23, 20:31] = 2001  # crowd
    pan[3:10, 30:37] = 2002  # touches x = w - 1
    pan[0:2, 15:26] = -1  # VOID inside the valid region
    segs = [
        Segment(id=1001, category_id=1, train_id=0, isthing=True),
        Segment(id=1002, category_id=1, train_id=0, isthing=True),
        Segment(id=2001, category_id=2, train_id=1, isthing=True, iscrowd=True),
        Segment(id=2002, category_id=2, train_id=1, isthing=True),
        Segment(id=5000, category_id=5, train_id=2, isthing=False),
    ]
    return pan, segs


def _pad(a: np.ndarray, fill) -> np.ndarray:
    out = np.full(a.shape[:-2] + CANVAS, fill, dtype=a.dtype)
    out[..., : a.shape[-2], : a.shape[-1]] = a
    return out


def _sample(pan: np.ndarray, segs: list[Segment]) -> dict:
    """The per-sample Batch fields as a store holds them: computed on the valid region of the label map,
    then padded to the canvas (base input = the same map, each instance scored 0.5 / 0.9)."""
    h, w = VALID
    pv = pan[:h, :w]
    t = compute_targets(pv, segs, PARAMS)
    scores = {1001: 0.5, 1002: 0.9, 2002: 0.9}
    c, co, bo, _ = encode_instances(pv, segs, PARAMS.sigma, scores)
    valid = _pad(np.ones((h, w), dtype=bool), False)
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 256, size=(3,) + CANVAS, dtype=np.uint8),
        "instance": _pad(np.concatenate([c, co, bo]), 0),
        "semantic": _pad(t["semantic"], 255),
        "center": _pad(t["center"], 0),
        "center_offset": _pad(t["center_offset"], 0),
        "box_offset": _pad(t["box_offset"], 0),
        "foreground": _pad(t["foreground"], 0),
        "semantic_weight": _pad(t["semantic_weight"], 0),
        "center_weight": _pad(t["center_weight"], 0),
        "offset_weight": _pad(t["offset_weight"], 0),
        "foreground_weight": _pad((pv != -1).astype(np.float32), 0),
        "valid": valid,
        "size": np.array(VALID, dtype=np.int64),
    }


def _flip_labels(pan: np.ndarray, w: int) -> np.ndarray:
    out = pan.copy()
    out[:, :w] = pan[:, :w][:, ::-1]
    return out


def test_flip_equals_targets_of_flipped_labels():
    pan, segs = _scene()
    flipped = hflip(_sample(pan, segs))
    direct = _sample(_flip_labels(pan, VALID[1]), segs)
    for key in direct:
        if key == "image":
            continue
        np.testing.assert_array_equal(flipped[key], direct[key], err_msg=key)
    # The image is mirrored inside the valid region; the padding is untouched.
    original = _sample(pan, segs)["image"]
    np.testing.assert_array_equal(flipped["image"][:, :, : VALID[1]], original[:, :, VALID[1] - 1 :: -1])
    np.testing.assert_array_equal(flipped["image"][:, :, VALID[1] :], original[:, :, VALID[1] :])


def test_flip_hand_values():
    # Thing 1001 spans x = 3..9 (center x 6) in a valid width of 37: after the flip it spans 27..33,
    # center x 30. At the flipped pixel x' = 36 - 3 = 33 (the old left edge, now the right edge):
    # dx = 30 - 33 = -3 (was 6 - 3 = +3), left = 33 - 27 = 6 (was right = 9 - 3 = 6), right = 0 (was left 0).
    pan, segs = _scene()
    s = _sample(pan, segs)
    assert s["center_offset"][1, 4, 3] == 3.0
    assert tuple(s["box_offset"][:, 4, 3]) == (2.0, 3.0, 0.0, 6.0)
    f = hflip(s)
    assert f["center_offset"][1, 4, 33] == -3.0
    assert f["center_offset"][0, 4, 33] == 0.5  # dy = 4.5 - 4 is unchanged
    assert tuple(f["box_offset"][:, 4, 33]) == (2.0, 3.0, 6.0, 0.0)
    # instance input channels: heatmap, dy, dx, top, bottom, left, right (score 0.5 at the peak)
    assert f["instance"][0, 5, 30] == pytest.approx(0.5)
    assert tuple(f["instance"][1:, 4, 33]) == (0.5, -3.0, 2.0, 3.0, 6.0, 0.0)
    # Twice is the identity.
    np.testing.assert_array_equal(hflip(hflip(_sample(pan, segs)))["instance"], _sample(pan, segs)["instance"])


def test_flip_quarter_resolution_map():
    # A 2×3 quarter-resolution map for a valid width of 9 (⌈9/4⌉ = 3 columns) on a 16-wide canvas (4 cols).
    q = np.arange(2 * 4, dtype=np.float32).reshape(1, 2, 4)
    s = {"base_semantic": q.copy(), "size": np.array([8, 9])}
    hflip(s)
    np.testing.assert_array_equal(s["base_semantic"][0], [[2, 1, 0, 3], [6, 5, 4, 7]])


def test_gridmask_keep_mask_by_hand():
    keep = gridmask_keep((6, 8), d=4, hole=2, phase=(1, 3))
    # Rows dropped: (y - 1) % 4 < 2 → y ∈ {1, 2, 5}; cols: (x - 3) % 4 < 2 → x ∈ {0, 3, 4, 7}.
    rows = np.isin(np.arange(6), [1, 2, 5])
    cols = np.isin(np.arange(8), [0, 3, 4, 7])
    np.testing.assert_array_equal(keep, ~(rows[:, None] & cols[None, :]))
    assert (~keep).sum() == 12


def test_gridmask_changes_only_the_valid_image():
    pan, segs = _scene()
    s = _sample(pan, segs)
    before = {k: v.copy() for k, v in s.items()}
    s["image"][:] = 200
    gridmask(s, GridMaskConfig(prob=1.0, d_min=8, d_max=8, ratio=0.5, fill=7), np.random.default_rng(3))
    img = s["image"]
    h, w = VALID
    dropped = img[0, :h, :w] == 7
    # 4-px holes every 8 px: between 9 and 16 holes' worth of pixels fit in a 24×37 region (3 rows × 4–5 cols).
    assert 9 * 16 <= dropped.sum() <= 16 * 16
    assert dropped.sum() % 4 == 0
    assert (img[:, h:, :] == 200).all() and (img[:, :, w:] == 200).all()
    assert (img[0] == img[1]).all() and (img[1] == img[2]).all()
    for key in before:
        if key != "image":
            np.testing.assert_array_equal(s[key], before[key], err_msg=key)


def test_gridmask_probability_zero_is_identity():
    pan, segs = _scene()
    s = _sample(pan, segs)
    img = s["image"].copy()
    gridmask(s, GridMaskConfig(prob=0.0), np.random.default_rng(0))
    np.testing.assert_array_equal(s["image"], img)


def test_crop_is_consistent_across_resolutions():
    H, W = 64, 96
    s = {
        "image": np.arange(3 * H * W, dtype=np.int64).reshape(3, H, W),
        "base_semantic": np.arange(2 * (H // 4) * (W // 4)).reshape(2, H // 4, W // 4),
        "valid": np.zeros((H, W), dtype=bool),
        "size": np.array([50, 70]),
    }
    s["valid"][:50, :70] = True
    c = crop(s, (8, 12), (32, 64))
    assert c["image"].shape == (3, 32, 64)
    assert c["image"][0, 0, 0] == 8 * W + 12
    assert c["base_semantic"].shape == (2, 8, 16)
    assert c["base_semantic"][0, 0, 0] == 2 * (W // 4) + 3
    # valid rows 8..49 (42 ≥ 32) and cols 12..69 (58 < 64)
    assert tuple(c["size"]) == (32, 58)
    assert c["valid"].sum() == 32 * 58
    with pytest.raises(ValueError):
        crop(s, (2, 0), (32, 32))


def test_random_crop_stays_in_valid_region():
    H, W = 64, 96
    s = {"valid": np.zeros((H, W), dtype=bool), "size": np.array([40, 90])}
    s["valid"][:40, :90] = True
    for seed in range(20):
        c = random_crop(s, (32, 32), np.random.default_rng(seed))
        assert c["valid"].all()
        assert tuple(c["size"]) == (32, 32)


def test_augment_is_reproducible_from_the_generator():
    pan, segs = _scene()
    cfg = AugmentConfig(flip=True, flip_prob=0.5, gridmask=GridMaskConfig(prob=0.5, d_min=6, d_max=12))
    a = augment(_sample(pan, segs), cfg, np.random.default_rng([1, 2, 3]))
    b = augment(_sample(pan, segs), cfg, np.random.default_rng([1, 2, 3]))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
