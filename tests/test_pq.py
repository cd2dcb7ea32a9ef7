"""PQ (prn_data.pq): hand-made cases with known answers, and agreement with cityscapesscripts' port of
panopticapi's pq_compute on the real COCO sample with perturbed predictions."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from prn_data import panoptic_io, pq, pq_kernel
from prn_data.errors import DatasetError
from prn_data.panoptic_io import decode_png, id2rgb, read_rgb_ids, rgb2id
from prn_data.pq import PngIdReader, SegmentTable, pq_compute, pq_from_arrays, pq_image, read_png_ids
from prn_data.testing import perturb

CATS = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 10, "name": "sky", "isthing": 0},
]


def seg(i, c, crowd=0):
    return {"id": i, "category_id": c, "iscrowd": crowd}


def run(gt, gs, pred, ps):
    return pq_from_arrays([(np.asarray(gt), gs, np.asarray(pred), ps)], CATS)


def test_perfect_match():
    gt = np.full((6, 8), 10000)
    gt[1:4, 1:4] = 1001
    gt[0, 7] = -1
    r = run(gt, [seg(1001, 1), seg(10000, 10)], gt, [seg(1001, 1), seg(10000, 10)])
    assert r["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 2}
    assert r["Things"]["n"] == 1 and r["Stuff"]["n"] == 1
    # car has no TP/FP/FN: left out of the averages, reported as zeros.
    assert r["per_class"][2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_iou_exactly_half_is_not_a_match():
    gt = np.full((4, 4), -1)
    gt[0:2, 0:2] = 1001  # 4 px
    pred = np.full((4, 4), -1)
    pred[0, 0:2] = 2001  # 2 px inside: IoU = 2 / 4 = 0.5
    pred[2:4, 0:2] = 2002  # wholly on VOID: ignored
    pred[3, 3] = 2003  # 1 px on VOID: ignored too
    r = run(gt, [seg(1001, 1)], pred, [seg(2001, 1), seg(2002, 1), seg(2003, 1)])
    # one FN (the gt) and one FP (2001, none of it on VOID).
    assert r["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert r["All"]["n"] == 1
    # 3 of 4 px: IoU 0.75, a match.
    pred[0:2, 0] = 2001
    pred[0, 1] = 2001
    pred[1, 1] = -1
    r = run(gt, [seg(1001, 1)], pred, [seg(2001, 1), seg(2002, 1), seg(2003, 1)])
    assert r["per_class"][1]["pq"] == pytest.approx(0.75, abs=1e-15)
    assert r["per_class"][1]["rq"] == 1.0


def test_prediction_on_void_leaves_the_union():
    gt = np.full((4, 4), -1)
    gt[0:2, 0:2] = 1001
    pred = np.full((4, 4), -1)
    pred[0:2, :] = 7  # the 4 gt px + 4 VOID px: IoU = 4 / (8 + 4 - 4 - 4) = 1
    r = run(gt, [seg(1001, 1)], pred, [seg(7, 1)])
    assert r["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1}


def test_half_on_void_is_a_false_positive_more_than_half_is_not():
    gt = np.full((2, 4), 10000)
    gt[:, 2:] = -1
    pred = np.full((2, 4), 10000)
    pred[0, 1:3] = 1005  # 2 px: 1 on VOID (exactly half), 1 on sky → FP
    r = run(gt, [seg(10000, 10)], pred, [seg(10000, 10), seg(1005, 1)])
    assert r["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert r["Things"]["n"] == 1
    pred[0, 3] = 1005  # now 3 px, 2 on VOID → ignored
    r = run(gt, [seg(10000, 10)], pred, [seg(10000, 10), seg(1005, 1)])
    assert r["Things"]["n"] == 0 and r["All"]["n"] == 1
    # sky: gt 4 px; pred 5 px, 2 of them on VOID, 3 on the gt: IoU = 3 / (5 + 4 - 3 - 2) = 0.75.
    assert r["per_class"][10]["sq"] == pytest.approx(0.75, abs=1e-15)


def test_crowd_is_never_a_false_negative_and_covers_predictions():
    gt = np.full((4, 6), 10000)
    gt[:, 0:3] = 1001  # person crowd, 12 px
    gt[0:2, 4:6] = 2001  # car, 4 px
    pred = np.full((4, 6), 10000)
    pred[0:3, 0:2] = 1001  # person on the crowd: 6 px, all on crowd → not FP
    pred[0:2, 4:6] = 2001
    gs = [seg(1001, 1, crowd=1), seg(2001, 2), seg(10000, 10)]
    ps = [seg(1001, 1), seg(2001, 2), seg(10000, 10)]
    r = run(gt, gs, pred, ps)
    assert r["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert r["Things"]["n"] == 1  # person has no TP/FP/FN at all
    # a *car* prediction on the person crowd is a false positive (crowd of another class)
    ps[0] = seg(1001, 2)
    r = run(gt, gs, pred, ps)
    assert r["per_class"][2]["rq"] == pytest.approx(1 / 1.5, abs=1e-15)
    # sky: gt 8 px (12 crowd + 4 car of 24); pred sky = 24 - 6 - 4 = 14 px; I = 8, U = 14 + 8 - 8 = 14
    assert r["per_class"][10]["pq"] == pytest.approx(8 / 14, abs=1e-15)


# --- files: cross-check with cityscapesscripts ----------------------------------------------------------


def assert_same(ours: dict, theirs: dict) -> None:
    for k in ("All", "Things", "Stuff"):
        assert ours[k]["n"] == theirs[k]["n"]
        for f in ("pq", "sq", "rq"):
            assert ours[k][f] == pytest.approx(float(theirs[k][f]), abs=1e-9), (k, f)
    assert set(ours["per_class"]) == set(theirs["per_class"])
    for c, v in theirs["per_class"].items():
        for f in ("pq", "sq", "rq"):
            assert ours["per_class"][c][f] == pytest.approx(float(v[f]), abs=1e-9), (c, f)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_cityscapesscripts_on_perturbed_coco_sample(coco_sample, tmp_path, seed):
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic

    gt_json_path = coco_sample / "annotations" / "panoptic_val2017.json"
    gt_dir = coco_sample / "annotations" / "panoptic_val2017"
    gt_json = json.loads(gt_json_path.read_text())
    pred_json = perturb(gt_json, gt_dir, tmp_path, seed)
    ours = pq_compute(gt_json_path, gt_dir, pred_json, tmp_path / "pred", workers=2)
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = evaluatePanoptic(str(gt_json_path), str(gt_dir), str(pred_json), str(tmp_path / "pred"), str(tmp_path / "r.json"))
    assert_same(ours, theirs)
    # a real perturbation: neither perfect nor empty
    assert 0.2 < ours["All"]["pq"] < 0.95
    # the in-memory API gives the same figures (areas from the maps equal the JSON's here)
    items = []
    preds = {a["image_id"]: a for a in json.loads(pred_json.read_text())["annotations"]}
    for g in gt_json["annotations"]:
        p = preds[g["image_id"]]
        gi = read_png_ids(gt_dir / g["file_name"]).astype(np.int64)
        pi = read_png_ids(tmp_path / "pred" / p["file_name"]).astype(np.int64)
        items.append((np.where(gi == 0, -1, gi), g["segments_info"], np.where(pi == 0, -1, pi), p["segments_info"]))
    assert_same(pq_from_arrays(items, gt_json["categories"]), theirs)


def test_read_png_ids_matches_rgb2id(coco_sample, tmp_path):
    from PIL import Image

    p = coco_sample / "annotations" / "panoptic_val2017" / "000000142238.png"
    np.testing.assert_array_equal(read_png_ids(p), read_rgb_ids(p))
    # an alpha channel is ignored; ids use all three bytes
    x = np.random.default_rng(0).integers(0, 256, (7, 9, 4), dtype=np.uint8)
    Image.fromarray(x, "RGBA").save(tmp_path / "a.png")
    ref = x[..., 0].astype(np.int64) + 256 * x[..., 1].astype(np.int64) + 65536 * x[..., 2].astype(np.int64)
    np.testing.assert_array_equal(read_png_ids(tmp_path / "a.png"), ref)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="bad.png"):
        read_png_ids(tmp_path / "bad.png")


def test_file_errors_name_the_file(coco_sample, tmp_path):
    gt_json = coco_sample / "annotations" / "panoptic_val2017.json"
    gt_dir = coco_sample / "annotations" / "panoptic_val2017"
    d = json.loads(gt_json.read_text())
    pred_dir = tmp_path / "pred"
    shutil.copytree(gt_dir, pred_dir)
    # a segment id in the PNG that the JSON does not list
    bad = json.loads(json.dumps(d))
    bad["annotations"][1]["segments_info"].pop(0)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match="000000439180.png.*not in the JSON"):
        pq_compute(gt_json, gt_dir, tmp_path / "bad.json", pred_dir)
    # an image without prediction
    missing = json.loads(json.dumps(d))
    missing["annotations"].pop(0)
    (tmp_path / "missing.json").write_text(json.dumps(missing))
    with pytest.raises(DatasetError, match="missing.json.*142238"):
        pq_compute(gt_json, gt_dir, tmp_path / "missing.json", pred_dir)
    # a missing PNG
    (pred_dir / "000000142238.png").unlink()
    with pytest.raises(DatasetError, match="000000142238.png: panoptic PNG is missing"):
        pq_compute(gt_json, gt_dir, gt_json, pred_dir)


# --- the counting path: runs, VOID mapping, decoders, reused buffers -----------------------------------


def random_pair(rng, h, w, noisy):
    """A ground-truth / prediction pair of (h, w) file-id maps (VOID = 0) with overlapping blocks, its
    segment tables (crowd included, an unlisted ground-truth id) and the categories."""
    gids = rng.choice(np.arange(1, 50), 6, replace=False)
    pids = rng.choice(np.arange(1, 50), 7, replace=False)
    g = np.zeros((h, w), np.int64)
    p = np.zeros((h, w), np.int64)
    for m, ids in ((g, list(gids) + [99]), (p, list(pids))):
        for _ in range(12):
            y, x = rng.integers(0, h), rng.integers(0, w)
            m[y : y + rng.integers(2, h), x : x + rng.integers(2, w)] = rng.choice(ids)
    p[g == gids[0]] = pids[0]  # a sure match
    if noisy:  # salt: most pixels start a run, so pq_image counts pixel by pixel
        p = np.where(rng.random((h, w)) < 0.8, p, rng.choice(np.r_[0, pids], (h, w)))
    gt = SegmentTable(gids.astype(np.int64), rng.integers(1, 3, 6), np.arange(6) == 5)
    pr = SegmentTable(pids.astype(np.int64), rng.integers(1, 3, 7), np.zeros(7, bool))
    pr.category[0] = gt.category[0]
    return g, gt, p, pr


def same_stats(a, b):
    for f in ("tp_category", "tp_iou", "fp_category", "fn_category"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), f


@pytest.mark.parametrize("noisy", [False, True])
def test_runs_count_like_pixels(monkeypatch, noisy):
    """Counting runs (with their lengths) gives the very counts and IoUs of counting every pixel."""
    monkeypatch.setattr(pq_kernel, "ENABLED", False)  # the numpy path (the compiled one: below)
    rng = np.random.default_rng(7 + noisy)
    matched = 0
    for _ in range(20):
        g, gt, p, pr = random_pair(rng, 23, 31, noisy)
        assert (pq._runs(g.ravel(), p.ravel())[2] is None) == noisy
        by_runs = pq_image(g, gt, p, pr)
        with monkeypatch.context() as m:
            m.setattr(pq, "_MAX_RUN_SHARE", -1.0)  # every image pixel by pixel
            same_stats(by_runs, pq_image(g, gt, p, pr))
        matched += len(by_runs.tp_iou)
    assert matched >= 5  # matches exercised, not only false positives and negatives


def test_runs_may_wrap_rows(monkeypatch):
    """A run crossing a row end counts its pixels all the same (only the pair's count matters)."""
    monkeypatch.setattr(pq, "_MAX_RUN_SHARE", 1.0)  # runs even for this tiny map
    g = np.array([[5, 5, 5], [5, 5, 0]])
    p = np.array([[0, 7, 7], [7, 7, 7]])
    gv, pv, length = pq._runs(g.ravel(), p.ravel())
    assert gv.tolist() == [5, 5, 0] and pv.tolist() == [0, 7, 7] and length.tolist() == [1, 4, 1]


def test_negative_predicted_ids_count_as_void():
    """``negative_void``: a prediction in memory (VOID = −1) against file ids (VOID = 0), as the streamed
    scorer hands it over, scores as the prediction written to a file would."""
    rng = np.random.default_rng(3)
    for noisy in (False, True):
        g, gt, p, pr = random_pair(rng, 17, 19, noisy)
        mem = np.where(p == 0, -1, p).astype(np.int32)
        same_stats(pq_image(g, gt, mem, pr, void=0, negative_void=True), pq_image(g, gt, p, pr, void=0))
    with pytest.raises(DatasetError, match=r"ids \[77\] are in the PNG"):
        mem[0, 0] = 77
        pq_image(g, gt, mem, pr, void=0, negative_void=True, name="x")


def test_decoders_and_rgb2id_agree(coco_sample, tmp_path, monkeypatch):
    """Whichever decoder runs (kornia-rs when installed, libspng, Pillow), the pixels and ids are the same;
    rgb2id's fast paths (OpenCV's widening, RGBA words, the strided read) give the arithmetic's ids."""
    from PIL import Image

    x = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    Image.fromarray(x, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.ascontiguousarray(x[..., :3]), "RGB").save(tmp_path / "b.png")
    pngs = sorted((coco_sample / "annotations" / "panoptic_val2017").glob("*.png")) + [tmp_path / "a.png", tmp_path / "b.png"]
    for png in pngs:
        with Image.open(png) as im:
            ref = np.asarray(im)
        r64 = ref.astype(np.int64)
        ids = r64[..., 0] + 256 * r64[..., 1] + 65536 * r64[..., 2]
        got = [decode_png(png)]
        monkeypatch.setattr(panoptic_io, "kornia_io", None)
        got.append(decode_png(png))
        monkeypatch.undo()
        for a in got:
            np.testing.assert_array_equal(a, ref)
        for rgb, want in ((ref, ids), (np.ascontiguousarray(ref[..., :3]), ids), (ref[:, ::2], ids[:, ::2])):
            np.testing.assert_array_equal(rgb2id(rgb), want)
        with monkeypatch.context() as m:
            m.setattr(panoptic_io, "cv2", None)
            np.testing.assert_array_equal(rgb2id(np.ascontiguousarray(ref[..., :3])), ids)
        np.testing.assert_array_equal(read_png_ids(png), ids)
    out = np.zeros(100, np.int32)
    r = rgb2id(x, out=out)
    assert r.base is not None and np.shares_memory(r, out) and (out[35:] == 0).all()
    with pytest.raises(ValueError, match="at least 35"):
        rgb2id(x, out=np.zeros(34, np.int32))
    with pytest.raises(ValueError, match="int32"):
        rgb2id(x, out=np.zeros(40, np.int64))


def test_kornia_decoder_when_installed(coco_sample):
    pytest.importorskip("kornia_rs")
    assert panoptic_io.kornia_io is not None
    png = coco_sample / "annotations" / "panoptic_val2017" / "000000142238.png"
    np.testing.assert_array_equal(decode_png(png), panoptic_io.imagecodecs.spng_decode(png.read_bytes()))


def test_reused_buffers_keep_each_image_right(coco_sample, tmp_path):
    """PngIdReader decodes image after image into one buffer per role: each map is right when read, for
    maps of other sizes too, and the roles do not share memory."""
    d = coco_sample / "annotations" / "panoptic_val2017"
    small = tmp_path / "s.png"
    panoptic_io.write_rgb_ids(small, np.arange(12).reshape(3, 4) * 4099)
    reader = PngIdReader()
    for png in [d / "000000142238.png", small, d / "000000439180.png", d / "000000142238.png"]:
        a = reader.read(png, "gt")
        b = reader.read(small, "pred")
        np.testing.assert_array_equal(a, read_png_ids(png))
        np.testing.assert_array_equal(b, np.arange(12).reshape(3, 4) * 4099)
        assert not np.shares_memory(a, b)


# --- the compiled count (numba: the fast extra) against the numpy path ------------------------------------


def test_compiled_count_by_hand():
    pytest.importorskip("numba")
    g = np.array([5, 5, 0, 7, 7, -1], np.int64)
    p = np.array([1, 2, 2, 9, 9, -3], np.int64)
    # rows: VOID 0, id 5, not listed (7, -1); columns: VOID 0, ids 1 and 2, not listed (9, -3)
    want = [[0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 3]]
    assert pq_kernel.count_pairs(g, [0, 5], p, [0, 1, 2]).tolist() == want
    # negative predictions counted as VOID (column 0); -1 a ground-truth key; 0 listed twice: its last row
    want = [[0, 0, 0, 0], [0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 2]]
    assert pq_kernel.count_pairs(g, [0, 5, -1, 0], p, [0, 1, 2], p_negative=0).tolist() == want
    # keys beyond the tables, an empty map, another dtype: left to the numpy path
    assert pq_kernel.count_pairs(g, [0, 1 << 24], p, [0]) is None
    assert pq_kernel.count_pairs(g[:0], [0], p[:0], [0]) is None
    assert pq_kernel.count_pairs(g.astype(np.int16), [0], p.astype(np.int16), [0]) is None


@pytest.mark.parametrize("noisy", [False, True])
def test_compiled_count_equals_numpy(monkeypatch, noisy):
    """The compiled kernel's counts are the numpy path's integers, for ids, in-memory VOID (−1, other
    negatives, ids past 2²⁴) and PNG words whose 4th byte is anything; pq_image's stats are identical."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(21 + noisy)
    for i in range(12):
        g, gt, p, pr = random_pair(rng, 19, 29, noisy)
        if i % 3 == 1:  # in memory: VOID -1, stray negatives and huge ids (not listed)
            g, p = np.where(g == 0, -1, g), np.where(p == 0, -1, p)
            g[0, :3] = [-5, 1 << 30, -1]
            p[1, :3] = [-7, 1 << 25, -1]
        gk, pk = np.r_[0, gt.ids], np.r_[0, pr.ids]
        if i % 3 != 1:  # a key listed twice counts at its last place (where the numpy path uses its tables)
            pk = np.r_[pk, pr.ids[:1]]
        for neg in (None, 0):
            want = pq._count_numpy(g.ravel(), p.ravel(), gk, pk, "ids", neg)
            for dt in (np.int32, np.int64):
                got = pq_kernel.count_pairs(g.ravel().astype(dt), gk, p.ravel().astype(dt), pk,
                                            p_negative=-1 if neg is None else 0)
                assert got is not None and got.dtype == np.int64
                np.testing.assert_array_equal(got, want)
        if i % 3 == 2:  # PNG words: any 4th byte
            hi = rng.integers(0, 256, g.shape, dtype=np.uint32) << 24
            gw, pw = (g.astype(np.uint32) | hi).ravel(), (p.astype(np.uint32) | hi[::-1]).ravel()
            np.testing.assert_array_equal(pq_kernel.count_pairs(gw, gk, pw, pk, form="words"),
                                          pq._count_numpy(g.ravel(), p.ravel(), gk, pk, "ids", None))
            np.testing.assert_array_equal(pq._count_numpy(gw, pw, gk, pk, "words", None),
                                          pq._count_numpy(g.ravel(), p.ravel(), gk, pk, "ids", None))
            # RGB bytes, two pixels per read (odd and even pixel counts, down to one pixel); ids spread
            # over all three bytes (an odd factor modulo 2**24 keeps them distinct, and VOID 0)
            spread = (lambda a: (np.asarray(a, np.int64) * 2654435) % (1 << 24))
            gs_, ps_, gks, pks = spread(g.ravel()), spread(p.ravel()), spread(gk), spread(pk)
            for n in (g.size, g.size - 1, 2, 1):
                gb, pb = id2rgb(gs_[:n]).ravel(), id2rgb(ps_[:n]).ravel()
                np.testing.assert_array_equal(pq_kernel.count_pairs(gb, gks, pb, pks, form="rgb"),
                                              pq._count_numpy(gs_[:n], ps_[:n], gks, pks, "ids", None))
        void = -1 if i % 3 == 1 else 0
        gs = SegmentTable(gt.ids, gt.category, gt.iscrowd)
        p = np.where(p >= 1 << 24, -1, p)  # an unlisted prediction is an error (test_file_errors_name_the_file)
        compiled = pq_image(g, gs, p, pr, void=void, negative_void=True)
        with monkeypatch.context() as m:
            m.setattr(pq_kernel, "ENABLED", False)
            same_stats(compiled, pq_image(g, gs, p, pr, void=void, negative_void=True))


def test_files_compiled_and_numpy_identical(coco_sample, tmp_path, monkeypatch):
    """pq_compute's figures are the same floats with the compiled count or the numpy one, and with the
    ids read as PNG words (4th byte left in) or masked."""
    pytest.importorskip("numba")
    gt_json = coco_sample / "annotations" / "panoptic_val2017.json"
    gt_dir = coco_sample / "annotations" / "panoptic_val2017"
    pred_json = perturb(json.loads(gt_json.read_text()), gt_dir, tmp_path, 4)
    compiled = pq_compute(gt_json, gt_dir, pred_json, tmp_path / "pred", workers=1)
    monkeypatch.setattr(pq_kernel, "ENABLED", False)
    assert pq_compute(gt_json, gt_dir, pred_json, tmp_path / "pred", workers=2) == compiled
    reader = PngIdReader()
    for png in sorted(gt_dir.glob("*.png")):
        np.testing.assert_array_equal(reader.words(png, "gt") & 0xFFFFFF, read_png_ids(png))
