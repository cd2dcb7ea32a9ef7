"""Bad input: each problem raises DatasetError naming the file, from load(i), and other samples still load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prn_data.datasets import open_dataset
from prn_data.errors import DatasetError
from prn_data.panoptic_io import id2rgb

CATEGORIES = [
    {"id": 1, "name": "dot", "isthing": 1, "color": [255, 0, 0]},
    {"id": 5, "name": "floor", "isthing": 0, "color": [0, 255, 0]},
]


def _make_coco(root: Path, n: int = 2) -> dict:
    """A valid 2-image COCO panoptic dataset: 4×5 pixels, a thing (file id 300) on stuff (file id 77)."""
    (root / "annotations" / "panoptic_val").mkdir(parents=True)
    (root / "val").mkdir()
    data = {"images": [], "annotations": [], "categories": CATEGORIES}
    for i in range(n):
        ids = np.full((4, 5), 77)
        ids[1:3, 1:3] = 300
        ids[0, 4] = 0
        Image.fromarray(id2rgb(ids)).save(root / "annotations" / "panoptic_val" / f"im{i}.png")
        Image.fromarray(np.full((4, 5, 3), 10 * i, np.uint8)).save(root / "val" / f"im{i}.png")
        data["images"].append({"id": i, "file_name": f"im{i}.png", "height": 4, "width": 5})
        data["annotations"].append(
            {
                "image_id": i,
                "file_name": f"im{i}.png",
                "segments_info": [
                    {"id": 300, "category_id": 1, "iscrowd": 0},
                    {"id": 77, "category_id": 5, "iscrowd": 0},
                ],
            }
        )
    _save(root, data)
    return data


def _save(root: Path, data: dict) -> None:
    (root / "annotations" / "panoptic_val.json").write_text(json.dumps(data))


def _expect(root: Path, path_part: str, problem_part: str, index: int = 0) -> DatasetError:
    ds = open_dataset(f"coco:{root}", "val")  # opening never fails on per-sample problems
    with pytest.raises(DatasetError) as info:
        ds.load(index)
    err = info.value
    assert path_part in str(err.path), err
    assert problem_part in err.problem, err
    other = ds.load(1 - index)  # the other sample still loads
    assert other.panoptic.tolist()[1] == [5000, 1001, 1001, 5000, 5000]
    return err


def test_valid_tiny_dataset_by_hand(tmp_path):
    _make_coco(tmp_path)
    s = open_dataset(f"coco:{tmp_path}", "val").load(0)
    assert s.panoptic.tolist() == [
        [5000, 5000, 5000, 5000, -1],
        [5000, 1001, 1001, 5000, 5000],
        [5000, 1001, 1001, 5000, 5000],
        [5000, 5000, 5000, 5000, 5000],
    ]
    assert [(g.id, g.area, g.bbox) for g in s.segments] == [(1001, 4, (1, 1, 2, 2)), (5000, 15, (0, 0, 5, 4))]


def test_missing_png(tmp_path):
    _make_coco(tmp_path)
    (tmp_path / "annotations" / "panoptic_val" / "im0.png").unlink()
    _expect(tmp_path, "panoptic_val/im0.png", "missing")


def test_png_id_not_in_json(tmp_path):
    data = _make_coco(tmp_path)
    data["annotations"][0]["segments_info"].pop(0)  # 300 stays in the PNG
    _save(tmp_path, data)
    err = _expect(tmp_path, "panoptic_val/im0.png", "not listed")
    assert "300" in err.problem


def test_json_id_not_in_png(tmp_path):
    data = _make_coco(tmp_path)
    data["annotations"][0]["segments_info"].append({"id": 4242, "category_id": 1, "iscrowd": 0})
    _save(tmp_path, data)
    err = _expect(tmp_path, "panoptic_val/im0.png", "absent")
    assert "4242" in err.problem


def test_unknown_category(tmp_path):
    data = _make_coco(tmp_path)
    data["annotations"][0]["segments_info"][0]["category_id"] = 9
    _save(tmp_path, data)
    _expect(tmp_path, "panoptic_val.json", "unknown category id 9")


def test_image_and_label_sizes_differ(tmp_path):
    _make_coco(tmp_path)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "val" / "im1.png")
    err = _expect(tmp_path, "val/im1.png", "4x6", index=1)
    assert "4x5" in err.problem


def test_truncated_image(tmp_path):
    _make_coco(tmp_path)
    Image.fromarray((np.arange(4 * 5 * 3) * 37 % 256).astype(np.uint8).reshape(4, 5, 3)).save(tmp_path / "val" / "im0.jpg")
    data = json.loads((tmp_path / "annotations" / "panoptic_val.json").read_text())
    data["images"][0]["file_name"] = "im0.jpg"
    _save(tmp_path, data)
    raw = (tmp_path / "val" / "im0.jpg").read_bytes()
    (tmp_path / "val" / "im0.jpg").write_bytes(raw[: len(raw) // 2])
    _expect(tmp_path, "val/im0.jpg", "truncated")


def test_unreadable_label_png(tmp_path):
    _make_coco(tmp_path)
    (tmp_path / "annotations" / "panoptic_val" / "im0.png").write_bytes(b"not a png at all")
    _expect(tmp_path, "panoptic_val/im0.png", "unreadable")


@pytest.mark.parametrize("field", ["annotation", "image"])
def test_file_name_escaping_root(tmp_path, field):
    root = tmp_path / "ds"
    data = _make_coco(root)
    if field == "annotation":
        data["annotations"][0]["file_name"] = "../../val/im0.png"
    else:
        data["images"][0]["file_name"] = "../annotations/panoptic_val.json"
    _save(root, data)
    _expect(root, "..", "escapes")


def test_json_errors_at_open(tmp_path):
    _make_coco(tmp_path)
    (tmp_path / "annotations" / "panoptic_val.json").write_text("{not json")
    with pytest.raises(DatasetError) as info:
        open_dataset(f"coco:{tmp_path}", "val")
    assert info.value.path.endswith("panoptic_val.json") and "unreadable" in info.value.problem
    with pytest.raises(DatasetError, match="missing"):
        open_dataset(f"coco:{tmp_path}", "train")
    with pytest.raises(DatasetError, match="unknown dataset spec"):
        open_dataset("imagenet:/x", "val")


def _make_gtfine(root: Path, inst: np.ndarray, image_hw=None, name="bonn_000000_000001") -> None:
    (root / "leftImg8bit/val/bonn").mkdir(parents=True, exist_ok=True)
    (root / "gtFine/val/bonn").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*(image_hw or inst.shape), 3), np.uint8)).save(root / f"leftImg8bit/val/bonn/{name}_leftImg8bit.png")
    Image.fromarray(inst.astype(np.uint16)).save(root / f"gtFine/val/bonn/{name}_gtFine_instanceIds.png")


def test_gtfine_errors(tmp_path):
    _make_gtfine(tmp_path, np.array([[7, 40], [7, 7]]), name="bonn_000000_000001")  # 40: no such label
    _make_gtfine(tmp_path, np.array([[7, 7], [7, 7]]), image_hw=(2, 3), name="bonn_000000_000002")
    _make_gtfine(tmp_path, np.array([[7, 7000], [7, 7]]), name="bonn_000000_000003")  # instance of stuff
    _make_gtfine(tmp_path, np.array([[7, 24000], [7, 7]]), name="bonn_000000_000004")
    (tmp_path / "gtFine/val/bonn/bonn_000000_000004_gtFine_instanceIds.png").unlink()
    _make_gtfine(tmp_path, np.array([[7, 24000], [7, 7]]), name="bonn_000000_000005")  # valid
    ds = open_dataset(f"cityscapes:{tmp_path}", "val")
    expected = [
        ("000001_gtFine_instanceIds.png", "not a Cityscapes label"),
        ("000002_leftImg8bit.png", "2x3"),
        ("000003_gtFine_instanceIds.png", "stuff class road"),
        ("000004_gtFine_instanceIds.png", "missing"),
    ]
    for i, (path_part, problem_part) in enumerate(expected):
        with pytest.raises(DatasetError) as info:
            ds.load(i)
        assert info.value.path.endswith(path_part) and problem_part in info.value.problem, info.value
    assert ds.load(4).panoptic.tolist() == [[7000, 24001], [7000, 7000]]


def test_cityscapes_panoptic_unknown_category(tmp_path):
    (tmp_path / "gtFine/cityscapes_panoptic_val").mkdir(parents=True)
    (tmp_path / "leftImg8bit/val/bonn").mkdir(parents=True)
    Image.fromarray(id2rgb(np.array([[7, 26000]]))).save(tmp_path / "gtFine/cityscapes_panoptic_val/a.png")
    Image.fromarray(np.zeros((1, 2, 3), np.uint8)).save(tmp_path / "leftImg8bit/val/bonn/bonn_0_1_leftImg8bit.png")
    segs = [{"id": 7, "category_id": 7, "iscrowd": 0}, {"id": 26000, "category_id": 30, "iscrowd": 0}]
    ann = {"annotations": [{"image_id": "bonn_0_1", "file_name": "a.png", "segments_info": segs}]}
    (tmp_path / "gtFine/cityscapes_panoptic_val.json").write_text(json.dumps(ann))
    ds = open_dataset(f"cityscapes:{tmp_path}", "val")
    with pytest.raises(DatasetError) as info:
        ds.load(0)
    assert info.value.path.endswith("cityscapes_panoptic_val.json") and "unknown category id 30" in info.value.problem


def test_cli_check_reports_failures(tmp_path):
    from typer.testing import CliRunner

    from prn_data.cli import app

    _make_coco(tmp_path)
    (tmp_path / "annotations" / "panoptic_val" / "im1.png").unlink()
    res = CliRunner().invoke(app, ["dataset", f"coco:{tmp_path}", "--split", "val", "--check"])
    assert isinstance(res.exception, DatasetError) and "1 of 2 samples failed" in str(res.exception)


def test_bad_specs_and_options(tmp_path, coco_sample):
    with pytest.raises(DatasetError, match="takes no option"):
        open_dataset(f"coco:{coco_sample}", "val2017", colour="red")
    with pytest.raises(DatasetError, match="needs a path"):
        open_dataset("coco:", "val2017")
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(f"cityscapes:{tmp_path / 'nowhere'}", "val")
    with pytest.raises(DatasetError, match="image folder"):
        open_dataset(f"cityscapes:{tmp_path}", "val")
    with pytest.raises(DatasetError, match="integer N"):
        open_dataset("synthetic:many", "val", root=tmp_path)
    with pytest.raises(DatasetError, match="min_size"):
        open_dataset("synthetic:1", "val", root=tmp_path, min_size=(8, 8))
    assert not any(tmp_path.iterdir())  # nothing generated on a bad spec


@pytest.mark.parametrize("value", ["abc", 0, 4.5, None, True])
def test_image_height_not_a_positive_integer(tmp_path, value):
    data = _make_coco(tmp_path)
    data["images"][0]["height"] = value
    _save(tmp_path, data)
    err = _expect(tmp_path, "panoptic_val.json", f"images[0].height (image 0) must be a positive integer, got {value!r}")
    with pytest.raises(DatasetError) as info:
        open_dataset(f"coco:{tmp_path}", "val").orig_size(0)
    assert str(info.value) == str(err)


def test_images_not_a_list(tmp_path):
    data = _make_coco(tmp_path)
    data["images"] = 7
    _save(tmp_path, data)
    with pytest.raises(DatasetError, match=r"panoptic_val\.json: 'images' must be a list, got int"):
        open_dataset(f"coco:{tmp_path}", "val")


def test_build_without_images_list_fails_only_the_sample_whose_png_is_missing(tmp_path):
    # Without images[] the sizes come from the PNG headers; a missing PNG is that sample's failure.
    from prn_data.build import BuildConfig, build
    from prn_data.store import open_store

    data = _make_coco(tmp_path / "ds", n=3)
    del data["images"]  # images are then looked up as <PNG name>.jpg
    _save(tmp_path / "ds", data)
    for i in range(3):
        Image.open(tmp_path / "ds" / "val" / f"im{i}.png").save(tmp_path / "ds" / "val" / f"im{i}.jpg")
    png = tmp_path / "ds" / "annotations" / "panoptic_val" / "im1.png"
    png.unlink()
    store = tmp_path / "s.zarr"
    result = build(BuildConfig(f"coco:{tmp_path / 'ds'}", "val", out=str(store), workers=1))
    assert (result.built, result.skipped) == (2, 0)
    assert result.failures == [{"index": 1, "file": str(png), "error": "panoptic PNG is missing"}]
    st = open_store(str(store))
    assert st.done.tolist() == [True, False, True]
    assert [f["index"] for f in st.failures] == [1]
