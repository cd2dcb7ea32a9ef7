import numpy as np

from prn_data.resize import ResizePolicy, nearest_indices, resize_labels


def test_policy_sizes():
    p = ResizePolicy()
    assert p.output_size(427, 640) == (534, 800)  # longer side capped: 800/640 * 427 = 533.75 → 534
    assert p.output_size(1024, 2048) == (400, 800)
    assert p.output_size(700, 700) == (640, 640)
    assert p.output_size(800, 600) == (800, 600)  # portrait: shorter 640 would make 853 > 800
    assert ResizePolicy(short=0).output_size(5, 7) == (5, 7)


def test_nearest_exact_indices_match_integer_formula():
    # 5 → 2: centres at 1.25, 3.75 → floor → 1, 3
    assert nearest_indices(5, 2).tolist() == [1, 3]
    # upsampling 2 → 5: (2i+1)*2//10 = 0,0,1,1,1
    assert nearest_indices(2, 5).tolist() == [0, 0, 1, 1, 1]
    lab = np.arange(20).reshape(4, 5)
    out = resize_labels(lab, (2, 2))
    assert out.tolist() == [[lab[1, 1], lab[1, 3]], [lab[3, 1], lab[3, 3]]]


def test_resize_image_enlarging_is_bilinear_and_shrinking_antialiased():
    from PIL import Image

    from prn_data.resize import resize_image

    # a horizontal ramp 0, 40, 80, 120 doubled in width: half-pixel centres put output x at source
    # (x + 0.5) / 2 - 0.5, i.e. -0.25 (clamped → 0), 0.25 → 10, 0.75 → 30, 1.25 → 50, … last clamps to 120
    ramp = np.repeat(np.repeat(np.array([[0, 40, 80, 120]], np.uint8), 2, axis=0)[..., None], 3, axis=2)
    up = resize_image(ramp, (2, 8))
    assert up[0, :, 0].tolist() == [0, 10, 30, 50, 70, 90, 110, 120]
    # a real photo enlarged (OpenCV) stays within 1 grey level of PIL's bilinear
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(img).resize((50, 37), Image.BILINEAR)).astype(int)
    assert np.abs(resize_image(img, (37, 50)).astype(int) - pil).max() <= 1
    # shrinking averages (antialiasing): a 1-px checkerboard halved becomes flat grey, not a copy of one phase
    board = ((np.indices((8, 8)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    small = resize_image(board, (4, 4))
    np.testing.assert_array_equal(small, np.asarray(Image.fromarray(board).resize((4, 4), Image.BILINEAR)))
    # interior pixels average to 128; corner pixels see a truncated filter (125 / 130), never 0 or 255
    assert (small[1:3, 1:3] == 128).all() and np.abs(small.astype(int) - 128).max() <= 3


def _stats_by_hand(pan):
    """Reference: one np.where per id."""
    out = {}
    for seg_id in np.unique(pan).tolist():
        if seg_id == -1:
            continue
        ys, xs = np.where(pan == seg_id)
        out[seg_id] = (len(ys), (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
    return out


def test_segment_stats_and_refresh_segments_on_resized_coco():
    from prn_data.datasets import open_dataset
    from prn_data.panoptic_io import refresh_segments, segment_stats
    from prn_data.records import Segment
    from prn_data.resize import ResizePolicy

    ds = open_dataset("coco:prn_data/samples/coco", "val2017")
    dropped = 0
    for i in range(len(ds)):
        s = ds.load(i)
        for policy in (ResizePolicy(), ResizePolicy(short=12, max_long=16)):
            pan = resize_labels(s.panoptic, policy.output_size(*s.panoptic.shape))
            assert segment_stats(pan) == _stats_by_hand(pan)
            got = refresh_segments(pan, s.segments)
            assert [g.id for g in got] == [g.id for g in s.segments if g.id in np.unique(pan)]
            dropped += len(s.segments) - len(got)
    assert dropped > 0  # small segments vanish at 12 px and are dropped
    # ids spread far wider than the image take the np.unique path; same answer
    wide = np.array([[-1, 0, 7_000_000], [5, 5, 7_000_000]], np.int32)
    assert segment_stats(wide) == _stats_by_hand(wide)
    # by hand: VOID, a stuff id 0, a thing; a vanished segment is dropped, order kept
    pan = np.array([[-1, 0, 0], [2001, 2001, -1], [2001, 0, 0]], np.int32)
    segs = [Segment(2001, 2, 1, True, score=0.5), Segment(5001, 5, 2, True), Segment(0, 0, 0, False)]
    got = refresh_segments(pan, segs)
    assert [(g.id, g.area, tuple(g.bbox), g.score) for g in got] == [(2001, 3, (0, 1, 2, 2), 0.5), (0, 4, (1, 0, 2, 3), None)]
