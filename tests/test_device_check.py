"""benchmarks/device_check.sh, the one-run GPU measurement script, dry-run on the CPU with small sizes, so it
still works the day a GPU machine is lent (its steps are the benchmarks' own scripts and `prn demo`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_check_dry_run_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, DEVICE="cpu", QUICK="1", OUT=str(out), PYTHON=sys.executable, DEMO_DIR=str(tmp_path / "demo"))
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh")], capture_output=True, text=True,
                       timeout=600, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    steps = [line for line in p.stdout.splitlines() if line.startswith("== ")]
    assert [s.split(":")[0] for s in steps] == ["== postprocess", "== loader", "== model", "== demo", "== predict"]
    for name in ("postprocess", "loader", "model", "demo", "predict"):
        log = (out / f"{name}.log").read_text()
        assert "rc=0 after" in log, log[-2000:]
    assert "ppgbf+merge (bilinear semantic)" in (out / "postprocess.log").read_text()
    assert "default (1) / one thread" in (out / "postprocess.log").read_text()
    assert "DataLoader workers" in (out / "loader.log").read_text()
    assert "reader thread" in (out / "predict.log").read_text()
    res = json.loads((out / "demo_results.json").read_text())
    assert {"base", "prn", "diff"} <= set(res) and res["images"] == 8
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back
