"""Encoding a base prediction as PRN's inputs (§3.2): the targets' own code, probabilities at 1/4."""

from __future__ import annotations

import numpy as np
import pytest

from prn_data.base import BasePrediction, open_base
from prn_data.base.encode import encode_base, quarter_size, resize_probs
from prn_data.errors import BaseNetworkError
from prn_data.panoptic_io import refresh_segments
from prn_data.records import VOID, Segment
from prn_data.resize import resize_labels
from prn_data.targets import TargetParams, compute_targets, encode_instances
from prn_data.testing import CATS, make_sample


PARAMS = TargetParams()


def test_quarter_size_rounds_up():
    assert quarter_size((96, 128)) == (24, 32)
    assert quarter_size((534, 800)) == (134, 200)
    assert quarter_size((1, 5)) == (1, 2)


def test_hand_computed_rectangle_with_score():
    # One car (train id 3) on rows 4..9, cols 6..13 of a 20×24 grass map (train id 2), score 0.5.
    pan = np.full((20, 24), 101_000, np.int32)
    pan[4:10, 6:14] = 3001
    segs = refresh_segments(pan, [Segment(101_000, 101, 2, False), Segment(3001, 3, 3, True, score=0.5)])
    out = encode_base(BasePrediction(pan, segs), (20, 24), len(CATS), PARAMS)
    inst = out["instance"]
    assert inst.shape == (7, 20, 24) and inst.dtype == np.float32
    # Center of mass (6.5, 9.5) → Gaussian peak at (⌊7.0⌋, ⌊10.0⌋) = (7, 10), scaled by the score.
    assert inst[0].max() == pytest.approx(0.5) and inst[0, 7, 10] == pytest.approx(0.5)
    # Pixel (4, 6): center − pixel = (2.5, 3.5); box (y0, x0, y1, x1) = (4, 6, 9, 13).
    assert inst[1:3, 4, 6].tolist() == [2.5, 3.5]
    assert inst[3:7, 4, 6].tolist() == [0.0, 5.0, 0.0, 7.0]
    assert inst[3:7, 9, 13].tolist() == [5.0, 0.0, 7.0, 0.0]
    assert not inst[1:, pan == 101_000].any()
    # No probabilities from the base → one-hot of its labels at ⌈20/4⌉×⌈24/4⌉ = 5×6, sampled at rows
    # (2i+1)·20//10 = 2, 6, 10, 14, 18 and cols 2, 6, …, 22: only (6, 6) and (6, 10) hit the car.
    sem = out["semantic"]
    assert sem.shape == (4, 5, 6)
    expect = np.zeros((5, 6), np.int64) + 2
    expect[1, 1:3] = 3
    assert np.array_equal(sem.argmax(0), expect) and set(np.unique(sem)) == {0.0, 1.0}
    assert out["segments"][1] == {"id": 3001, "category_id": 3, "iscrowd": 0, "isthing": 1, "area": 48,
                                  "bbox": [6, 4, 8, 6], "score": 0.5}


def test_equals_targets_code_on_same_segments():
    s = make_sample(3, crowd=True)
    t = compute_targets(s.panoptic, s.segments, PARAMS)
    out = encode_base(BasePrediction(s.panoptic, s.segments), s.size, len(CATS), PARAMS)
    expect = np.concatenate([t["center"], t["center_offset"], t["box_offset"]])
    assert np.array_equal(out["instance"], expect)
    assert np.array_equal(out["panoptic"], s.panoptic)
    assert out["instance"][0].max() == 1.0  # no scores → peaks 1, like the targets


def test_resized_prediction_equals_targets_code_at_store_size():
    s = make_sample(5)
    pred = open_base("simulated:seed=2", CATS).predict([s])[0]
    size = (48, 64)
    out = encode_base(pred, size, len(CATS), PARAMS)
    pan = resize_labels(pred.panoptic, size)
    segs = refresh_segments(pan, pred.segments)
    scores = {q.id: q.score for q in segs if q.score is not None}
    c, o, b, _ = encode_instances(pan, segs, PARAMS.sigma, scores)
    assert np.array_equal(out["instance"], np.concatenate([c, o, b]))
    assert np.array_equal(out["panoptic"], pan)
    assert [d["id"] for d in out["segments"]] == [q.id for q in segs]
    # Scores scale the Gaussians: every peak is below 1.
    assert 0 < out["instance"][0].max() < 1


