"""The files: adapter and `prn base export`: round trip, foreign exports, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prn_data.base import BasePrediction, open_base
from prn_data.base.encode import encode_base
from prn_data.base.export import export_predictions
from prn_data.errors import BaseNetworkError
from prn_data.panoptic_io import write_rgb_ids
from prn_data.records import VOID
from prn_data.resize import ResizePolicy
from prn_data.targets import TargetParams
from prn_data.testing import CATS, make_sample


class ListDataset:
    """The dataset interface over a list of in-memory samples."""

    def __init__(self, samples):
        self.samples = samples
        self.categories = CATS

    def __len__(self):
        return len(self.samples)

    def load(self, i):
        return self.samples[i]


def same_prediction(a: BasePrediction, b: BasePrediction) -> None:
    assert np.array_equal(a.panoptic, b.panoptic)
    assert [s.to_json() for s in a.segments] == [s.to_json() for s in b.segments]
    assert (a.probs is None) == (b.probs is None)
    if a.probs is not None:
        assert a.probs.dtype == b.probs.dtype and np.array_equal(a.probs, b.probs)


def test_coco_sample_simulated_export_files_round_trip(tmp_path, coco_sample):
    from typer.testing import CliRunner

    from prn_data.cli import app
    from prn_data.datasets import open_dataset

    out = tmp_path / "pred"
    res = CliRunner().invoke(app, ["base", "export", f"coco:{coco_sample}", "--split", "val2017",
                                   "--base", "simulated:seed=4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    ds = open_dataset(f"coco:{coco_sample}", "val2017")
    # prn's one layout: panoptic.json + panoptic/<stem>.png (+ .npz probabilities beside each PNG)
    assert sorted(p.name for p in out.iterdir()) == ["panoptic", "panoptic.json"]
    data = json.loads((out / "panoptic.json").read_text())
    assert sorted(a["image_id"] for a in data["annotations"]) == [142238, 439180]
    assert sorted(p.name for p in (out / "panoptic").iterdir()) == [
        "000000142238.npz", "000000142238.png", "000000439180.npz", "000000439180.png"]
    assert [c["id"] for c in data["categories"]][:3] == [1, 2, 3] and "seed=4" in data["base"]
    sim = open_base("simulated:seed=4", ds.categories)
    files = open_base(f"files:{out}", ds.categories)
    params, policy = TargetParams(), ResizePolicy()
    for i in range(len(ds)):
        s = ds.load(i)
        a, b = sim.predict([s])[0], files.predict([s])[0]
        same_prediction(a, b)
        size = policy.output_size(*s.orig_size)
        ea, eb = (encode_base(p, size, len(ds.categories), params) for p in (a, b))
        for key in ("instance", "semantic", "panoptic"):
            assert np.array_equal(ea[key], eb[key]), key
        assert ea["segments"] == eb["segments"]


def test_export_without_probs_and_match_by_file_name(tmp_path):
    samples = [make_sample(i) for i in range(3)]
    base = open_base("simulated", CATS)
    preds = base.predict(samples)
    for p in preds:
        p.probs = None

    class NoProbs:
        spec = "test"

        def predict(self, batch):
            return [preds[int(s.image_id[3:])] for s in batch]

    path = export_predictions(ListDataset(samples), NoProbs(), tmp_path, batch=2)
    assert path == tmp_path / "panoptic.json" and not list(tmp_path.rglob("*.npz"))
    # Image ids that no longer match: the file name stem still finds the prediction.
    data = json.loads(path.read_text())
    for a in data["annotations"]:
        a["image_id"] = "renamed-" + str(a["image_id"])
    path.write_text(json.dumps(data))
    got = open_base(f"files:{tmp_path}", CATS).predict(samples)
    for a, b in zip(preds, got):
        same_prediction(a, b)


def _foreign(tmp_path, segments_info, ids, name="img0000"):
    write_rgb_ids(tmp_path / f"{name}.png", ids)
    (tmp_path / "panoptic_val.json").write_text(json.dumps(
        {"annotations": [{"image_id": name, "file_name": f"{name}.png", "segments_info": segments_info}]}))


def test_foreign_ids_are_renumbered(tmp_path):
    # panopticapi-style arbitrary ids: two persons (5, 7), sky split in two segments (9, 11), VOID = 0.
    ids = np.zeros((96, 128), np.int32)
    ids[:10], ids[10:20], ids[30:40, :10], ids[50:60, :10] = 9, 11, 5, 7
    info = [{"id": 5, "category_id": 1, "score": 0.7}, {"id": 7, "category_id": 1}, {"id": 9, "category_id": 100},
            {"id": 11, "category_id": 100}]
    _foreign(tmp_path, info, ids)
    p = open_base(f"files:{tmp_path}", CATS).predict([make_sample(0)])[0]
    assert p.panoptic[0, 0] == p.panoptic[15, 0] == 100_000
    assert p.panoptic[35, 0] == 1001 and p.panoptic[55, 0] == 1002 and p.panoptic[80, 0] == VOID
    assert [(s.id, s.area, s.score) for s in p.segments] == [(1001, 100, 0.7), (1002, 100, None), (100_000, 2560, None)]
    assert p.probs is None


def test_missing_prediction_names_the_image(tmp_path):
    _foreign(tmp_path, [], np.zeros((96, 128), np.int32), name="other")
    with pytest.raises(BaseNetworkError, match="no prediction for image img0000"):
        open_base(f"files:{tmp_path}", CATS).predict([make_sample(0)])
    p = open_base(f"files:{tmp_path}", CATS, allow_missing=True).predict([make_sample(0)])[0]
    assert p.segments == [] and np.all(p.panoptic == VOID) and p.panoptic.shape == (96, 128)


@pytest.mark.parametrize(
    "info, ids_value, message",
    [
        ([{"id": 5, "category_id": 1}, {"id": 6, "category_id": 1}], 5, "segment 6 .* absent from the id map"),
        ([], 5, r"ids \[5\] of the id map are not listed"),
        ([{"id": 5, "category_id": 77}], 5, "segment 5 has unknown category id 77"),
    ],
)
def test_inconsistent_json_and_png(tmp_path, info, ids_value, message):
    ids = np.zeros((96, 128), np.int32)
    ids[:4] = ids_value
    _foreign(tmp_path, info, ids)
    with pytest.raises(BaseNetworkError, match=rf"img0000\.png \(image img0000\): {message}"):
        open_base(f"files:{tmp_path}", CATS).predict([make_sample(0)])


def test_wrong_size_and_bad_probability_files(tmp_path):
    ids = np.zeros((96, 128), np.int32)
    _foreign(tmp_path, [], ids)
    base = open_base(f"files:{tmp_path}", CATS)
    np.savez(tmp_path / "img0000.npz", probs=np.ones((3, 24, 32), np.float32))
    with pytest.raises(BaseNetworkError, match=r"img0000\.npz \(image img0000\): probabilities have shape \(3, 24, 32\)"):
        base.predict([make_sample(0)])
    bad = np.ones((4, 24, 32), np.float32)
    bad[2, 3, 4] = np.nan
    np.savez(tmp_path / "img0000.npz", probs=bad)
    with pytest.raises(BaseNetworkError, match="img0000.npz .*NaN"):
        base.predict([make_sample(0)])
    np.savez(tmp_path / "img0000.npz", other=bad)
    with pytest.raises(BaseNetworkError, match="expected an array 'probs'"):
        base.predict([make_sample(0)])
    (tmp_path / "img0000.npz").unlink()
    _foreign(tmp_path, [], np.zeros((90, 128), np.int32))
    with pytest.raises(BaseNetworkError, match="prediction is 90×128, image is 96×128"):
        open_base(f"files:{tmp_path}", CATS).predict([make_sample(0)])
    (tmp_path / "second.json").write_text("{}")
    with pytest.raises(BaseNetworkError, match="expected panoptic.json or exactly one COCO panoptic JSON, found 2"):
        open_base(f"files:{tmp_path}", CATS)


def test_specs():
    assert open_base("none", CATS) is None
    with pytest.raises(BaseNetworkError, match="unknown base network spec 'detr'"):
        open_base("detr", CATS)
    with pytest.raises(BaseNetworkError, match="does not exist"):
        open_base("files:/nonexistent/dir", CATS)


def test_cli_export_error_is_one_line(tmp_path, coco_sample):
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "from prn_data.cli import main; main()", "base", "export",
                        f"coco:{coco_sample}", "--split", "val2017", "--base", f"files:{tmp_path}",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "400"})
    assert r.returncode == 2
    assert "expected panoptic.json or exactly one COCO panoptic JSON, found 0" in r.stderr and "Traceback" not in r.stderr


def test_old_flat_export_layout_and_json_path_are_read(tmp_path):
    """Folders exported before the one layout (predictions.json + PNGs side by side) still read; a JSON
    file may be named directly; panoptic.json wins over other JSON files in its folder."""
    samples = [make_sample(i) for i in range(2)]
    preds = open_base("simulated", CATS).predict(samples)
    new = tmp_path / "new"
    export_predictions(ListDataset(samples), open_base("simulated", CATS), new)
    old = tmp_path / "old"
    old.mkdir()
    data = json.loads((new / "panoptic.json").read_text())
    for f in (new / "panoptic").iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    (old / "predictions.json").write_text(json.dumps(data))
    (new / "results.json").write_text("{}")  # e.g. prn evaluate's figures beside the predictions
    for spec in (f"files:{old}", f"files:{new}", f"files:{new / 'panoptic.json'}", f"files:{old / 'predictions.json'}"):
        got = open_base(spec, CATS).predict(samples)
        for a, b in zip(preds, got):
            same_prediction(a, b)


def test_export_clamps_scores_to_0_1(tmp_path):
    samples = [make_sample(0)]
    pred = open_base("simulated", CATS).predict(samples)[0]
    things = [s for s in pred.segments if s.isthing]
    things[0].score, things[1].score = 1.025, -0.5

    class Fixed:
        spec = "fixed"

        def predict(self, batch):
            return [pred]

    path = export_predictions(ListDataset(samples), Fixed(), tmp_path)
    scores = {s["id"]: s.get("score") for s in json.loads(path.read_text())["annotations"][0]["segments_info"]}
    assert scores[things[0].id] == 1.0 and scores[things[1].id] == 0.0
    assert all(v is None or 0.0 <= v <= 1.0 for v in scores.values())


def test_file_name_may_not_leave_the_folder(tmp_path):
    _foreign(tmp_path, [], np.zeros((96, 128), np.int32))
    data = json.loads((tmp_path / "panoptic_val.json").read_text())
    data["annotations"][0]["file_name"] = "../img0000.png"
    (tmp_path / "panoptic_val.json").write_text(json.dumps(data))
    with pytest.raises(BaseNetworkError, match=r"file_name '\.\./img0000\.png' of image img0000 leaves the prediction folder"):
        open_base(f"files:{tmp_path}", CATS).predict([make_sample(0)])
