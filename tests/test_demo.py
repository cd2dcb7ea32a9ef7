"""A tiny end-to-end ``prn demo`` (README "Two commands"): few small scenes, a tiny model, two iterations; every artifact
must exist under --out, results.json must hold the test split's base, rule baseline, untrained PRN and PRN figures
with the gain's interval, and a re-run must reuse everything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

pytestmark = pytest.mark.slow  # a whole pipeline in a subprocess (~20-40 s on 2 shared cores)

REPO = Path(__file__).resolve().parents[1]
PRN = Path(sys.executable).parent / "prn"
N_TRAIN, N_VAL, N_TEST, ITERS = 4, 2, 3, 2
TINY_MODEL = {"depth": 18, "widths": [8, 16, 32, 64], "n_en": 8, "c_de": 16, "skip_channels": 8,
              "semantic_head_channels": 8, "head_channels": 8}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    # The shipped demo.yaml with a tiny model and no loader processes: the pipeline, not the learning, is tested.
    cfg = yaml.safe_load((REPO / "workflows" / "demo.yaml").read_text())
    cfg["model"].update(TINY_MODEL)
    cfg["data"]["num_workers"] = 0
    cfg["augment"]["gridmask"] = None
    tiny = tmp / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(cfg))
    out = tmp / "out"
    cmd = [str(PRN), "demo", "--out", str(out), "--train-images", str(N_TRAIN), "--val-images", str(N_VAL),
           "--test-images", str(N_TEST), "--min-size", "64x64", "--max-size", "64x96", "--iters", str(ITERS), "--batch-size", "2",
           "--coco-limit", "1", "--scheduler", "threads", "--workers", "1", "--device", "cpu", "--config", str(tiny)]
    r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r.stdout + r.stderr, tiny


def test_every_artifact_exists(demo_run):
    import torch

    from prn_data.show import figure_size_px
    from prn_data.store import open_store

    out, log, _ = demo_run
    for split, n in (("train", N_TRAIN), ("val", N_VAL), ("test", N_TEST)):
        ann = json.loads((out / "synthetic" / "annotations" / f"panoptic_{split}.json").read_text())
        assert len(ann["images"]) == n
        for img in ann["images"]:  # scenes drawn within the requested bounds
            assert img["height"] == 64 and 64 <= img["width"] <= 96
        store = open_store(out / f"{split}.zarr")
        assert len(store) == n and store.done.all() and store.has_base
        assert store.attrs["base"].startswith("simulated")
        assert store.attrs["resize_policy"]["short"] == 0  # stored at the scenes' own size
        assert tuple(store.canvas) == (64, 96)  # largest scene (64×≤96) rounded up to multiples of 32
    coco = open_store(out / "coco-val2017.zarr")
    assert len(coco) == 1 and coco.done.all()
    assert coco.attrs["resize_policy"]["short"] == 640  # the paper's policy for the real sample
    figures = sorted((out / "show").glob("coco-*.png"))
    assert len(figures) == 1 and figures[0].name == f"coco-{coco.read_sample(0)['image_id']}.png"
    with Image.open(figures[0]) as im:
        assert im.size == figure_size_px(coco.read_sample(0)["size"])

    ckpt = torch.load(out / "run" / "model.pt", map_location="cpu", weights_only=True)
    assert int(ckpt["step"]) == ITERS
    steps = [json.loads(line)["step"] for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == ITERS

    ev = json.loads((out / "evaluation" / "results.json").read_text())
    assert ev["images"] == N_TEST and set(ev) >= {"base", "rule", "untrained", "prn"}
    for name in ("base", "rule", "untrained", "prn"):
        assert len(list((out / "evaluation" / name / "panoptic").glob("*.png"))) == N_TEST
    # each stage says where its artifacts are
    for path in ("train.zarr", "val.zarr", "test.zarr", "coco-val2017.zarr", "show", "model.pt", "evaluation", "results.json"):
        assert path in log.replace("\n", ""), path


def test_results_json_has_base_and_prn_figures(demo_run):
    out, log, _ = demo_run
    res = json.loads((out / "results.json").read_text())
    ev = json.loads((out / "evaluation" / "results.json").read_text())
    assert res["split"] == "test"
    for name in ("base", "rule", "untrained", "prn"):
        assert set(res[name]) == {"pq", "sq", "rq", "pq_th", "pq_st"}
        # the summary is the evaluator's All / Things / Stuff averages, in percent
        assert res[name]["pq"] == pytest.approx(100 * ev[name]["All"]["pq"])
        assert res[name]["rq"] == pytest.approx(100 * ev[name]["All"]["rq"])
        assert res[name]["pq_th"] == pytest.approx(100 * ev[name]["Things"]["pq"])
        assert all(0.0 <= v <= 100.0 for v in res[name].values())
    for k in res["diff"]:
        assert res["diff"][k] == pytest.approx(res["prn"][k] - res["base"][k])
    # the simulated base is built from the ground truth with a few errors: far from 0, below 100
    assert 40.0 < res["base"]["pq"] < 100.0
    assert set(res["seconds"]) == {"data", "coco", "train", "evaluate", "total"}
    assert res["images"] == N_TEST and res["train"] == {"iters": ITERS, "batch_size": 2}
    # the interval brackets the gain, in PQ points, from the evaluator's per-image counts
    low, high = res["gain_ci95"]
    assert low <= res["diff"]["pq"] + 1e-9 and res["diff"]["pq"] <= high + 1e-9
    assert res["gains"]["prn"]["gain"] == pytest.approx(res["diff"]["pq"])
    assert res["gains"]["rule"]["gain"] == pytest.approx(res["rule"]["pq"] - res["base"]["pq"])
    # the table printed on the console is the one stored
    assert "base" in res["table"] and "PRN" in res["table"] and res["table"].splitlines()[-1] in log


def test_rerun_reuses_everything(demo_run):
    from prn_model.demo import DemoOptions, run_demo

    out, _, tiny = demo_run
    model = out / "run" / "model.pt"
    before = model.stat().st_mtime_ns
    first = json.loads((out / "results.json").read_text())
    seen: list[str] = []
    report = run_demo(out, DemoOptions(train_images=N_TRAIN, val_images=N_VAL, test_images=N_TEST, min_size=(64, 64),
                                       max_size=(64, 96), iters=ITERS, batch_size=2, coco_limit=1,
                                       scheduler="threads", workers=1, device="cpu", config=str(tiny)),
                      on_stage=lambda name, info: seen.append(name))
    assert seen == ["data", "coco", "train", "evaluate"]
    assert model.stat().st_mtime_ns == before  # not retrained
    # same weights, same stores: the same figures
    assert report["prn"] == pytest.approx(first["prn"]) and report["base"] == pytest.approx(first["base"])


def test_demo_rejects_a_bad_size():
    r = subprocess.run([str(PRN), "demo", "--min-size", "64by64", "--out", "unused"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "HxW" in r.stderr
    assert not Path("unused").exists()


def test_rerun_with_other_scenes_rebuilds_stores_and_retrains(demo_run, tmp_path):
    """An older demo's folder (other scene counts) is brought up to date, not refused."""
    from prn_model.demo import DemoOptions, run_demo
    from prn_data.store import open_store

    _, _, tiny = demo_run
    out = tmp_path / "out"

    def run(n_train: int) -> dict:
        return run_demo(out, DemoOptions(train_images=n_train, val_images=N_VAL, test_images=N_TEST, min_size=(64, 64),
                                         max_size=(64, 96), iters=ITERS, batch_size=2, coco_limit=1,
                                         scheduler="threads", workers=1, device="cpu", config=str(tiny)))

    run(N_TRAIN)
    before = (out / "run" / "model.pt").stat().st_mtime_ns
    report = run(N_TRAIN + 1)
    assert (out / "run" / "model.pt").stat().st_mtime_ns != before  # trained again
    assert len(open_store(out / "train.zarr")) == N_TRAIN + 1
    assert len(open_store(out / "val.zarr")) == N_VAL
    assert len(open_store(out / "test.zarr")) == N_TEST
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    # one fresh run: the old run's metrics are gone, not continued
    assert [m["step"] for m in metrics] == [ITERS]
    assert report["images"] == N_TEST


def test_a_run_configured_otherwise_is_stale(demo_run):
    from prn_model.demo import stale_run
    from prn_model.config import load_config, override

    out, _, _ = demo_run
    saved = load_config(out / "run" / "config.yaml")
    assert stale_run(out / "run", saved, data_changed=False) is None
    assert "configured otherwise" in stale_run(out / "run", override(saved, iters=ITERS + 1), data_changed=False)
    assert "regenerated" in stale_run(out / "run", saved, data_changed=True)
