"""prn info / show / stats: base-vs-GT PQ (through prn_data.pq) and counts on hand-computed maps, then the
commands as subprocesses on a store built once per session by the real ``prn build`` (shared with
test_verify.py and test_share.py through :func:`build_sample_store`)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prn_data.records import Category, CategorySet
from prn_data.stats import PQAccumulator, area_histogram, segment_counts
from prn_data.testing import build_sample_store, run_prn

CATS = CategorySet(
    [Category(1, "road", False, 0), Category(2, "car", True, 1), Category(3, "person", True, 2)]
)

# 4×6 ground truth: stuff 1000 (8 px), car 2001 (8 px), a car crowd region 2002 (4 px), VOID (4 px).
GT = np.array(
    [
        [1000, 1000, 1000, 1000, -1, -1],
        [1000, 1000, 1000, 1000, -1, -1],
        [2001, 2001, 2001, 2001, 2002, 2002],
        [2001, 2001, 2001, 2001, 2002, 2002],
    ],
    dtype=np.int32,
)
GT_SEGS = [
    {"id": 1000, "category_id": 1, "iscrowd": 0, "isthing": 0},
    {"id": 2001, "category_id": 2, "iscrowd": 0, "isthing": 1},
    {"id": 2002, "category_id": 2, "iscrowd": 1, "isthing": 1},
]
# Prediction: stuff over the top rows incl. VOID (IoU 8 / (12 + 8 − 8 − 4) = 1), car 2001 on 6 of the 8 car
# pixels (IoU 6/8), a person 3001 on the other 2 (false positive), a car 2005 on the crowd (ignored).
PRED = np.array(
    [
        [1000] * 6,
        [1000] * 6,
        [2001, 2001, 2001, 3001, 2005, 2005],
        [2001, 2001, 2001, 3001, 2005, 2005],
    ],
    dtype=np.int32,
)
PRED_SEGS = [
    {"id": 1000, "category_id": 1},
    {"id": 2001, "category_id": 2},
    {"id": 3001, "category_id": 3},
    {"id": 2005, "category_id": 2},
]


def test_pq_one_image_hand_computed():
    acc = PQAccumulator()
    acc.add(GT, GT_SEGS, PRED, PRED_SEGS)
    per = acc.per_category()
    assert per[1] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0}
    assert per[2] == {"pq": 0.75, "sq": 0.75, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0}
    assert per[3] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 0}
    s = acc.summary(CATS)
    assert s["all"]["n"] == 3 and s["all"]["pq"] == pytest.approx(1.75 / 3)
    assert s["things"]["pq"] == pytest.approx(0.375) and s["things"]["rq"] == pytest.approx(0.5)
    assert s["stuff"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1}


def test_pq_accumulates_false_negatives_over_images():
    acc = PQAccumulator()
    acc.add(GT, GT_SEGS, PRED, PRED_SEGS)
    gt2 = np.full((2, 2), 2001, np.int32)
    acc.add(gt2, [{"id": 2001, "category_id": 2, "iscrowd": 0}], np.full((2, 2), -1, np.int32), [])
    car = acc.per_category()[2]
    # tp 1 (IoU 0.75), fn 1: PQ = 0.75 / (1 + 0.5), RQ = 1 / 1.5, SQ = 0.75.
    assert (car["tp"], car["fp"], car["fn"]) == (1, 0, 1)
    assert car["pq"] == pytest.approx(0.5) and car["rq"] == pytest.approx(2 / 3) and car["sq"] == 0.75
    with pytest.raises(ValueError):
        acc.add(GT, GT_SEGS, PRED[:2], PRED_SEGS)


def test_segment_counts_and_histogram():
    pixels, instances, crowds, areas = segment_counts(GT, GT_SEGS)
    assert pixels == {1: 8, 2: 12}
    assert instances == {2: 1} and crowds == {2: 1} and areas == [8]
    # Unlisted ids fall back to id // 1000 for the category and k > 0 for "thing".
    p2, n2, _, a2 = segment_counts(np.array([[3004, 3004, 1000]]), [])
    assert p2 == {3: 2, 1: 1} and n2 == {3: 1} and a2 == [2]
    assert area_histogram([0, 63, 64, 4095, 4096, 10**6]) == [2, 1, 0, 1, 1, 0, 0, 1]


# ---------------------------------------------------------------------------------------------- built store

@pytest.fixture(scope="session")
def built_store(tmp_path_factory) -> Path:
    return build_sample_store(tmp_path_factory)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_info_json_matches_store(built_store):
    import zarr

    info = json.loads(run_prn("info", "--json", built_store).stdout)
    g = zarr.open_group(built_store, mode="r")
    s = info["summary"]
    assert (s["dataset"], s["split"], s["base"], s["prn_schema"]) == ("coco", "val2017", "simulated", 1)
    assert (s["samples_done"], s["samples_total"]) == (2, 2)
    assert s["num_categories"] == 133  # COCO panoptic: 80 things + 53 stuff
    assert s["canvas"] == list(g.attrs["canvas"]) and s["label_divisor"] == 1000
    rows = {r["path"]: r for r in info["arrays"]}
    expected = sorted(p for p, a in g.members(max_depth=None) if isinstance(a, zarr.Array))
    assert sorted(rows) == expected and "gt/panoptic" in rows and "base/instance" in rows
    H, W = g.attrs["canvas"]
    pan = rows["gt/panoptic"]
    assert pan["shape"] == [2, H, W] and pan["dtype"] == "int32"
    assert pan["chunks"] == [1, H, W] and pan["shards"] == [2, H, W]
    assert rows["gt/box_offset"]["shape"] == [2, 4, H, W]
    assert rows["base/semantic"]["shape"] == [2, 133, H // 4, W // 4]
    assert rows["done"]["shards"] is None
    assert any(c.startswith("zstd") for c in pan["codecs"])
    for path, r in rows.items():
        # Stored bytes are what the files under the array's folder occupy (chunks/shards and zarr.json).
        assert r["stored_bytes"] == _dir_bytes(built_store / path), path
        assert r["nbytes"] == int(np.prod(r["shape"])) * g[path].dtype.itemsize or r["dtype"] == "string"
    assert info["totals"]["stored_bytes"] == sum(r["stored_bytes"] for r in rows.values())
    prov = info["provenance"]
    assert prov["target_params"]["sigma"] == 8.0 and prov["package_version"] and prov["created"]
    text = run_prn("info", built_store).stdout
    assert "val2017" in text and "gt/center_offset" in text and "2 done / 2" in text


def _cells(png: np.ndarray, size: tuple[int, int], dpi: int) -> list[np.ndarray]:
    from prn_data.show import panel_boxes

    return [png[y0:y1, x0:x1, :3] for x0, y0, x1, y1 in panel_boxes(size, dpi)]


@pytest.mark.slow
def test_show_png_size_and_panels(built_store, tmp_path, monkeypatch, capsys):
    import zarr

    out = tmp_path / "s1.png"
    printed = run_prn("show", built_store, "1", "--out", out, "--dpi", "40").stdout.strip()
    assert Path(printed) == out
    from prn_data.show import figure_size_px
    from prn_data.store import open_store

    png = np.asarray(Image.open(out))
    size = tuple(open_store(built_store).read_sample(1, arrays=["size"])["size"])
    # 5 × 4 panels of 3 in at 40 dpi, as high as the image's aspect makes them
    assert png.shape[:2][::-1] == figure_size_px(size, 40) and png.shape[1] == 12 * 40
    cells = _cells(png, size, 40)
    for k, c in enumerate(cells):
        assert c.std() > 1.0, f"panel {k} is blank"
    for a, b in itertools.combinations(range(len(cells)), 2):
        assert not np.array_equal(cells[a], cells[b]), f"panels {a} and {b} are identical"
    # --by-id picks the same sample; without --out the PNG lands in the current directory (in-process:
    # the command function itself, to save a second interpreter start).
    from prn_data.cli.inspect import show
    from prn_data.errors import StoreError

    image_id = str(zarr.open_group(built_store, mode="r")["image_id"][1])
    monkeypatch.chdir(tmp_path)
    show(str(built_store), None, image_id, None, 40)
    default = Path(capsys.readouterr().out.strip())
    assert default.parent == tmp_path and default.is_file() and image_id in default.name
    np.testing.assert_array_equal(np.asarray(Image.open(default)), png)

    with pytest.raises(StoreError, match="no-such-image"):
        show(str(built_store), None, "no-such-image", tmp_path / "x.png", 40)


def test_stats_counts_and_base_pq(built_store):
    from prn_data.store import open_store
    from prn_data.pq import pq_from_arrays

    res = json.loads(run_prn("stats", "--json", built_store).stdout)
    assert res["samples"] == 2 and res["total"] == 2
    st = open_store(built_store)
    pixels: dict[int, int] = {}
    instances: dict[int, int] = {}
    items = []
    for i in range(2):
        s = st.read_sample(i)
        ids, counts = np.unique(s["gt/panoptic"], return_counts=True)
        seg = {d["id"]: d for d in s["gt/segments"]}
        for sid, c in zip(ids.tolist(), counts.tolist()):
            if sid == -1:
                continue
            cat = seg[sid]["category_id"]
            pixels[cat] = pixels.get(cat, 0) + c
            if seg[sid]["isthing"] and not seg[sid]["iscrowd"]:
                instances[cat] = instances.get(cat, 0) + 1
        items.append((s["gt/panoptic"], s["gt/segments"], s["base/panoptic"], s["base/segments"]))
    rows = {r["id"]: r for r in res["categories"]}
    assert {c: r["pixels"] for c, r in rows.items() if r["pixels"]} == pixels
    assert {c: r["instances"] for c, r in rows.items() if r["instances"]} == instances
    assert sum(res["instance_area_histogram"]["counts"]) == sum(instances.values())
    ref = pq_from_arrays(items, st.categories, workers=1)
    for ours, theirs in (("all", "All"), ("things", "Things"), ("stuff", "Stuff")):
        assert res["base_pq"][ours]["pq"] == pytest.approx(ref[theirs]["pq"])
        assert res["base_pq"][ours]["n"] == ref[theirs]["n"]
    assert 0.0 < res["base_pq"]["all"]["pq"] < 1.0  # the simulated base is imperfect, not useless
    text = run_prn("stats", built_store).stdout
    assert "person" in text and "PQ" in text


def test_commands_on_a_folder_that_is_not_a_store(tmp_path):
    for cmd in ("info", "verify"):
        proc = run_prn(cmd, tmp_path, check=False)
        # rich wraps the one-line error at the terminal width: compare with whitespace collapsed.
        assert proc.returncode == 2 and "not a prn store" in " ".join(proc.stderr.split()), proc.stderr
