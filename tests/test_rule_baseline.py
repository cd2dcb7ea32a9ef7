"""The no-learning rule baseline (score threshold + filling thing-labelled VOID regions) on a hand-made case."""

from __future__ import annotations

import numpy as np

from prn_data.panoptic_io import refresh_segments
from prn_data.records import VOID, Segment
from prn_data.rule_baseline import RuleParams, rule_baseline, semantic_labels
from prn_data.testing import CATS

SKY, PERSON, CAR = 100_000, 1001, 3001  # CATS: sky (train 0), person (1), grass (2), car (3)


def case():
    """40×40 sky; person A (score 0.9) and person B (0.3); a VOID square the semantic map calls car, a 1-px
    VOID sliver it calls person, a VOID square it calls sky."""
    pan = np.full((40, 40), SKY, np.int32)
    labels = np.zeros((40, 40), np.int64)
    pan[2:10, 2:10] = PERSON
    labels[2:10, 2:10] = 1
    pan[2:10, 20:30] = 1002
    labels[2:10, 20:30] = 1  # B's pixels are person in the semantic map too
    pan[20:32, 2:14] = VOID
    labels[20:32, 2:14] = 3  # 144 px of car nobody claimed
    pan[20:32, 20] = VOID
    labels[20:32, 20] = 1  # a sliver: gone after the opening
    pan[34:38, 30:38] = VOID  # VOID, labelled sky: not a thing, left alone
    segs = [Segment(SKY, 100, 0, False), Segment(PERSON, 1, 1, True, score=0.9),
            Segment(1002, 1, 1, True, score=0.3)]
    return pan, refresh_segments(pan, segs), labels


def test_threshold_and_fill():
    pan, segs, labels = case()
    before = pan.copy()
    out, out_segs = rule_baseline(pan, segs, labels, CATS, RuleParams(threshold=0.5, min_area=50, open=1))
    assert np.array_equal(pan, before)  # inputs untouched
    by_id = {s.id: s for s in out_segs}
    # A kept as it was; B (0.3 < 0.5) removed, and its person-labelled pixels filled as a new person, numbered
    # after A
    assert by_id[PERSON].score == 0.9 and by_id[PERSON].area == 64
    assert 1002 in by_id and by_id[1002].score is None and by_id[1002].area == 80
    assert (out[2:10, 20:30] == 1002).all()
    # the car-labelled VOID square becomes car instance 1
    assert by_id[CAR].category_id == 3 and by_id[CAR].area == 144 and (out[20:32, 2:14] == CAR).all()
    # the sliver and the sky-labelled VOID stay VOID; sky is untouched
    assert (out[20:32, 20] == VOID).all() and (out[34:38, 30:38] == VOID).all()
    assert by_id[SKY].area == int((before == SKY).sum())
    assert sorted(by_id) == [PERSON, 1002, CAR, SKY]


def test_min_area_and_threshold_off():
    pan, segs, labels = case()
    out, out_segs = rule_baseline(pan, segs, labels, CATS, RuleParams(threshold=0.0, min_area=200, open=1))
    # nothing below the threshold, no region large enough: the base as it was
    assert np.array_equal(out, pan) and [s.id for s in out_segs] == [s.id for s in segs]


def test_semantic_labels_sample_pixel_centres():
    probs = np.zeros((4, 2, 3), np.float32)
    probs[0] = 1.0
    probs[3, 1, 2] = 2.0  # bottom-right quarter pixel is car
    labels = semantic_labels(probs, (8, 12))
    assert labels.shape == (8, 12) and labels.dtype == np.int64
    assert (labels[4:, 8:] == 3).all() and (labels[:4] == 0).all() and (labels[:, :8] == 0).all()
