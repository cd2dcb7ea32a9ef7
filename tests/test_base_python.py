"""python:module:factory — a tiny PyTorch model defined here, imported from tmp_path, run on the CPU."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest

from prn_data.base import open_base
from prn_data.base.encode import encode_base
from prn_data.errors import BaseNetworkError
from prn_data.records import Sample
from prn_data.targets import TargetParams
from prn_data.testing import CATS


MODEL_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn


    class Bright(nn.Module):
        """A thing where the channel sum exceeds 300 (one segment), stuff elsewhere; probabilities at 1/2.

        The sum of three 8-bit values is exact in float32 whatever the thread count or kernel, so the
        threshold decides the same pixels in the build (one torch thread) and in a direct call.
        """

        def __init__(self, thing, stuff, bad=None):
            super().__init__()
            self.thing, self.stuff, self.bad = thing, stuff, bad

        def forward(self, images):
            out = []
            for im in images:
                m = im.sum(0).float()
                pan = torch.where(m > 300, 7, 9).to(torch.int32)  # arbitrary ids, as a user's model may give
                p = nn.functional.avg_pool2d(torch.sigmoid((m - 300) / 30)[None, None], 2)[0, 0]
                probs = torch.stack([p, 1 - p])
                if self.bad == "shape":
                    pan = pan[:-1]
                if self.bad == "probs":
                    probs = probs[:1]
                segs = [{"id": 9, "category_id": self.stuff}]
                if (pan == 7).any():
                    segs.insert(0, {"id": 7, "category_id": self.thing, "score": 0.75})
                out.append({"panoptic": pan, "segments": segs, "probs": probs})
            return out


    def make():
        return Bright(1, 100), [1, 100]


    def make_coco():
        return Bright(1, 187), [{"id": 1}, {"id": 187}]


    def make_bad_shape():
        return Bright(1, 100, "shape"), [1, 100]


    def make_bad_probs():
        return Bright(1, 100, "probs"), [1, 100]


    def make_unknown():
        return Bright(1, 100), [1, 555]
''')


@pytest.fixture()
def model_module(tmp_path, monkeypatch):
    name = f"tiny_prn_model_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(MODEL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("PRN_DEVICE", raising=False)
    return name


def bright_sample(image_id="s0"):
    image = np.zeros((8, 8, 3), np.uint8)
    image[2:6, 2:6] = 200
    return Sample(image, np.full((8, 8), -1, np.int32), [], image_id, f"{image_id}.jpg", (8, 8))


def test_tiny_model_prediction_hand_computed(model_module):
    base = open_base(f"python:{model_module}:make,batch=2", CATS)
    preds = base.predict([bright_sample("a"), bright_sample("b"), bright_sample("c")])
    assert [p.image_id for p in preds] == ["a", "b", "c"]
    p = preds[0]
    # ids renumbered to the convention: the thing (person, id 1) → 1001, the stuff (sky, 100) → 100000.
    assert [(s.id, s.area, s.score) for s in p.segments] == [(1001, 16, 0.75), (100_000, 48, None)]
    assert p.panoptic[2, 2] == 1001 and p.panoptic[0, 0] == 100_000
    # Probabilities land in the dataset's train-id order (sky 0, person 1, grass 2, car 3); the 2×2 blocks
    # of the bright square have sigmoid((3·200 − 300)/30), the others sigmoid(−10).
    hi, lo = 1 / (1 + math.exp(-10)), 1 / (1 + math.exp(10))
    person = np.full((4, 4), lo, np.float32)
    person[1:3, 1:3] = hi
    np.testing.assert_allclose(p.probs[1], person, rtol=1e-5)
    np.testing.assert_allclose(p.probs[0], 1 - person, rtol=1e-5, atol=1e-6)
    assert not p.probs[2:].any()
    out = encode_base(p, (8, 8), len(CATS), TargetParams())
    # Center of mass (3.5, 3.5) → Gaussian peak at (4, 4) scaled by the score 0.75.
    assert out["instance"][0].max() == pytest.approx(0.75) and out["instance"][0, 4, 4] == pytest.approx(0.75)
    np.testing.assert_allclose(out["semantic"].sum(0), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    "factory, message",
    [
        ("make_bad_shape", r"\(image s0\): 'panoptic' must be an integer map of shape \(8, 8\)"),
        ("make_bad_probs", r"\(image s0\): probabilities have shape \(1, 4, 4\), expected \(2, h, w\)"),
        ("make_unknown", r"categories \[555\] are unknown to the dataset"),
        ("nothing", r"module '.*' has no callable 'nothing'"),
    ],
)
def test_bad_factories_name_the_module(model_module, factory, message):
    with pytest.raises(BaseNetworkError, match=rf"python:{model_module}:{factory}.*{message}"):
        open_base(f"python:{model_module}:{factory}", CATS).predict([bright_sample()])


def test_unimportable_module_and_bad_spec():
    with pytest.raises(BaseNetworkError, match=r"python:no_such_module_xyz:make: cannot import module 'no_such_module_xyz'"):
        open_base("python:no_such_module_xyz:make", CATS).predict([bright_sample()])
    with pytest.raises(BaseNetworkError, match="expected python:module:factory"):
        open_base("python:just_a_module", CATS)
    with pytest.raises(BaseNetworkError, match="unknown option"):
        open_base("python:m:f,gpu=1", CATS)


def test_python_base_lands_in_the_store(model_module, tmp_path, coco_sample):
    from prn_data.build import BuildConfig, build
    from prn_data.datasets import open_dataset
    from prn_data.resize import ResizePolicy
    from prn_data.store import open_store

    spec = f"python:{model_module}:make_coco"
    policy = ResizePolicy(short=64, max_long=96)
    res = build(BuildConfig(dataset=f"coco:{coco_sample}", split="val2017", base=spec, out=str(tmp_path / "s.zarr"),
                            limit=1, scheduler="threads", workers=1, policy=policy))
    assert res.ok, res.failures
    store = open_store(tmp_path / "s.zarr")
    got = store.read_sample(0)
    ds = open_dataset(f"coco:{coco_sample}", "val2017")
    s = ds.load(0)
    size = policy.output_size(*s.orig_size)
    expect = encode_base(open_base(spec, ds.categories).predict([s])[0], size, len(ds.categories), TargetParams())
    assert np.array_equal(got["base/panoptic"], expect["panoptic"])
    assert [d["id"] for d in got["base/segments"]] == [d["id"] for d in expect["segments"]]
    # Stored at 1/1024 (heatmap, probabilities) and 1/16 px (offsets) steps: within half a step.
    assert np.abs(got["base/instance"][0] - expect["instance"][0]).max() <= 0.5 / 1024 + 1e-6
    assert np.abs(got["base/instance"][1:] - expect["instance"][1:]).max() <= 0.5 / 16 + 1e-6
    assert np.abs(got["base/semantic"] - expect["semantic"]).max() <= 0.5 / 1024 + 1e-6
    sky = ds.categories.by_id(187).train_id
    assert got["base/semantic"][sky].max() > 0.99


def test_device_choice(monkeypatch):
    import torch

    from prn_data.base.python import pick_device

    monkeypatch.setenv("PRN_DEVICE", "cpu")
    assert pick_device() == "cpu"
    monkeypatch.delenv("PRN_DEVICE")
    assert pick_device() == ("cuda:0" if torch.cuda.is_available() else "cpu")
