"""Configs and options: training configs are checked against their fields' types
(prn_model.config.validate_config), every wrong value one line naming the file and the key, printed by
`prn train` without a traceback; `--set KEY=VALUE` overrides and `_base_` inheritance
(prn_model.config_loading) go through the same check; `--device` and `prn show --out` give one-line errors
or just work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from prn_data.errors import PrnError
from prn_data.testing import build_tiny_store, run_prn
from prn_model.cli import app
from prn_model.config import (ConfigError, GridMaskConfig, TrainConfig, apply_sets, load_config, override,
                              save_config, validate_config)
from prn_model.config_loading import read_config_tree
from prn_model.devices import DeviceError, resolve_device

from helpers import TINY_MODEL

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
    from prn_data.show import figure_size_px
    from prn_data.store import open_store

    store = build_tiny_store(tmp_path / "s.zarr", n=1, short=32, max_long=64)
    out = tmp_path / "pictures" / "new" / "sample.png"
    show(store, 0, None, out, 20)
    with Image.open(out) as im:
        # 12 in wide at 20 dpi, as high as the sample's aspect makes the panels (prn_data.show.figure_size_px)
        size = tuple(open_store(store).read_sample(0, arrays=["size"])["size"])
        assert im.format == "PNG" and im.size == figure_size_px(size, 20) and im.size[0] == 12 * 20
    with pytest.raises(PrnError, match=r"pictures: is a folder; give the PNG's file name"):
        show(store, 0, None, tmp_path / "pictures", 20)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PrnError, match=r"file/sample.png: cannot make its folder"):
        show(store, 0, None, tmp_path / "file" / "sample.png", 20)


# ------------------------------------------------------------------ --set overrides and _base_ inheritance

def test_set_values_are_read_as_yaml():
    cfg = apply_sets(TrainConfig(), ["optim.lr=0.01", "model.depth=50", "optim.betas=[0.8, 0.9]",
                                     "augment.crop=[64,96]", "data.val_store=null", "channels_last=false",
                                     "optim.min_lr=1e-5", "data.store=cache/x.zarr", "augment.gridmask.prob=0.25"])
    assert (cfg.optim.lr, cfg.model, cfg.optim.betas, cfg.augment.crop) == (0.01, {"depth": 50}, (0.8, 0.9), (64, 96))
    assert cfg.data.val_store is None and cfg.channels_last is False and cfg.optim.min_lr == 1e-5
    assert cfg.data.store == "cache/x.zarr" and cfg.augment.gridmask.prob == 0.25
    # a key under a section that is null makes the section (with its defaults but that key)
    no_grid = apply_sets(TrainConfig(), ["augment.gridmask=null"])
    assert no_grid.augment.gridmask is None
    again = apply_sets(no_grid, ["augment.gridmask.d_max=40"]).augment.gridmask
    assert again == GridMaskConfig(d_max=40)


@pytest.mark.parametrize("sets, message", [
    (["optim.lrr=0.1"], "--set: unknown key optim.lrr (did you mean optim.lr, optim.min_lr, optim?)"),
    (["lr=0.1"], "--set: unknown key lr (did you mean optim.lr?)"),
    (["model.dpeth=50"], "--set: unknown key model.dpeth (did you mean model.depth, model.widths, model.c_de?)"),
    (["zzz=1"], "--set: unknown key zzz (see `prn train --help`)"),
    (["optim.lr"], "--set: 'optim.lr': expected KEY=VALUE (a dotted key, e.g. optim.lr=0.01)"),
    (["optim..lr=1"], "--set: 'optim..lr=1': expected KEY=VALUE (a dotted key, e.g. optim.lr=0.01)"),
    (["iters=1", "iters=2"], "--set: iters given twice (1 and 2)"),
    (["model.depth=fifty"], "--set: model.depth: expected an integer, got 'fifty'"),
    (["optim.lr=fast"], "--set: optim.lr: expected a finite number, got 'fast'"),
    (["iters=1.5"], "--set: iters: expected an integer, got 1.5"),
    (["augment.crop=[64]"], "--set: augment.crop: expected a list of 2 integers or null, got [64]"),
    (["compile=yes please"], "--set: compile: expected true or false, got 'yes please'"),
    (["optim={lr: x}"], "--set: optim.lr: expected a finite number, got 'x'"),
    (["data.batch_size=0"], "--set: data.batch_size must be ≥ 1"),
])
def test_set_errors_name_the_key(sets, message):
    with pytest.raises(ConfigError) as info:
        apply_sets(TrainConfig(), sets)
    assert str(info.value) == message


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_files_merge_deeply_over_several_levels(tmp_path):
    _write(tmp_path / "root.yaml", "optim: {lr: 0.001, weight_decay: 0.0001, betas: [0.9, 0.999]}\n"
                                   "model: {depth: 50, widths: [64, 128, 256, 512]}\niters: 100\nseed: 3\n"
                                   "augment: {gridmask: {prob: 0.5, d_max: 224}}\n")
    _write(tmp_path / "sub" / "mid.yaml", "_base_: ../root.yaml\noptim: {lr: 0.002}\nmodel: {widths: [8, 16, 32, 64]}\n")
    leaf = _write(tmp_path / "sub" / "deeper" / "leaf.yaml",
                  "_base_: ../mid.yaml  # relative to this file\niters: 7\naugment: {gridmask: null}\n")
    cfg = load_config(leaf)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas) == (0.002, 0.0001, (0.9, 0.999))
    assert cfg.model == {"depth": 50, "widths": [8, 16, 32, 64]}  # the list replaced, not merged
    assert (cfg.iters, cfg.seed, cfg.augment.gridmask) == (7, 3, None)
    assert read_config_tree(leaf) == {"optim": {"lr": 0.002, "weight_decay": 0.0001, "betas": [0.9, 0.999]},
                                      "model": {"depth": 50, "widths": [8, 16, 32, 64]}, "iters": 7, "seed": 3,
                                      "augment": {"gridmask": None}}
    # several bases: later ones win, the file itself last; then --set on top
    two = _write(tmp_path / "two.yaml", "_base_: [root.yaml, sub/mid.yaml]\nseed: 9\n")
    cfg = load_config(two, ["seed=11", "optim.weight_decay=0"])
    assert (cfg.optim.lr, cfg.seed, cfg.optim.weight_decay) == (0.002, 11, 0.0)


def test_base_cycles_and_bad_bases_are_refused(tmp_path):
    a = _write(tmp_path / "a.yaml", "_base_: b.yaml\niters: 1\n")
    b = _write(tmp_path / "b.yaml", "_base_: c/../a.yaml\n")
    (tmp_path / "c").mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(a)
    assert str(info.value) == f"{tmp_path / 'c/../a.yaml'}: _base_ cycle: {a} → {b} → {a}"
    me = _write(tmp_path / "me.yaml", "_base_: me.yaml\n")
    with pytest.raises(ConfigError, match=r"me.yaml: _base_ cycle: .*me.yaml → .*me.yaml$"):
        load_config(me)
    p = _write(tmp_path / "p.yaml", "_base_: missing.yaml\n")
    with pytest.raises(ConfigError, match=rf"^{p}: _base_: no such file {tmp_path / 'missing.yaml'}$"):
        load_config(p)
    p.write_text("_base_: 3\n")
    with pytest.raises(ConfigError, match=r"p.yaml: _base_: expected a file name or a list of file names, got 3$"):
        load_config(p)
    # an inherited wrong value is named with the file that holds it
    bad = _write(tmp_path / "bad.yaml", "optim: {lr: fast}\n")
    child = _write(tmp_path / "child.yaml", "_base_: bad.yaml\niters: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(child)
    assert str(info.value) == f"{bad}: optim.lr: expected a finite number, got 'fast'"
    _write(tmp_path / "list.yaml", "- 1\n")
    child.write_text("_base_: list.yaml\n")
    with pytest.raises(ConfigError, match=r"list.yaml: top level: expected a mapping, got \[1\]"):
        load_config(child)


# workflows/cityscapes.yaml as it was before it inherited from coco.yaml (every key stated)
CITYSCAPES = {
    "model": {"depth": 50, "widths": [64, 128, 256, 512], "n_en": 64, "c_de": 256, "skip_channels": 128,
              "semantic_head_channels": 128, "head_channels": 32, "coordconv": "both", "foreground": "branch",
              "box_offsets": True, "norm": "batch"},
    "loss": {"semantic": 1.0, "center": 200.0, "center_offset": 0.02, "box_offset": 0.02, "foreground": 5.0},
    "optim": {"name": "adam", "lr": 0.001, "weight_decay": 0.0001, "betas": [0.9, 0.999], "schedule": "cosine",
              "warmup_iters": 0, "min_lr": 0.0, "clip_grad_norm": 0.0},
    "data": {"store": None, "val_store": None, "batch_size": 32, "num_workers": 4, "mp_context": "forkserver",
             "prefetch_factor": 2, "decode": "auto"},
    "augment": {"flip": True, "flip_prob": 0.5, "gridmask": {"prob": 0.5, "d_min": 32, "d_max": 224, "ratio": 0.5,
                                                              "fill": 0}, "crop": None},
    "iters": 60000, "seed": 0, "device": "auto", "amp": "bf16", "channels_last": True, "compile": False, "out": None,
    "log_every": 20, "checkpoint_every": 5000, "keep_checkpoints": 3, "val_every": 5000, "val_limit": 0,
    "deterministic": False,
}


def test_cityscapes_inherits_coco_and_resolves_as_before():
    path = REPO / "workflows" / "cityscapes.yaml"
    own = yaml.safe_load(path.read_text())
    assert own["_base_"] == "coco.yaml" and len(own) <= 5  # only what differs is stated
    merged = read_config_tree(path)
    # every key it stated resolves to the same value; keys added to coco.yaml since are inherited as stated there
    assert {k: v for k, v in _flat(merged).items() if k in _flat(CITYSCAPES)} == _flat(CITYSCAPES)
    coco = _flat(read_config_tree(REPO / "workflows" / "coco.yaml"))
    assert all(coco[k] == v for k, v in _flat(merged).items() if k not in _flat(CITYSCAPES))
    assert load_config(path) == validate_config(merged)
    assert load_config(path).to_dict() == load_config(path.with_name("coco.yaml"), [
        "data.batch_size=32", "iters=60000", "val_every=5000", "val_limit=0"]).to_dict()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v}
    return out


def test_prn_train_with_set_base_and_resume(tmp_path):
    store = build_tiny_store(tmp_path / "s.zarr", n=2, short=32, max_long=64)
    _write(tmp_path / "base.yaml", yaml.safe_dump({"model": TINY_MODEL, "data": {"batch_size": 2, "num_workers": 0},
                                                   "iters": 50, "device": "cpu", "optim": {"lr": 0.5}}))
    child = _write(tmp_path / "configs" / "child.yaml", "_base_: ../base.yaml\ncheckpoint_every: 1\n")
    run = tmp_path / "run"
    args = ["train", str(child), "--store", store, "--out", str(run)]
    res = CliRunner().invoke(app, args + ["--set", "optim.lr=0.002", "iters=1", "model.head_channels=4"])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert "_base_" not in saved
    assert (saved["optim"]["lr"], saved["iters"], saved["checkpoint_every"], saved["model"]["head_channels"],
            saved["model"]["depth"]) == (0.002, 1, 1, 4, 18)
    expected = load_config(child, ["optim.lr=0.002", "iters=1", "model.head_channels=4", f"data.store={store}",
                                   f"out={run}"])
    assert load_config(run / "config.yaml") == expected
    # --resume compares the resolved config: a changed step-deciding key is refused, by its name
    res = CliRunner().invoke(app, args + ["--resume", "--set", "optim.lr=0.003", "iters=1", "model.head_channels=4"])
    assert res.exit_code != 0
    assert "optim.lr (--lr): recorded 0.002, now 0.003" in str(res.exception)
    # the run's own settings (from --set again), with a runtime one changed, resume (nothing left to do)
    res = CliRunner().invoke(app, args + ["--resume", "iters=1", "--set", "optim.lr=0.002", "model.head_channels=4",
                                          "log_every=5"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((run / "config.yaml").read_text())["log_every"] == 5


def test_prn_train_set_errors_are_one_line(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "iters: 1\n")
    proc = run_prn("train", cfg, "--out", tmp_path / "run", "--set", "optim.lrr=1", check=False)
    assert proc.returncode == 2
    assert (proc.stdout + proc.stderr).strip() == \
        "error: --set: unknown key optim.lrr (did you mean optim.lr, optim.min_lr, optim?)"
    assert not (tmp_path / "run").exists()