def test_void_is_uniform_and_probs_sum_to_one():
    pan = np.full((8, 8), VOID, np.int32)
    pan[:4] = 100_000
    segs = refresh_segments(pan, [Segment(100_000, 100, 0, False)])
    sem = encode_base(BasePrediction(pan, segs), (8, 8), 4, PARAMS)["semantic"]
    assert sem[:, 0].tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    assert np.all(sem[:, 1] == 0.25)
    empty = encode_base(BasePrediction.empty((8, 8)), (8, 8), 4, PARAMS)
    assert not empty["instance"].any() and np.all(empty["semantic"] == 0.25) and empty["segments"] == []


def test_own_probabilities_resized_and_renormalised():
    # Constant per class → the bilinear resize keeps the constants; a total of 2 is renormalised to 1.
    probs = np.stack([np.full((40, 40), 0.5), np.full((40, 40), 1.5), np.zeros((40, 40)), np.zeros((40, 40))])
    pan = np.full((40, 40), 100_000, np.int32)
    pred = BasePrediction(pan, refresh_segments(pan, [Segment(100_000, 100, 0, False)]), probs.astype(np.float32))
    sem = encode_base(pred, (20, 24), 4, PARAMS)["semantic"]
    assert sem.shape == (4, 5, 6)
    np.testing.assert_allclose(sem[:, 2, 3], [0.25, 0.75, 0.0, 0.0], atol=1e-6)
    # A left/right step upsampled 2 → 4 columns: bilinear with half-pixel centres gives 1, .75, .25, 0.
    step = np.zeros((2, 1, 2), np.float32)
    step[0, :, 0] = step[1, :, 1] = 1.0
    np.testing.assert_allclose(resize_probs(step, (1, 4))[0, 0], [1.0, 0.75, 0.25, 0.0], atol=1e-6)


def test_probabilities_survive_store_quantisation():
    from prn_data.store import decode, encode_maps, schema

    s = make_sample(1)
    pred = open_base("simulated", CATS).predict([s])[0]
    sem = encode_base(pred, (60, 80), len(CATS), PARAMS)["semantic"]
    np.testing.assert_allclose(sem.sum(0), 1.0, atol=1e-5)
    d = next(x for x in schema((64, 80), len(CATS), True) if x.path == "base/semantic")
    back = decode(d, encode_maps([d], {"base/semantic": sem})["base/semantic"])[:, :15, :20]
    # Rounding to 1/1024 steps errs by at most half a step per class.
    assert np.abs(back.sum(0) - 1.0).max() <= len(CATS) * 0.5 / 1024 + 1e-6


def test_bad_probabilities_raise_naming_the_image():
    pan = np.full((8, 8), 100_000, np.int32)
    segs = refresh_segments(pan, [Segment(100_000, 100, 0, False)])
    with pytest.raises(BaseNetworkError, match=r"image im9: probabilities have shape \(3, 2, 2\), expected \(4"):
        encode_base(BasePrediction(pan, segs, np.ones((3, 2, 2), np.float32), "im9"), (8, 8), 4, PARAMS)
    nan = np.ones((4, 2, 2), np.float32)
    nan[1, 0, 0] = np.nan
    with pytest.raises(BaseNetworkError, match="image im9: probabilities contain NaN"):
        encode_base(BasePrediction(pan, segs, nan, "im9"), (8, 8), 4, PARAMS)


def test_resize_probs_enlarging_matches_torch_bilinear():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    p = rng.random((5, 7, 9)).astype(np.float32)
    p /= p.sum(axis=0, keepdims=True)
    ref = F.interpolate(torch.from_numpy(p)[None], size=(13, 20), mode="bilinear", align_corners=False)[0].numpy()
    ref /= ref.sum(axis=0, keepdims=True)
    got = resize_probs(p, (13, 20))
    assert got.dtype == np.float32 and got.shape == (5, 13, 20)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    np.testing.assert_allclose(got.sum(axis=0), 1.0, atol=1e-5)
    # a zero-mass pixel becomes uniform; negative values clip at 0 before the sum
    q = np.zeros((4, 2, 2), np.float32)
    q[0, 0, 0], q[1, 0, 0], q[2, 1, 1] = 3.0, -1.0, 2.0
    out = resize_probs(q, (2, 2))
    assert out[:, 0, 0].tolist() == [1.0, 0.0, 0.0, 0.0] and out[:, 1, 1].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert out[:, 0, 1].tolist() == [0.25] * 4
