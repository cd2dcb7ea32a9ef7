"""Paired bootstrap interval of a PQ gain over images, on hand-computed counts."""

from __future__ import annotations

import numpy as np
import pytest

from prn_data.bootstrap import count_matrix, paired_bootstrap, pq_of_counts
from prn_data.pq import ImageStats, PQStat, pq_average
from prn_data.testing import CATS

IDS = [c.id for c in CATS]


def stats(tp: list[tuple[int, float]], fp: list[int] = (), fn: list[int] = ()) -> ImageStats:
    return ImageStats(np.array([c for c, _ in tp], np.int64), np.array([v for _, v in tp], np.float64),
                      np.array(fp, np.int64), np.array(fn, np.int64))


def test_identical_images_give_a_point_interval():
    # each image: the reference matches one person (IoU 0.8) and misses one, PQ = 0.8 / 1.5; the candidate
    # matches both (0.8, 0.9), PQ = 1.7 / 2. Resampling identical images cannot move either.
    ref = [stats([(1, 0.8)], fn=[1])] * 5
    cand = [stats([(1, 0.8), (1, 0.9)])] * 5
    got = paired_bootstrap(ref, cand, IDS, replicates=200, seed=3)
    gain = 100 * (1.7 / 2 - 0.8 / 1.5)
    assert got["gain"] == pytest.approx(gain)
    assert got["ci"] == pytest.approx([gain, gain])
    assert got["images"] == 5 and got["replicates"] == 200 and got["level"] == 0.95


def test_counts_reproduce_pq_average():
    rng = np.random.default_rng(0)
    images = []
    for _ in range(7):
        tp = [(int(rng.choice(IDS)), float(rng.uniform(0.5, 1))) for _ in range(int(rng.integers(0, 4)))]
        images.append(stats(tp, fp=list(rng.choice(IDS, int(rng.integers(0, 3)))),
                            fn=list(rng.choice(IDS, int(rng.integers(0, 3))))))
    stat = PQStat()
    for s in images:
        stat.add(s)
    assert pq_of_counts(count_matrix(images, IDS).sum(0)) == pytest.approx(pq_average(stat, CATS)["All"]["pq"])


def test_interval_is_seeded_and_brackets_a_mixed_gain():
    # half the images gain a matched car, half are unchanged: the gain is positive, the interval holds it
    ref = [stats([(3, 0.9)], fn=[3])] * 10 + [stats([(3, 0.9)])] * 10
    cand = [stats([(3, 0.9), (3, 0.7)])] * 10 + [stats([(3, 0.9)])] * 10
    a = paired_bootstrap(ref, cand, IDS, replicates=500, seed=1)
    b = paired_bootstrap(ref, cand, IDS, replicates=500, seed=1)
    c = paired_bootstrap(ref, cand, IDS, replicates=500, seed=2)
    assert a == b and a["ci"] != c["ci"]
    low, high = a["ci"]
    assert 0.0 < low < a["gain"] < high  # every image is at least as good: no replicate loses
    # the reverse comparison mirrors it
    r = paired_bootstrap(cand, ref, IDS, replicates=500, seed=1)
    assert r["ci"] == pytest.approx([-high, -low])


def test_needs_the_same_images():
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap([stats([])], [], IDS)
