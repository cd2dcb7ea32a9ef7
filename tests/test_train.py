"""The trainer (prn_model.train), its config (prn_model.config) and `prn train`: loss goes down, resume is
exact, 2-process DDP on gloo, a store served over HTTP, checkpoints, the workflows' paper settings."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from prn_data.testing import build_tiny_store
from prn_model.cli import app
from prn_model.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from prn_model.config import ConfigError, config_from_dict, load_config, override
from prn_model.evaluate import validation
from prn_model.optim import lr_factor
from prn_model.train import TrainingError, train

from helpers import tiny_config
from http_serving import free_port, serve

REPO = Path(__file__).resolve().parents[1]
TERMS = ("semantic", "center", "center_offset", "box_offset", "foreground")


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return build_tiny_store(tmp_path_factory.mktemp("train") / "train.zarr", n=4, short=32, max_long=64)


@pytest.fixture(scope="module")
def pair_store(tmp_path_factory) -> str:
    return build_tiny_store(tmp_path_factory.mktemp("pair") / "pair.zarr", n=2, split="pair", short=32, max_long=64)


@pytest.mark.slow
def test_short_run_lowers_every_loss_term(pair_store, tmp_path):
    # Both samples in every batch, no augmentation, constant lr: full-batch descent on a fixed problem.
    cfg = tiny_config(pair_store, tmp_path / "run", **{
        "iters": 12, "augment.flip": False, "augment.gridmask": None,
        "optim.schedule": "constant", "optim.lr": 3e-3,
    })
    train(cfg, show_progress=False)
    m = _metrics(tmp_path / "run")
    assert [r["step"] for r in m] == list(range(1, 13))
    first, last = m[0], m[-1]
    for term in TERMS:
        assert last[term] < first[term], (term, first[term], last[term])
    assert last["loss"] < 0.8 * first["loss"]
    # the logged total is eq. (1) of the logged terms with the paper's λ
    lam = {"semantic": 1, "center": 200, "center_offset": 0.02, "box_offset": 0.02, "foreground": 5}
    assert last["loss"] == pytest.approx(sum(lam[t] * last[t] for t in TERMS), rel=1e-5)
    for r in m:
        assert r["lr"] == 3e-3 and r["samples_per_s"] > 0 and 0 <= r["data_wait"] <= 1


def test_resume_gives_the_same_losses(store, tmp_path):
    a = tmp_path / "a"
    cfg = tiny_config(store, a, **{"iters": 5, "checkpoint_every": 2, "data.batch_size": 1})
    train(cfg, show_progress=False)
    ref = _metrics(a)
    assert sorted(p.name for p in (a / "checkpoints").iterdir()) == [
        "step_0000002.pt", "step_0000004.pt", "step_0000005.pt"]

    # The run "died" during step 4: its folder has the step-2 checkpoint and metrics up to step 3.
    b = tmp_path / "b"
    (b / "checkpoints").mkdir(parents=True)
    shutil.copy(a / "checkpoints" / "step_0000002.pt", b / "checkpoints")
    (b / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ref[:3]))
    torch.manual_seed(1234)  # the resumed process starts from other RNG states
    train(override(cfg, out=str(b)), resume=True, show_progress=False)
    got = _metrics(b)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5]
    for r_ref, r_got in zip(ref[2:], got[2:]):
        for key in ("loss", "lr") + TERMS:
            assert r_got[key] == r_ref[key], (r_ref["step"], key)
    wa = read_checkpoint(a / "model.pt")["model"]
    wb = read_checkpoint(b / "model.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoint_round_trip_and_errors(store, tmp_path):
    cfg = tiny_config(store, tmp_path / "run", iters=1, **{"data.val_store": store})
    assert validation(tiny_config(store, tmp_path / "unused")) is None  # no val store: nothing to validate
    summary = train(cfg, validate=validation(cfg), show_progress=False)
    val = [json.loads(line) for line in (tmp_path / "run" / "val.jsonl").read_text().splitlines()]
    assert len(val) == 1 and val[0]["step"] == 1 and 0 <= val[0]["pq"] <= 100
    model, cfg2 = load_checkpoint(tmp_path / "run" / "model.pt", "cpu")
    assert cfg2 == cfg
    assert not model.training
    ref = summary["model"].state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    ck = read_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000001.pt")
    assert ck["step"] == 1 and ck["sampler"]["start"] == 2
    assert set(ck["rng"]) >= {"torch", "numpy", "python"}
    bad = tmp_path / "bad.pt"
    torch.save({"something": 1}, bad)
    with pytest.raises(CheckpointError, match="bad.pt: not a prn checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="missing.pt: no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    # a finished run is not silently overwritten
    with pytest.raises(TrainingError, match="already holds a run"):
        train(cfg, show_progress=False)


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    summary = train(config_from_dict(cfg_dict), show_progress=False)
    torch.save(summary["model"].state_dict(), Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_process_gloo_run(store, tmp_path):
    run = tmp_path / "ddp"
    cfg = tiny_config(store, run, iters=3, checkpoint_every=3)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, free_port(), cfg.to_dict(), str(tmp_path)), nprocs=2)
    m = _metrics(run)  # rank 0 alone writes
    assert [r["step"] for r in m] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in m)
    assert (run / "checkpoints" / "step_0000003.pt").is_file()
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # DDP kept the replicas identical
    saved = read_checkpoint(run / "model.pt")["model"]
    assert all(torch.equal(saved[k], w0[k]) for k in w0)




def test_trains_from_a_store_served_over_http(store, tmp_path):
    # Served like `python -m http.server` (byte ranges ignored): the store reads whole objects then.
    with serve(Path(store).parent, ranges=False) as root:
        cfg = tiny_config(f"{root}/{Path(store).name}", tmp_path / "http", iters=2, checkpoint_every=1,
                          keep_checkpoints=1, **{"data.decode": "device"})
        summary = train(cfg, show_progress=False)
    assert summary["step"] == 2
    assert [r["step"] for r in _metrics(tmp_path / "http")] == [1, 2]
    assert [p.name for p in (tmp_path / "http" / "checkpoints").iterdir()] == ["step_0000002.pt"]


def test_cli_train_overrides_the_config(store, tmp_path):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(json.dumps(tiny_config("nowhere.zarr", tmp_path / "unused", iters=50).to_dict()))
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["train", str(cfg_path), "--store", store, "--out", str(out), "--iters", "1",
                                   "--device", "cpu", "--batch-size", "1"])
    assert res.exit_code == 0, res.output
    resolved = load_config(out / "config.yaml")
    assert (resolved.iters, resolved.data.store, resolved.data.batch_size) == (1, store, 1)
    assert [r["step"] for r in _metrics(out)] == [1]


def test_workflows_carry_the_paper_settings():
    for name, iters, batch in (("coco", 150_000, 16), ("cityscapes", 60_000, 32)):
        cfg = load_config(REPO / "workflows" / f"{name}.yaml")
        assert (cfg.iters, cfg.data.batch_size) == (iters, batch)
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.schedule) == ("adam", 1e-3, 1e-4, "cosine")
        assert cfg.optim.betas[0] == 0.9
        assert cfg.loss == {"semantic": 1.0, "center": 200.0, "center_offset": 0.02, "box_offset": 0.02,
                            "foreground": 5.0}
        assert cfg.model["depth"] == 50
        assert cfg.augment.flip and cfg.augment.gridmask is not None
    demo = load_config(REPO / "workflows" / "demo.yaml")
    assert demo.model["depth"] == 18 and demo.data.batch_size <= 8


def test_config_errors_name_the_file_and_key(tmp_path):
    p = tmp_path / "typo.yaml"
    p.write_text("optim:\n  lr: 0.1\n  wieght_decay: 0.5\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key\(s\) optim.wieght_decay"):
        load_config(p)
    p.write_text("data: {batch_size: 0}\n")
    with pytest.raises(ConfigError, match="typo.yaml: data.batch_size must be ≥ 1"):
        load_config(p)
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_cosine_schedule_by_hand():
    cfg = config_from_dict({"iters": 100, "optim": {"lr": 1e-3, "min_lr": 1e-4}})
    assert lr_factor(0, cfg) == 1.0
    assert lr_factor(50, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # cos(π/2) = 0
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    warm = config_from_dict({"iters": 100, "optim": {"warmup_iters": 10}})
    assert lr_factor(0, warm) == pytest.approx(0.1) and lr_factor(9, warm) == pytest.approx(1.0)
    assert lr_factor(10, warm) == 1.0 and lr_factor(55, warm) == pytest.approx(0.5)
