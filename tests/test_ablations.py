"""The paper's §4.5 ablation switches: every combination of CoordConv placement, foreground source and box
offsets trains, validates and evaluates; the box gate can be switched off (foreground filter kept) and its
IoU threshold set, from the config and from `prn evaluate`."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from prn_data.store import open_store
from prn_data.testing import build_tiny_store, run_prn
from prn_model.checkpoint import load_checkpoint
from prn_model.config import ConfigError, validate_config
from prn_model.evaluate import default_postprocess_config, evaluate_store, postprocess_config, validation
from prn_model.merge import postprocess
from prn_model.ppgbf import PostProcessConfig, group_foreground
from prn_model.train import train

from helpers import MERGE_CATS, tiny_config


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_tiny_store(tmp_path_factory.mktemp("ablations") / "s.zarr", n=2, split="val", short=32, max_long=64)


@pytest.fixture(scope="module")
def base_pq(store):
    return evaluate_store(store, base_only=True, workers=1)["base"]["All"]


SWITCHES = list(itertools.product(("none", "encoder", "decoder", "both"), ("branch", "semantic"), (True, False)))


@pytest.mark.parametrize("coordconv,foreground,box_offsets", SWITCHES)
def test_every_switch_combination_trains_validates_and_evaluates(store, base_pq, tmp_path, coordconv, foreground,
                                                                  box_offsets):
    run = tmp_path / "run"
    cfg = tiny_config(store, run, iters=1, **{"model.coordconv": coordconv, "model.foreground": foreground,
                                               "model.box_offsets": box_offsets, "data.val_store": store})
    train(cfg, show_progress=False, validate=validation(cfg))
    assert (run / "model.pt").is_file()  # written after the final validation, which post-processes
    val = json.loads((run / "val.jsonl").read_text().splitlines()[-1])
    assert 0 <= val["pq"] <= 100
    model, _ = load_checkpoint(run / "model.pt")
    # the switches are what the checkpoint rebuilds: box channels, coordinate inputs, foreground branch
    assert model.offset_head[1].out_channels == (6 if box_offsets else 2)
    assert (model.foreground_head is None) == (foreground == "semantic")
    enc, dec = coordconv in ("both", "encoder"), coordconv in ("both", "decoder")
    assert model.input.out_channels == 3 * 8 + (2 if enc else 0)  # TINY_MODEL's n_en = 8
    assert model.encoder.layer2[0].conv1.with_coords == enc
    assert model.decoder.fuse[0][0].with_coords == dec and model.center_head[0][0].with_coords == dec
    res = evaluate_store(store, checkpoint=run / "model.pt", device="cpu", workers=1)
    assert 0 <= res["prn"]["All"]["pq"] <= 1
    assert res["base"]["All"] == base_pq  # the base's figures do not depend on PRN's switches


def _two_centers():
    """A 1×8 strip: centers at x=1 (heat 0.9) and x=6 (0.8); pixel x=3 is nearer (by its center offset 0)
    to x=1 but its box covers x=3..7, the box of the center at x=6 (IoU 1), not x=0..2 (IoU 0)."""
    heat = torch.zeros(1, 8)
    heat[0, 1], heat[0, 6] = 0.9, 0.8
    off = torch.zeros(2, 1, 8)
    box = torch.zeros(4, 1, 8)
    for x in range(8):  # (t, b, l, r): x ≤ 2 → box 0..2; x ≥ 3 → box 3..7
        lo, hi = (0, 2) if x <= 2 else (3, 7)
        box[2, 0, x], box[3, 0, x] = x - lo, hi - x
    return heat, off, box, torch.ones(1, 8, dtype=torch.bool)


def test_box_gate_switch_keeps_the_foreground_filter():
    heat, off, box, mask = _two_centers()
    mask[0, 7] = False  # a background pixel stays out with or without the gate
    cfg = PostProcessConfig(threshold=0.1, nms_kernel=3)
    flat, k, _, _ = group_foreground(heat, off, box, mask, cfg)
    assert flat.tolist() == [0, 1, 2, 3, 4, 5, 6] and k.tolist() == [0, 0, 0, 1, 1, 1, 1]
    # without the gate pixel 3 goes to its nearest center, x=1 (distance 2 against 3)
    flat, k, _, _ = group_foreground(heat, off, None, mask, cfg)
    assert k.tolist() == [0, 0, 0, 0, 1, 1, 1]
    # pixel 3's box shrunk to 3..6: IoU 4/5 = 0.8 with the box 3..7 of the center at x=6 (0 with x=1's)
    box[3, 0, 3] = 3
    _, k, _, _ = group_foreground(heat, off, box, mask, PostProcessConfig(threshold=0.1, nms_kernel=3, box_iou=0.75))
    assert k.tolist() == [0, 0, 0, 1, 1, 1, 1]
    _, k, _, _ = group_foreground(heat, off, box, mask, PostProcessConfig(threshold=0.1, nms_kernel=3, box_iou=0.85))
    assert k.tolist() == [0, 0, 0, -1, 1, 1, 1]  # above the threshold: no center passes, the pixel stays out


def test_postprocess_without_box_offsets_equals_box_gate_off():
    torch.manual_seed(0)
    out = {"semantic": torch.randn(1, 4, 8, 8), "center": torch.rand(1, 1, 32, 32),
           "center_offset": torch.randn(1, 2, 32, 32) * 3, "box_offset": torch.rand(1, 4, 32, 32) * 4,
           "foreground": torch.randn(1, 1, 32, 32)}
    cfg = PostProcessConfig(stuff_area=0)
    on = postprocess(out, MERGE_CATS, cfg)[0][0]
    off = postprocess(out, MERGE_CATS, PostProcessConfig(stuff_area=0, box_gate=False))[0][0]
    no_box = postprocess({k: v for k, v in out.items() if k != "box_offset"}, MERGE_CATS, cfg)[0][0]
    assert (off == no_box).all()
    assert not (on == off).all()  # the gate does change this assignment


def test_postprocess_settings_in_the_config_and_their_order():
    cfg = validate_config({"postprocess": {"box_iou": 0.3, "box_gate": False}})
    attrs = {"canvas": [64, 96]}
    got = postprocess_config(attrs, cfg.postprocess, {"box_iou": 0.7, "grouping": None})
    assert (got.box_iou, got.box_gate) == (0.7, False)
    assert got.stuff_area == default_postprocess_config(attrs).stuff_area  # the store's default stays
    with pytest.raises(ConfigError, match="postprocess: box_iou must lie in"):
        validate_config({"postprocess": {"box_iou": 1.5}})
    with pytest.raises(ConfigError, match="did you mean postprocess.box_iou"):
        validate_config({"postprocess": {"box_iu": 0.5}})


def test_evaluate_flags_and_the_checkpoints_postprocess_section(store, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(store, run, iters=1, **{"postprocess": {"box_gate": False}}), show_progress=False)
    ckpt = run / "model.pt"
    off = evaluate_store(store, checkpoint=ckpt, device="cpu", workers=1)
    explicit = evaluate_store(store, checkpoint=ckpt, device="cpu", workers=1,
                              cfg=PostProcessConfig(stuff_area=default_postprocess_config(open_store(store).attrs)
                                                    .stuff_area, box_gate=False))
    assert off["prn"]["All"] == explicit["prn"]["All"]
    p = run_prn("evaluate", "--store", store, "--checkpoint", ckpt, "--device", "cpu", "--json", "--box-gate",
                "--box-iou", "0.3", "--workers", "1")
    on = json.loads(p.stdout)
    gated = evaluate_store(store, checkpoint=ckpt, device="cpu", workers=1, post={"box_gate": True, "box_iou": 0.3})
    assert on["prn"]["All"] == pytest.approx(gated["prn"]["All"], abs=1e-12)
    bad = run_prn("evaluate", "--store", store, "--checkpoint", ckpt, "--box-iou", "1.5", check=False)
    assert bad.returncode == 2 and "--box-iou" in bad.stderr


def test_the_ablation_command_writes_the_table(store, tmp_path):
    """`benchmarks/ablations.py` on a tiny ablation file: one run per distinct network (the box-gate variant
    reuses the first), every variant evaluated, the table and JSON written."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from prn_model.config import save_config

    root = Path(__file__).resolve().parent.parent
    save_config(tiny_config(store, tmp_path / "unused", **{"data.num_workers": 0}), tmp_path / "tiny.yaml")
    (tmp_path / "abl.yaml").write_text(yaml.safe_dump({"train": "tiny.yaml", "variants": [
        {"name": "full"}, {"name": "no gate", "postprocess": {"box_gate": False}},
        {"name": "no box offsets", "model": {"box_offsets": False}}]}))
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(root / "benchmarks" / "ablations.py"), "--iters", "1", "--config",
                        str(tmp_path / "abl.yaml"), "--train-store", store, "--test-store", store, "--out", str(out),
                        "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    res = json.loads((out / "ablations.json").read_text())
    assert [r["name"] for r in res["rows"]] == ["full", "no gate", "no box offsets"]
    assert len(res["runs"]) == 2 and res["rows"][0]["run"] == res["rows"][1]["run"]
    table = (out / "ablations.md").read_text()
    full = res["rows"][0]["prn"]["pq"]
    assert f"| full | {full:.2f} |" in table and "| base network" in table and "--iters 1" in table
    bad = subprocess.run([sys.executable, str(root / "benchmarks" / "ablations.py"), "--iters", "1", "--config",
                          str(tmp_path / "abl.yaml"), "--train-store", store], capture_output=True, text=True)
    assert bad.returncode == 2 and "give both --train-store and --test-store" in bad.stderr
