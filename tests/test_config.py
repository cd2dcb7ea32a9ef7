"""Configs and options: training configs are checked against their fields' types
(prn_model.config.validate_config), every wrong value one line naming the file and the key, printed by
`prn train` without a traceback; `--device` and `prn show --out` give one-line errors or just work."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from prn_data.errors import PrnError
from prn_data.testing import build_tiny_store, run_prn
from prn_model.config import ConfigError, TrainConfig, load_config, override, save_config, validate_config
from prn_model.devices import DeviceError, resolve_device

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("yaml_text, line", [
    ("iters: abc", "iters: expected an integer, got 'abc'"),
    ("iters: 2.7", "iters: expected an integer, got 2.7"),
    ("optim: {lr: fast}", "optim.lr: expected a finite number, got 'fast'"),
    ("data: {batch_size: '4'}", "data.batch_size: expected an integer, got '4'"),
    ("optim: {lr: .nan}", "optim.lr: expected a finite number, got nan"),
    ("optim: {lr: .inf}", "optim.lr: expected a finite number, got inf"),
    ("optim: {betas: 0.9}", "optim.betas: expected a list of 2 finite numbers, got 0.9"),
    ("optim: {betas: [0.9, 0.99, 0.5]}", "optim.betas: expected a list of 2 finite numbers, got [0.9, 0.99, 0.5]"),
    ("loss: {centre: 200}", "unknown key(s) loss.centre (did you mean loss.center?)"),
    ("loss: {center: high}", "loss.center: expected a finite number, got 'high'"),
    ("channels_last: 'no'", "channels_last: expected true or false, got 'no'"),
    ("compile: 1", "compile: expected true or false, got 1"),
    ("augment: {crop: [64, x]}", "augment.crop: expected a list of 2 integers or null, got [64, 'x']"),
    ("augment: {gridmask: {prob: often}}", "augment.gridmask.prob: expected a finite number, got 'often'"),
    ("model: {depth: '50'}", "model.depth: expected an integer, got '50'"),
    ("model: {widths: [8, 16, 32]}", "model.widths: expected a list of 4 integers, got [8, 16, 32]"),
    ("data: {store: 3}", "data.store: expected a string or null, got 3"),
    ("lr: 0.1", "unknown key(s) lr (did you mean optim.lr?)"),
    ("optim: 0.1", "optim: expected a mapping, got 0.1"),
    ("- 1", "top level: expected a mapping, got [1]"),
    ("device: bogus", "device must be auto, cpu, cuda or cuda:N, not 'bogus'"),
])
def test_each_wrong_value_is_named_with_its_key(tmp_path, yaml_text, line):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml_text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(info.value) == f"{p}: {line}"


def test_one_line_per_wrong_key():
    with pytest.raises(ConfigError) as info:
        validate_config({"iters": "abc", "optim": {"lr": "fast", "betas": 0.9}, "channels_last": "no"}, "c.yaml")
    assert str(info.value).splitlines() == [
        "c.yaml: iters: expected an integer, got 'abc'",
        "c.yaml: optim.lr: expected a finite number, got 'fast'",
        "c.yaml: optim.betas: expected a list of 2 finite numbers, got 0.9",
        "c.yaml: channels_last: expected true or false, got 'no'",
    ]


def test_valid_values_and_yaml_exponents(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("optim: {lr: 1e-3, min_lr: 2E-5, weight_decay: 1, betas: [0.9, 0.99]}\n"
                 "augment: {crop: [64, 96], gridmask: null}\nchannels_last: false\n"
                 "model: {widths: [8, 16, 32, 64], depth: 18}\nloss: {center: 100}\n")
    cfg = load_config(p)
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.weight_decay) == (0.001, 2e-5, 1.0)
    assert cfg.optim.betas == (0.9, 0.99) and cfg.augment.crop == (64, 96) and cfg.augment.gridmask is None
    assert cfg.channels_last is False
    assert cfg.model == {"widths": [8, 16, 32, 64], "depth": 18} and cfg.loss == {"center": 100.0}
    save_config(cfg, tmp_path / "again.yaml")  # what a run folder holds reads back the same
    assert load_config(tmp_path / "again.yaml") == cfg


def test_workflows_and_defaults_are_valid():
    for name in ("coco", "cityscapes", "demo"):
        assert isinstance(load_config(REPO / "workflows" / f"{name}.yaml"), TrainConfig)
    assert validate_config({}) == TrainConfig()
    assert validate_config(TrainConfig().to_dict()) == TrainConfig()


def test_overrides_are_checked_too():
    with pytest.raises(ConfigError, match=r"^<overrides>: optim.lr: expected a finite number, got nan$"):
        override(TrainConfig(), **{"optim.lr": float("nan")})


def test_prn_train_prints_one_line_per_wrong_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("iters: 2.7\ndata: {batch_size: '4'}\n")
    proc = run_prn("train", p, "--out", tmp_path / "run", check=False)
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert lines == [f"error: {p}: iters: expected an integer, got 2.7",
                     f"{p}: data.batch_size: expected an integer, got '4'"], lines
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("spec", ["bogus", "gpu", "cuda:x", "cuda:-1", "meta", "", "cuda:99"])
def test_unknown_or_absent_devices_are_named(spec):
    with pytest.raises(DeviceError, match=repr(spec)):
        resolve_device(spec)
    assert resolve_device("cpu").type == "cpu"


def test_prn_evaluate_with_a_bogus_device_is_one_line(tmp_path):
    proc = run_prn("evaluate", "--store", tmp_path / "none.zarr", "--device", "bogus", "--base-only", check=False)
    assert proc.returncode == 2
    assert (proc.stdout + proc.stderr).strip() == "error: unknown device 'bogus': expected auto, cpu, cuda or cuda:N"


def test_prn_show_out_makes_missing_folders(tmp_path):
    from prn_data.cli.inspect import show

    store = build_tiny_store(tmp_path / "s.zarr", n=1, short=32, max_long=64)
    out = tmp_path / "pictures" / "new" / "sample.png"
    show(store, 0, None, out, 20)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (12 * 20, 15 * 20)  # (w, h) of 12 x 15 in at 20 dpi
    with pytest.raises(PrnError, match=r"pictures: is a folder; give the PNG's file name"):
        show(store, 0, None, tmp_path / "pictures", 20)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PrnError, match=r"file/sample.png: cannot make its folder"):
        show(store, 0, None, tmp_path / "file" / "sample.png", 20)
