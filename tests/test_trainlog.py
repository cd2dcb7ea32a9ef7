"""Watching training (prn_model.trainlog, prn_model.plot): `prn train` with its output sent to a file prints
one plain line per logged step and validation and writes the same lines to log.txt; TensorBoard gets every
figure (or a missing package is one line); `prn plot` draws metrics.jsonl / val.jsonl of one or several runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from prn_data.testing import PRN, build_tiny_store, run_prn
from prn_model.plot import PlotError, draw_curves, panel_keys, plot_runs, read_run, run_names
from prn_model.train import train
from prn_model.trainlog import TensorBoardMissing, format_metrics, format_validation

from helpers import TINY_MODEL, tiny_config

TERMS = ("semantic", "center", "center_offset", "box_offset", "foreground")
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  ")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return build_tiny_store(tmp_path_factory.mktemp("trainlog") / "s.zarr", n=4, short=32, max_long=64)


@pytest.fixture(scope="module")
def cli_run(store, tmp_path_factory) -> tuple[Path, str]:
    """`prn train` as a cluster job runs it: stdout and stderr to files. 4 steps, a line every 2, validation
    every 2 steps on the training store. Returns the run folder and what stdout received."""
    root = tmp_path_factory.mktemp("cli-run")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"model": TINY_MODEL, "data": {"batch_size": 2, "num_workers": 0},
                                   "iters": 4, "log_every": 2, "val_every": 2, "checkpoint_every": 100,
                                   "device": "cpu"}))
    run = root / "run"
    with (root / "stdout.txt").open("w") as out, (root / "stderr.txt").open("w") as err:
        proc = subprocess.run(PRN + ["train", str(cfg), "--store", store, "--val-store", store, "--out", str(run)],
                              stdout=out, stderr=err, timeout=300)
    assert proc.returncode == 0, (root / "stderr.txt").read_text()
    return run, (root / "stdout.txt").read_text()


def test_output_to_a_file_gets_plain_lines_and_log_txt(cli_run):
    run, stdout = cli_run
    lines = [STAMP.sub("", line) for line in stdout.splitlines()]
    assert lines == [STAMP.sub("", line) for line in (run / "log.txt").read_text().splitlines()]
    assert all(STAMP.match(line) for line in stdout.splitlines())
    metrics, val = _jsonl(run / "metrics.jsonl"), _jsonl(run / "val.jsonl")
    assert [m["step"] for m in metrics] == [2, 4] and [v["step"] for v in val] == [2, 4]
    # started, then per logged step its metrics line and its validation line
    assert lines[0] == "started: 4 steps"
    assert lines[1:] == [format_metrics(metrics[0], 4), format_validation(val[0], 4),
                         format_metrics(metrics[1], 4), format_validation(val[1], 4)]
    line = lines[3]
    assert line.startswith("step 4/4  loss ")
    assert f"loss {metrics[1]['loss']:.4g}" in line and f"lr {metrics[1]['lr']:.3g}" in line
    assert all(f"  {t} {metrics[1][t]:.4g}" in line for t in TERMS)
    assert re.search(r"  \d+\.\d samples/s  wait \d+%$", line)
    assert lines[4].startswith("step 4/4  validation  pq ") and f"pq {val[1]['pq']:.2f}" in lines[4]


def test_format_of_the_lines_by_hand():
    record = {"step": 20, "loss": 1.23456, "semantic": 0.5, "center": 0.001234, "lr": 0.001,
              "samples_per_s": 12.345, "data_wait": 0.034}
    assert format_metrics(record, 1000) == ("step 20/1000  loss 1.235  semantic 0.5  center 0.001234  lr 0.001  "
                                            "12.3 samples/s  wait 3%")
    assert format_validation({"step": 20, "pq": 45.678, "sq": 80.0}, 1000) == \
        "step 20/1000  validation  pq 45.68  sq 80.00"


def test_prn_plot_of_the_run_and_of_two_runs(cli_run, tmp_path):
    run, _ = cli_run
    curves = read_run(run)
    metrics, val = _jsonl(run / "metrics.jsonl"), _jsonl(run / "val.jsonl")
    for key in ("loss", *TERMS, "lr", "samples_per_s"):
        assert curves.series[key] == ([2, 4], [m[key] for m in metrics])
    assert curves.series["val/pq"] == ([2, 4], [v["pq"] for v in val])
    assert "data_wait" not in curves.series

    one = tmp_path / "one.png"
    run_prn("plot", run, "--out", one, "--dpi", "40")
    with Image.open(one) as im:  # 9 panels: loss, 5 terms, lr, samples/s, PQ in 3 columns of 4.2 x 3.0 in
        assert im.format == "PNG" and im.size == (round(3 * 4.2 * 40), 3 * 3 * 40)

    other = tmp_path / "b" / "run"  # a second run of two logged steps, no validation, other values
    other.mkdir(parents=True)
    (other / "metrics.jsonl").write_text("".join(
        json.dumps({**m, "loss": m["loss"] / 2, "step": m["step"] * 3}) + "\n" for m in metrics))
    two = tmp_path / "pictures" / "two.png"
    proc = run_prn("plot", run, other, "--out", two, "--dpi", "40")
    assert f"wrote {two} (2 runs)" in proc.stdout + proc.stderr
    with Image.open(two) as im:
        im.load()
        assert im.size == (round(3 * 4.2 * 40), 3 * 3 * 40)


def _fake_run(folder: Path, metrics: list[dict], val: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if val is not None:
        (folder / "val.jsonl").write_text("\n".join(json.dumps(v) for v in val) + "\n\n")
    return folder


def test_curves_and_panels_by_hand(tmp_path):
    a = _fake_run(tmp_path / "x" / "run", [
        {"step": 10, "loss": 4.0, "semantic": 2.0, "center": 0.01, "lr": 1e-3, "samples_per_s": 8.0, "data_wait": 0.1},
        {"step": 20, "loss": 3.0, "semantic": 1.5, "center": 0.005, "lr": 5e-4, "samples_per_s": 9.0, "data_wait": 0.0},
    ], val=[{"step": 20, "pq": 41.5, "sq": 70.0}])
    b = _fake_run(tmp_path / "y" / "run", [{"step": 10, "loss": 5.0, "semantic": 2.5, "center": 0.02, "lr": 2e-3,
                                            "samples_per_s": 4.0, "data_wait": 0.2}])
    assert run_names([a, b]) == ["x/run", "y/run"]
    assert run_names([a, tmp_path / "y"]) == ["run", "y"]
    ca, cb = read_run(a, "x/run"), read_run(b, "y/run")
    assert ca.series == {"loss": ([10, 20], [4.0, 3.0]), "semantic": ([10, 20], [2.0, 1.5]),
                         "center": ([10, 20], [0.01, 0.005]), "lr": ([10, 20], [1e-3, 5e-4]),
                         "samples_per_s": ([10, 20], [8.0, 9.0]), "val/pq": ([20], [41.5]), "val/sq": ([20], [70.0])}
    assert panel_keys([cb, ca]) == ["loss", "semantic", "center", "lr", "samples_per_s", "val/pq"]
    fig = draw_curves([ca, cb], dpi=30)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["loss (eq. 1)", "semantic", "center", "learning rate", "samples/s",
                                               "validation PQ"]
    loss_lines = {line.get_label(): line.get_xydata().tolist() for line in axes[0].lines}
    assert loss_lines == {"x/run": [[10, 4.0], [20, 3.0]], "y/run": [[10, 5.0]]}
    assert [line.get_label() for line in axes[5].lines] == ["x/run"]  # only x has a validation
    assert axes[5].lines[0].get_xydata().tolist() == [[20, 41.5]]
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["x/run", "y/run"]
    out = plot_runs([a, b], tmp_path / "ab.png", dpi=30)
    with Image.open(out) as im:
        assert im.size == (round(3 * 4.2 * 30), 2 * 3 * 30)


def test_plot_errors_are_one_line(tmp_path):
    with pytest.raises(PlotError, match="nowhere: no such run folder"):
        read_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlotError, match="empty: no metrics.jsonl"):
        read_run(tmp_path / "empty")
    bad = _fake_run(tmp_path / "bad", [{"step": 1, "loss": 1.0}])
    with (bad / "metrics.jsonl").open("a") as f:
        f.write("{not json\n")
    with pytest.raises(PlotError, match=r"metrics.jsonl:2: not a JSON line"):
        read_run(bad)
    proc = run_prn("plot", tmp_path / "empty", "--out", tmp_path / "x.png", check=False)
    assert proc.returncode == 2
    assert (proc.stdout + proc.stderr).strip() == f"error: {tmp_path / 'empty'}: no metrics.jsonl (not a prn run " \
                                                  "folder, or no step logged yet)"
    assert not (tmp_path / "x.png").exists()


def test_tensorboard_missing_is_one_error_before_anything_is_written(store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were absent
    with pytest.raises(TensorBoardMissing, match=r"needs the tensorboard package: pip install 'prn\[tensorboard\]'"):
        train(tiny_config(store, tmp_path / "run", tensorboard=True), show_progress=False)
    assert not (tmp_path / "run").exists()


def test_tensorboard_gets_every_figure(store, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(tiny_config(store, run, iters=2, tensorboard=True), show_progress=False)
    metrics = _jsonl(run / "metrics.jsonl")
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for key in ("loss", *TERMS, "lr", "samples_per_s", "data_wait"):
        got = [(e.step, e.value) for e in events.Scalars(f"train/{key}")]
        assert [s for s, _ in got] == [1, 2]
        assert [v for _, v in got] == pytest.approx([m[key] for m in metrics], rel=1e-6)  # stored as float32
    log = (run / "log.txt").read_text().splitlines()
    assert len(log) == 3 and log[2].endswith(format_metrics(metrics[1], 2))
