"""Ground-truth targets on tiny hand-made label maps (README "Conventions"), checked pixel by pixel."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prn_data.errors import DatasetError, StoreError
from prn_data.records import Segment
from prn_data.targets import TargetParams, compute_targets, encode_instances, gaussian_patch

# The 6×8 scene. S: stuff (category 50, train 2); A, C: two touching instances of category 1 (train 0);
# B: an instance of category 3 (train 1) touching the top and right borders; K: a crowd region of
# category 1; V: VOID.
S, A, C, B, K, V = 50000, 1001, 1002, 3001, 1003, -1
PAN = np.array(
    [
        [S, S, S, S, S, S, S, B],
        [S, S, A, A, C, C, S, B],
        [S, S, A, A, C, C, S, B],
        [V, S, A, A, C, S, S, S],
        [V, V, K, K, K, S, S, S],
        [V, V, K, K, S, S, S, S],
    ],
    dtype=np.int32,
)
SEGMENTS = [
    Segment(S, 50, 2, isthing=False),
    Segment(A, 1, 0, isthing=True),
    Segment(C, 1, 0, isthing=True),
    Segment(B, 3, 1, isthing=True),
    Segment(K, 1, 0, isthing=True, iscrowd=True),
]
# Centers of mass, by hand: A rows 1,2,3 × cols 2,3; C rows (1,1,2,2,3), cols (4,5,4,5,4); B rows 0..2, col 7.
CENTERS = {A: (2.0, 2.5), C: (9 / 5, 22 / 5), B: (1.0, 7.0)}
# Rounded half up: A's cx = 2.5 → 3 (round-half-to-even would give 2).
PEAKS = {A: (2, 3), C: (2, 4), B: (1, 7)}
MASKS = {k: PAN == k for k in (S, A, C, B, K)}
INSTANCE = MASKS[A] | MASKS[C] | MASKS[B]
P1 = TargetParams(sigma=1.0)


def expected_heatmap(shape, sigma, scores=None):
    """Max over instances of exp(-(dy² + dx²) / 2σ²), zero beyond ⌊3σ + ½⌋ + 1 px from the peak."""
    half = math.floor(3 * sigma + 0.5) + 1
    out = np.zeros(shape, dtype=np.float32)
    for sid, (py, px) in PEAKS.items():
        s = 1.0 if scores is None else scores.get(sid, 1.0)
        for y in range(shape[0]):
            for x in range(shape[1]):
                if abs(y - py) <= half and abs(x - px) <= half:
                    g = np.float32(math.exp(-((y - py) ** 2 + (x - px) ** 2) / (2 * sigma**2)) * s)
                    out[y, x] = max(out[y, x], g)
    return out


def test_semantic_foreground_and_panoptic():
    t = compute_targets(PAN, SEGMENTS, P1)
    expected = np.array(
        [
            [2, 2, 2, 2, 2, 2, 2, 1],
            [2, 2, 0, 0, 0, 0, 2, 1],
            [2, 2, 0, 0, 0, 0, 2, 1],
            [255, 2, 0, 0, 0, 2, 2, 2],
            [255, 255, 0, 0, 0, 2, 2, 2],
            [255, 255, 0, 0, 2, 2, 2, 2],
        ],
        dtype=np.uint8,
    )
    fg = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 1],
            [0, 0, 1, 1, 1, 1, 0, 1],
            [0, 0, 1, 1, 1, 1, 0, 1],
            [0, 0, 1, 1, 1, 0, 0, 0],
            [0, 0, 1, 1, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0, 0, 0],
        ],
        dtype=np.uint8,
    )
    assert t["semantic"].dtype == np.uint8 and t["foreground"].dtype == np.uint8
    np.testing.assert_array_equal(t["semantic"], expected)
    np.testing.assert_array_equal(t["foreground"], fg)
    assert t["panoptic"].dtype == np.int32
    np.testing.assert_array_equal(t["panoptic"], PAN)
    assert not np.shares_memory(t["panoptic"], PAN)


def test_weights():
    t = compute_targets(PAN, SEGMENTS, P1)
    # Every thing segment is smaller than 4096 px: weight 3 (crowd included), stuff 1, VOID 0.
    sem_w = np.array(
        [
            [1, 1, 1, 1, 1, 1, 1, 3],
            [1, 1, 3, 3, 3, 3, 1, 3],
            [1, 1, 3, 3, 3, 3, 1, 3],
            [0, 1, 3, 3, 3, 1, 1, 1],
            [0, 0, 3, 3, 3, 1, 1, 1],
            [0, 0, 3, 3, 1, 1, 1, 1],
        ],
        dtype=np.float32,
    )
    ctr_w = np.array(
        [
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 1],
            [0, 1, 1, 1, 1, 1, 1, 1],
            [0, 0, 0, 0, 0, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 1, 1],
        ],
        dtype=np.float32,
    )
    off_w = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 1],
            [0, 0, 1, 1, 1, 1, 0, 1],
            [0, 0, 1, 1, 1, 1, 0, 1],
            [0, 0, 1, 1, 1, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=np.float32,
    )
    for key, exp in (("semantic_weight", sem_w), ("center_weight", ctr_w), ("offset_weight", off_w)):
        assert t[key].dtype == np.float32 and t[key].shape == (6, 8), key
        np.testing.assert_array_equal(t[key], exp, err_msg=key)


def test_small_instance_threshold_is_strict_and_counts_crowd():
    # Areas: A 6, C 5, B 3, K (crowd) 5. With threshold 6 only A (area == 6) is not small.
    t = compute_targets(PAN, SEGMENTS, TargetParams(sigma=1.0, small_instance_area=6, small_instance_weight=2.5))
    exp = np.where(PAN == V, 0.0, 1.0)
    exp[MASKS[C] | MASKS[B] | MASKS[K]] = 2.5
    np.testing.assert_array_equal(t["semantic_weight"], exp.astype(np.float32))


def test_center_offsets():
    t = compute_targets(PAN, SEGMENTS, P1)
    co = t["center_offset"]
    assert co.shape == (2, 6, 8) and co.dtype == np.float32
    exp = np.zeros((2, 6, 8), dtype=np.float32)
    for sid, (cy, cx) in CENTERS.items():
        for y, x in zip(*np.nonzero(MASKS[sid])):
            exp[0, y, x] = cy - y
            exp[1, y, x] = cx - x
    np.testing.assert_array_equal(co, exp)
    # A few by hand: A at (1, 2) → (2 - 1, 2.5 - 2); C at (3, 4) → (1.8 - 3, 4.4 - 4); B at (0, 7) → (1, 0).
    assert co[:, 1, 2].tolist() == [1.0, 0.5]
    assert co[:, 3, 4].tolist() == [np.float32(9 / 5 - 3), np.float32(22 / 5 - 4)]
    assert co[:, 0, 7].tolist() == [1.0, 0.0]
    # Crowd, stuff and VOID: exactly +0.0 (no negative zeros).
    off = ~INSTANCE
    assert not np.signbit(co[:, off]).any() and not co[:, off].any()


def test_box_offsets():
    t = compute_targets(PAN, SEGMENTS, P1)
    bo = t["box_offset"]
    assert bo.shape == (4, 6, 8) and bo.dtype == np.float32
    # Boxes (inclusive): A rows 1..3 cols 2..3; C rows 1..3 cols 4..5; B rows 0..2 col 7.
    top = [
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 1],
        [0, 0, 1, 1, 1, 1, 0, 2],
        [0, 0, 2, 2, 2, 0, 0, 0],
        [0] * 8,
        [0] * 8,
    ]
    bottom = [
        [0, 0, 0, 0, 0, 0, 0, 2],
        [0, 0, 2, 2, 2, 2, 0, 1],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0] * 8,
        [0] * 8,
    ]
    left = [
        [0] * 8,
        [0, 0, 0, 1, 0, 1, 0, 0],
        [0, 0, 0, 1, 0, 1, 0, 0],
        [0, 0, 0, 1, 0, 0, 0, 0],
        [0] * 8,
        [0] * 8,
    ]
    right = [
        [0] * 8,
        [0, 0, 1, 0, 1, 0, 0, 0],
        [0, 0, 1, 0, 1, 0, 0, 0],
        [0, 0, 1, 0, 1, 0, 0, 0],
        [0] * 8,
        [0] * 8,
    ]
    np.testing.assert_array_equal(bo, np.array([top, bottom, left, right], dtype=np.float32))
    assert not np.signbit(bo).any()


def test_center_heatmap():
    t = compute_targets(PAN, SEGMENTS, P1)
    c = t["center"]
    assert c.shape == (1, 6, 8) and c.dtype == np.float32
    np.testing.assert_array_equal(c[0], expected_heatmap((6, 8), 1.0))
    for py, px in PEAKS.values():
        assert c[0, py, px] == 1.0
    # (2, 2) sits between A's peak (1 px) and C's (2 px): the max is A's exp(-1/2).
    assert c[0, 2, 2] == np.float32(math.exp(-0.5))
    # The crowd region gets no Gaussian of its own: its rounded center (4, 3) is 2 px below A's peak.
    assert c[0, 4, 3] == np.float32(math.exp(-2.0))


def test_all_keys_dtypes_shapes():
    t = compute_targets(PAN, SEGMENTS)
    shapes = {
        "semantic": ((6, 8), np.uint8),
        "center": ((1, 6, 8), np.float32),
        "center_offset": ((2, 6, 8), np.float32),
        "box_offset": ((4, 6, 8), np.float32),
        "foreground": ((6, 8), np.uint8),
        "semantic_weight": ((6, 8), np.float32),
        "center_weight": ((6, 8), np.float32),
        "offset_weight": ((6, 8), np.float32),
        "panoptic": ((6, 8), np.int32),
    }
    assert set(t) == set(shapes)
    for k, (shape, dtype) in shapes.items():
        assert t[k].shape == shape and t[k].dtype == dtype, k
    # With the default σ = 8 every peak is still 1.0 and the whole 6×8 map lies inside each patch.
    np.testing.assert_array_equal(t["center"][0], expected_heatmap((6, 8), 8.0))


def test_encode_instances_matches_targets_and_scales_by_score():
    t = compute_targets(PAN, SEGMENTS, P1)
    center, co, bo, w = encode_instances(PAN, SEGMENTS, 1.0)
    np.testing.assert_array_equal(center, t["center"])
    np.testing.assert_array_equal(co, t["center_offset"])
    np.testing.assert_array_equal(bo, t["box_offset"])
    np.testing.assert_array_equal(w, t["offset_weight"])
    scores = {A: 0.5, B: 0.25, K: 0.9}  # C has no score → 1.0; the crowd's score is irrelevant
    center, co2, _, _ = encode_instances(PAN, SEGMENTS, 1.0, scores)
    np.testing.assert_array_equal(center[0], expected_heatmap((6, 8), 1.0, scores))
    # At A's peak C's Gaussian (1 px away, score 1) exceeds A's 0.5: exp(-1/2) ≈ 0.607.
    assert center[0, 1, 7] == np.float32(0.25) and center[0, 2, 3] == np.float32(math.exp(-0.5))
    assert center[0, 2, 4] == 1.0
    np.testing.assert_array_equal(co2, co)


def test_gaussian_patch_extent_and_values():
    sigma = 8.0
    assert TargetParams().patch_size == 6 * 8 + 3 == 51
    assert gaussian_patch(2.0).shape == (15, 15)
    assert gaussian_patch(2.5).shape == (19, 19)  # 2·⌊7.5 + ½⌋ + 3
    # One pixel instance at (50, 60) in a 100×120 map: nonzero exactly on the 51×51 patch.
    pan = np.full((100, 120), -1, dtype=np.int32)
    pan[50, 60] = 1001
    c = compute_targets(pan, [Segment(1001, 1, 0, True)])["center"][0]
    rows, cols = np.nonzero(c)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (25, 75, 35, 85)
    assert len(rows) == 51 * 51
    assert c.max() == 1.0 and c[50, 60] == 1.0
    assert c[25, 35] == np.float32(math.exp(-(25**2 + 25**2) / (2 * sigma**2)))
    assert c[50, 61] == np.float32(math.exp(-1 / (2 * sigma**2)))


def test_gaussian_clipped_at_border_and_rounded_half_up():
    pan = np.full((60, 60), -1, dtype=np.int32)
    pan[0, 0] = 1001
    pan[40, 40:42] = 1002  # cx = 40.5 → peak at column 41
    segs = [Segment(1001, 1, 0, True), Segment(1002, 1, 0, True)]
    c = compute_targets(pan, segs)["center"][0]
    assert c[0, 0] == 1.0 and c[40, 41] == 1.0
    assert c[40, 40] == np.float32(math.exp(-1 / 128))
    # Corner patch clipped to rows/cols 0..25; the other's rows 15..59, cols 16..59 (65, 66 clipped).
    assert c[25, 0] > 0 and c[26, 0] == 0 and c[0, 25] > 0 and c[0, 26] == 0
    assert c[40, 59] == np.float32(math.exp(-(18**2) / 128))
    assert np.count_nonzero(c) == 26 * 26 + 45 * 44 - 11 * 10


def test_segments_absent_from_map_are_skipped_and_order_free():
    extra = Segment(7001, 7, 3, True)
    t1 = compute_targets(PAN, SEGMENTS, P1)
    t2 = compute_targets(PAN, [extra] + SEGMENTS[::-1], P1)
    for k in t1:
        np.testing.assert_array_equal(t1[k], t2[k], err_msg=k)


def test_sparse_ids_take_the_sorting_path():
    # Ids far above any lookup table size must give the same maps as small ids.
    big = {S: 2_000_000_000, A: 1_900_000_001, C: 1_900_000_002, B: 1_500_000_001, K: 1_900_000_003}
    pan = PAN.copy()
    for old, new in big.items():
        pan[PAN == old] = new
    segs = [Segment(big[s.id], s.category_id, s.train_id, s.isthing, s.iscrowd) for s in SEGMENTS]
    t1, t2 = compute_targets(PAN, SEGMENTS, P1), compute_targets(pan, segs, P1)
    for k in t1:
        if k != "panoptic":
            np.testing.assert_array_equal(t1[k], t2[k], err_msg=k)


def test_target_params_json_roundtrip():
    p = TargetParams()
    assert (p.sigma, p.small_instance_area, p.small_instance_weight, p.label_divisor) == (8.0, 4096, 3.0, 1000)
    d = p.to_json()
    assert d == {"sigma": 8.0, "small_instance_area": 4096, "small_instance_weight": 3.0, "label_divisor": 1000,
                 "patch_size": 51}
    q = TargetParams(sigma=10.0, small_instance_area=100, small_instance_weight=2.0, label_divisor=256)
    assert TargetParams.from_json(q.to_json()) == q
    with pytest.raises(StoreError, match="sigma"):
        TargetParams.from_json({"small_instance_area": 1, "small_instance_weight": 1, "label_divisor": 1})
    with pytest.raises(ValueError):
        TargetParams(sigma=0)


@pytest.mark.parametrize(
    "pan, segs, problem",
    [
        (np.where(PAN == S, 9000, PAN), SEGMENTS, r"ids \[9000\] have no segment"),
        (np.where(PAN == V, -2, PAN), SEGMENTS, "holds id -2"),
        (PAN, SEGMENTS + [Segment(A, 1, 0, True)], r"listed more than once: \[1001\]"),
        (PAN, [Segment(S, 50, 255, False)] + SEGMENTS[1:], "train id 255"),
        (PAN.astype(np.float32), SEGMENTS, "integer ids"),
        (PAN[None], SEGMENTS, r"\(H, W\)"),
    ],
)
def test_bad_input_names_the_source(pan, segs, problem):
    with pytest.raises(DatasetError, match=problem) as err:
        compute_targets(pan, segs, source="x/000001.png")
    assert str(err.value).startswith("x/000001.png: ")


def test_bad_scores_and_sigma():
    with pytest.raises(DatasetError, match=r"segments \[1001\] have scores"):
        encode_instances(PAN, SEGMENTS, 1.0, {A: -0.5}, source="pred/1.png")
    with pytest.raises(DatasetError, match="not finite"):
        encode_instances(PAN, SEGMENTS, 1.0, {A: float("nan")})
    with pytest.raises(ValueError, match="sigma"):
        encode_instances(PAN, SEGMENTS, 0.0)


@pytest.mark.parametrize("seed", range(6))
def test_random_scenes_match_per_segment_reference(seed):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "targets.py"
    spec = importlib.util.spec_from_file_location("prn_bench_targets", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(seed)
    h, w = rng.integers(20, 70, size=2)
    pan = np.full((h, w), 7000, dtype=np.int32)  # stuff background
    pan[rng.random((h, w)) < 0.05] = -1
    segs = [Segment(7000, 7, 3, False)]
    for k in range(1, rng.integers(2, 12)):
        y, x = rng.integers(-5, h), rng.integers(-5, w)
        pan[max(y, 0) : y + rng.integers(1, 25), max(x, 0) : x + rng.integers(1, 25)] = 1000 + k
        segs.append(Segment(1000 + k, 1, k % 3, True, iscrowd=bool(k % 4 == 0)))
    present = set(np.unique(pan).tolist())
    segs = [s for s in segs if s.id in present]
    params = TargetParams(sigma=3.0, small_instance_area=50, small_instance_weight=2.0)
    t = compute_targets(pan, segs, params)
    ref = bench.reference_targets(pan, segs, sigma=3.0, small_instance_area=50, small_instance_weight=2.0)
    for k in ref:
        np.testing.assert_array_equal(t[k], ref[k], err_msg=k)
    scores = {s.id: float(rng.uniform(0, 1)) for s in segs}
    center = encode_instances(pan, segs, 3.0, scores)[0]
    np.testing.assert_array_equal(center, bench.reference_targets(pan, segs, sigma=3.0, scores=scores)["center"])


@pytest.mark.parametrize("lut_per_run", [0, 10**9])
def test_noisy_and_strided_maps_match_reference_on_both_id_paths(monkeypatch, lut_per_run):
    # One-pixel runs (a noisy map) and non-contiguous views, through the binary-search (0) and the
    # lookup-table (10**9) id → segment paths.
    import importlib.util
    from pathlib import Path

    from prn_data import targets

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "targets.py"
    spec = importlib.util.spec_from_file_location("prn_bench_targets", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(targets, "_MAX_LUT_PER_RUN", lut_per_run)
    rng = np.random.default_rng(11)
    ids = [-1, 7000, 1001, 1002, 1003]
    pan = rng.choice(ids, size=(40, 30), p=[0.1, 0.2, 0.35, 0.25, 0.1]).astype(np.int64)
    pan[5:20, 3:25] = 1002  # a solid block among the noise
    segs = [
        Segment(7000, 7, 3, False),
        Segment(1001, 1, 0, True),
        Segment(1002, 1, 1, True),
        Segment(1003, 2, 2, True, iscrowd=True),
    ]
    kw = {"sigma": 2.0, "small_instance_area": 400, "small_instance_weight": 2.0}
    params = TargetParams(**kw)
    for p in (pan, pan.T, pan[::2, ::3]):
        t = compute_targets(p, segs, params)
        ref = bench.reference_targets(p, segs, **kw)
        for k in ref:
            np.testing.assert_array_equal(t[k], ref[k], err_msg=k)
    np.testing.assert_array_equal(compute_targets(pan, segs, params)["semantic_weight"][pan == 1001], 2.0)
    np.testing.assert_array_equal(compute_targets(pan, segs, params)["semantic_weight"][pan == 1002], 1.0)
