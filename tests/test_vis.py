"""Pictures of results (prn_model.vis, `prn vis`, `prn evaluate --vis`): panels of a tiny store and a
one-step model, of `prn refine`'s output, and the box-gate map on a hand-made case."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from prn_data.datasets import open_dataset

from prn_data.show import figure_size_px
from prn_data.store import open_store
from prn_data.testing import run_prn
from prn_model.checkpoint import load_checkpoint
from prn_model.cli import app
from prn_model.evaluate import default_postprocess_config
from prn_model.ppgbf import PostProcessConfig
from prn_model.refine import refine_to_folder
from prn_model.vis import draw_store_samples, gate_map

from helpers import tiny_trained_run

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny synthetic store (simulated base) and a checkpoint after one training step on it."""
    tmp = tmp_path_factory.mktemp("vis")
    store, ckpt = tiny_trained_run(tmp, split="train", short=48)
    return {"store": store, "ckpt": ckpt, "tmp": tmp}


def test_gate_map_hand_case():
    """Two centers, (2, 2) and (2, 9), on a 5×12 image; every pixel's box is its group's (columns 0–5 or
    6–11), except (2, 5), whose box (columns 5–11) only the right center's passes although the left one is
    nearer, and (0, 0), whose 1-px box no center's passes; (4, 11) is background."""
    H, W = 5, 12
    heat = torch.zeros(H, W)
    heat[2, 2], heat[2, 9] = 1.0, 0.9
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    left = xx < 6
    x0, x1 = torch.where(left, 0.0, 6.0), torch.where(left, 5.0, 11.0)
    box = torch.stack([yy, 4 - yy, xx - x0, x1 - xx])
    box[:, 2, 5] = torch.tensor([2.0, 2.0, 0.0, 6.0])
    box[:, 0, 0] = 0.0
    fg = torch.full((H, W), 10.0)
    fg[4, 11] = -10.0
    cfg = PostProcessConfig(threshold=0.2, nms_kernel=3)
    gate = gate_map(heat, torch.zeros(2, H, W), box, fg, cfg)
    want = np.ones((H, W), np.uint8)
    want[2, 5], want[0, 0], want[4, 11] = 2, 3, 0
    np.testing.assert_array_equal(gate, want)
    # no box offsets (or the gate off): every foreground pixel keeps its nearest center
    np.testing.assert_array_equal(gate_map(heat, torch.zeros(2, H, W), None, fg, cfg), np.where(want == 0, 0, 1))


def test_store_panels_with_and_without_model(run, tmp_path):
    st = open_store(run["store"])
    model, _ = load_checkpoint(run["ckpt"])
    cfg = default_postprocess_config(st.attrs)
    paths = draw_store_samples(model, st, [0, 1], tmp_path / "vis", cfg=cfg, dpi=30)
    assert [p.name for p in paths] == [f"{i}-{st.read_sample(i, arrays=['image_id'])['image_id']}.png" for i in (0, 1)]
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            # image | GT | base | PRN, then PRN's heatmap, foreground, box gate and its legend: 2 × 4 panels
            assert im.size == figure_size_px(tuple(st.sizes[i]), 30, rows=2, cols=4)
            assert np.asarray(im.convert("RGB")).std() > 10
    (only,) = draw_store_samples(None, st, [1], tmp_path / "gt-base.png", cfg=cfg, dpi=30)
    with Image.open(only) as im:  # no model: image | GT | base, one row
        assert im.size == figure_size_px(tuple(st.sizes[1]), 30, rows=1, cols=3)


def test_cli_vis_evaluate_vis_and_refined(run, tmp_path):
    """The commands in-process (typer's runner: no interpreter start per command), one error through the
    installed `prn` (one line, exit 2)."""
    store, ckpt = run["store"], str(run["ckpt"])
    st = open_store(store)
    ev = tmp_path / "ev"
    r = runner.invoke(app, ["evaluate", "--store", store, "--checkpoint", ckpt, "--out", str(ev), "--vis", "1",
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "per class" in r.stdout and "diff" in r.stdout
    pics = sorted((ev / "vis").glob("*.png"))
    assert len(pics) == 1 and pics[0].name.startswith("0-")
    with Image.open(pics[0]) as im:
        assert im.size == figure_size_px(tuple(st.sizes[0]), 80, rows=2, cols=4)
    table = json.loads((ev / "results.json").read_text())["per_class_table"]
    assert table and all({"name", "base", "prn", "diff"} <= set(r) for r in table)
    assert [r["diff"] for r in table] == sorted((r["diff"] for r in table), reverse=True)

    one = tmp_path / "one.png"
    r = runner.invoke(app, ["vis", store, "1", "--checkpoint", ckpt, "--out", str(one), "--dpi", "30"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(one)
    with Image.open(one) as im:
        assert im.size == figure_size_px(tuple(st.sizes[1]), 30, rows=2, cols=4)

    refined = tmp_path / "refined"
    refine_to_folder("synthetic:2", "simulated", ckpt, refined, split="train")
    r = runner.invoke(app, ["vis", "--refined", str(refined), "--images", "synthetic:2", "--split", "train", "--base",
                            "simulated", "--out", str(tmp_path / "rv"), "--dpi", "30"])
    assert r.exit_code == 0, r.output
    printed = r.stdout.split()
    ds = open_dataset("synthetic:2", "train")
    assert printed == [str(tmp_path / "rv" / f"{k}.png") for k in ds.keys()]
    for i, p in enumerate(printed):
        with Image.open(p) as im:  # image | base | PRN at the original size's aspect
            assert im.size == figure_size_px(ds.orig_size(i), 30, rows=1, cols=3)
    bad = run_prn("vis", "--refined", refined, "--out", tmp_path / "x", check=False)
    assert bad.returncode == 2 and "--images" in bad.stderr and "Traceback" not in bad.stderr
