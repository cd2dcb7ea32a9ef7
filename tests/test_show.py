"""prn_data.show: the flow colour wheel, id / semantic colouring and the Fig.-4-style figure."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from prn_data.records import Category, CategorySet
from prn_data.show import (
    base_semantic_labels,
    colorize_ids,
    draw_sample,
    figure_size_px,
    flow_to_rgb,
    panel_boxes,
    segment_labels,
    shared_limits,
)


def test_flow_to_rgb_hand_values():
    # (dy, dx) pairs, one per pixel of a 1×5 field, colour scale 4 px.
    dy = np.array([[0.0, 0.0, 4.0, 0.0, 0.0]])
    dx = np.array([[0.0, 4.0, 0.0, -2.0, 8.0]])
    rgb = flow_to_rgb(np.stack([dy, dx]), max_norm=4.0)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 5, 3)
    assert rgb[0, 0].tolist() == [255, 255, 255]  # no offset: white
    assert rgb[0, 1].tolist() == [255, 0, 0]  # +x at full length: hue 0, red
    assert rgb[0, 2].tolist() == [128, 255, 0]  # +y (down): hue 1/4
    assert rgb[0, 3].tolist() == [128, 255, 255]  # −x at half length: cyan, half saturated
    assert rgb[0, 4].tolist() == [255, 0, 0]  # beyond the scale saturates


def test_flow_to_rgb_default_scale_is_field_max():
    off = np.zeros((2, 1, 2))
    off[1, 0, 1] = 3.0  # dx = 3 at one pixel
    rgb = flow_to_rgb(off)
    assert rgb[0, 1].tolist() == [255, 0, 0]
    assert rgb[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(ValueError):
        flow_to_rgb(np.zeros((3, 2, 2)))


def test_colorize_ids_void_black_and_one_colour_per_id():
    pan = np.array([[-1, 1000, 1000], [2001, 2002, 2001]], dtype=np.int32)
    rgb = colorize_ids(pan)
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[0, 1].tolist() == rgb[0, 2].tolist()
    assert rgb[1, 0].tolist() == rgb[1, 2].tolist()
    colours = {tuple(rgb[0, 1]), tuple(rgb[1, 0]), tuple(rgb[1, 1])}
    assert len(colours) == 3 and (0, 0, 0) not in colours


def test_base_semantic_labels_upsamples_argmax_and_crops():
    probs = np.zeros((3, 2, 2), dtype=np.float32)
    probs[2, 0, 0] = 0.9
    probs[1, 0, 1] = 0.7  # ≥ 2/3 = 2 / N_cl: a clear winner
    probs[0, 1, 0] = 1.0
    probs[:, 1, 1] = 1 / 3  # uniform (no class ahead, e.g. VOID) → ignore
    lab = base_semantic_labels(probs, (7, 6))
    assert lab.shape == (7, 6) and lab.dtype == np.uint8
    assert (lab[:4, :4] == 2).all() and (lab[:4, 4:] == 1).all()
    assert (lab[4:, :4] == 0).all() and (lab[4:, 4:] == 255).all()


def _synthetic_sample(h: int = 48, w: int = 64) -> dict:
    rng = np.random.default_rng(0)
    pan = np.full((h, w), 1000, np.int32)  # stuff category 1
    pan[5:20, 5:30] = 2001
    pan[25:45, 35:60] = 2002
    pan[:3] = -1
    fg = (pan >= 2000).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    off = np.zeros((2, h, w), np.float32)
    box = np.zeros((4, h, w), np.float32)
    center = np.zeros((1, h, w), np.float32)
    for sid, (y0, y1, x0, x1) in {2001: (5, 19, 5, 29), 2002: (25, 44, 35, 59)}.items():
        m = pan == sid
        cy, cx = yy[m].mean(), xx[m].mean()
        off[0][m], off[1][m] = cy - yy[m], cx - xx[m]
        box[0][m], box[1][m], box[2][m], box[3][m] = yy[m] - y0, y1 - yy[m], xx[m] - x0, x1 - xx[m]
        center[0] = np.maximum(center[0], np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 128))
    base_pan = np.roll(pan, 3, axis=1)
    inst = np.concatenate([np.roll(center, 3, axis=2), np.roll(off, 3, axis=2), np.roll(box, 3, axis=2)])
    probs = rng.random((2, h // 4, w // 4)).astype(np.float32)
    return {
        "image": rng.integers(0, 256, (3, h, w), dtype=np.uint8),
        "gt/semantic": np.where(pan < 0, 255, np.where(fg == 1, 1, 0)).astype(np.uint8),
        "gt/panoptic": pan,
        "gt/center": center,
        "gt/center_offset": off,
        "gt/box_offset": box,
        "gt/foreground": fg,
        "base/panoptic": base_pan,
        "base/instance": inst,
        "base/semantic": probs,
    }


def _cells(png: np.ndarray, size: tuple[int, int], dpi: int) -> list[np.ndarray]:
    return [png[y0:y1, x0:x1, :3] for x0, y0, x1, y1 in panel_boxes(size, dpi)]


def test_draw_sample_png_size_and_distinct_panels(tmp_path):
    cats = CategorySet([Category(1, "road", False, 0, (128, 64, 128)), Category(2, "car", True, 1, (0, 0, 142))])
    out = draw_sample(_synthetic_sample(), tmp_path / "fig.png", cats, title="synthetic", dpi=50)
    png = np.asarray(Image.open(out))
    # 4 columns × 3 in × 50 dpi; 5 rows × (3 in × 48/64 + 0.3 in title) × 50 dpi.
    assert figure_size_px((48, 64), 50) == (600, 637)
    assert png.shape[:2] == (637, 600)
    cells = _cells(png, (48, 64), 50)
    assert len(cells) == 20
    for k, c in enumerate(cells):
        assert c.std() > 1.0, f"panel {k} is blank"
    for a, b in itertools.combinations(range(20), 2):
        assert not np.array_equal(cells[a], cells[b]), f"panels {a} and {b} are identical"


def test_figure_follows_the_image_aspect(tmp_path):
    """A wide image gets a low figure and a tall one a high figure: no fixed page with empty bands."""
    wide = Image.open(draw_sample(_synthetic_sample(64, 256), tmp_path / "wide.png", None, dpi=30)).size
    tall = Image.open(draw_sample(_synthetic_sample(256, 64), tmp_path / "tall.png", None, dpi=30)).size
    assert wide == figure_size_px((64, 256), 30) and tall == figure_size_px((256, 64), 30)
    assert wide[0] == tall[0] == 4 * 3 * 30
    assert wide[1] == int(5 * (3 * 0.25 + 0.3) * 30) and tall[1] == int(5 * (3 * 4 + 0.3) * 30)
    # a 1×1000 strip is clamped to a panel aspect of 1/4
    assert figure_size_px((1, 1000), 30) == wide


def test_shared_limits_one_scale_for_all_maps():
    gt = np.array([[0.0, 2.0], [4.0, 0.0]])
    base = np.array([[-1.0, 6.0], [8.0, 0.0]])
    # non-zero values 2, 4, −1, 6, 8: the 50th percentile is 4, the minimum −1
    assert shared_limits(gt, base, percentile=50) == (-1.0, 4.0)
    assert shared_limits(gt, None, base, percentile=100) == (-1.0, 8.0)
    assert shared_limits(gt, percentile=100) == (0.0, 4.0)  # never above 0 for vmin
    assert shared_limits(np.zeros((2, 2))) == (0.0, 1.0)  # nothing to scale: a valid 0–1 bar
    assert shared_limits(np.array([np.nan, 3.0]), percentile=100) == (0.0, 3.0)


def test_segment_labels_sit_on_their_segment():
    cats = CategorySet([Category(1, "road", False, 0), Category(2, "car", True, 1)])
    pan = np.full((20, 20), 1000, np.int32)
    pan[2:6, 2:6] = 2001
    pan[0, 19] = 2002  # 1 px of 400: under 0.5 %, no label
    segs = [{"id": 1000, "category_id": 1}, {"id": 2001, "category_id": 2}, {"id": 2002, "category_id": 2}]
    labels = segment_labels(pan, segs, cats)
    assert [t for *_, t in labels] == ["road", "car"]
    for y, x, t in labels:
        assert pan[int(y), int(x)] == (1000 if t == "road" else 2001)
    assert labels[1][:2] == (3.0, 3.0)  # pixel nearest the 4×4 square's centroid (3.5, 3.5), first in raster order


def test_draw_sample_without_base(tmp_path):
    s = {k: v for k, v in _synthetic_sample().items() if not k.startswith("base/")}
    out = draw_sample(s, tmp_path / "gt_only.png", None, dpi=40)
    png = np.asarray(Image.open(out))
    assert png.shape[:2][::-1] == figure_size_px((48, 64), 40)
    with pytest.raises(ValueError):
        draw_sample({**s, "image": np.zeros((5, 5, 3), np.uint8)}, tmp_path / "bad.png")
