"""``prn demo``: the whole toolkit end to end on the CPU, everything under one folder (README "Two commands").

Stages (each one reuses what an earlier run left, so a re-run only redoes what is missing):

1. ``data`` — seeded synthetic scenes in the COCO panoptic layout (``synthetic/``: ``train``, ``val`` for
   any tuning, and ``test``, used only for the reported table) and a store of each built with the
   ``simulated`` base network (``train.zarr``, ``val.zarr``, ``test.zarr``). The scenes are generated small and stored at their own size (no resize), so training
   fits the CPU budget and evaluation at the original size needs no resampling of either prediction.
2. ``coco`` — the shipped real COCO sample (``prn_data/samples/coco``, split ``val2017``) built with the
   paper's resize policy (§4.2) into ``coco-val2017.zarr``, and one of its samples drawn like the paper's
   Fig. 4 into ``show/``.
3. ``train`` — PRN (§3) trained with ``workflows/demo.yaml`` on ``train.zarr`` into ``run/``.
4. ``evaluate`` — base network, rule baseline, untrained PRN and PRN (PPGBF §3.5, PQ/SQ/RQ §4.2) on
   ``test.zarr`` (:func:`prn_model.compare.compare_store`), with the PQ gain's paired bootstrap 95 % interval;
   predictions and the evaluator's own ``results.json`` in ``evaluation/``; a summary ``results.json`` at
   the top.

Wall times per stage are recorded in the summary. The functions here orchestrate the public functions of
the other modules; they hold no algorithm of their own. The demo's settings are
:class:`prn_model.demo_options.DemoOptions`.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.progress import Progress

from prn_data import SAMPLES_DIR
from prn_data.build import BuildConfig, BuildResult, build
from prn_data.datasets.synthetic import SyntheticConfig, is_complete, write_synthetic
from prn_data.errors import PrnError
from prn_data.progress import progress
from prn_data.resize import ResizePolicy
from prn_data.show import draw_sample
from prn_data.store import open_store
from prn_data.targets import TargetParams

from .config import TrainConfig, load_config, override
from .demo_options import (COCO_SPLIT, DEMO_BASE, DEMO_MAX_SIZE, DEMO_MIN_SIZE, DEMO_SIGMA, DEMO_SMALL_INSTANCE_AREA,
                           DemoOptions)
from .compare import compare_store, format_compare
from .evaluate import default_postprocess_config, summary, validation
from .checkpoint import latest_checkpoint
from .train import train


def package_root() -> Path:
    """The folder holding ``prn_model`` (the repository root in an editable install)."""
    return Path(__file__).resolve().parent.parent


def coco_sample_root() -> Path:
    """The real COCO panoptic sample shipped inside ``prn_data`` (official layout, split ``val2017``)."""
    return SAMPLES_DIR / "coco"


def default_config() -> Path:
    """``workflows/demo.yaml`` beside the package; a :class:`PrnError` when it is not there (a wheel
    install ships no workflows: pass ``config`` explicitly)."""
    path = package_root() / "workflows" / "demo.yaml"
    if not path.is_file():
        raise PrnError(f"{path}: the demo's training configuration is missing; give one with --config")
    return path


def _paths(out: Path) -> dict[str, Path]:
    return {
        "synthetic": out / "synthetic",
        "train_store": out / "train.zarr",
        "val_store": out / "val.zarr",
        "test_store": out / "test.zarr",
        "coco_store": out / f"coco-{COCO_SPLIT}.zarr",
        "show": out / "show",
        "run": out / "run",
        "checkpoint": out / "run" / "model.pt",
        "evaluation": out / "evaluation",
        "results": out / "results.json",
    }


class _Reporter:
    """Prints stage headers and artifact locations on the CLI's console, and times each stage."""

    def __init__(self, console: Console | None):
        self.console = console
        self.seconds: dict[str, float] = {}

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, soft_wrap=True)

    def stage(self, name: str, title: str) -> "_Stage":
        return _Stage(self, name, title)


class _Stage:
    def __init__(self, rep: _Reporter, name: str, title: str):
        self.rep, self.name, self.title = rep, name, title

    def __enter__(self) -> "_Stage":
        self.rep.say(f"\n[bold cyan]── {self.title}[/bold cyan]")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        dt = time.perf_counter() - self.t0
        self.rep.seconds[self.name] = round(dt, 2)
        if exc_type is None:
            self.rep.say(f"[dim]{self.name}: {dt:.1f} s[/dim]")


def _progress(console: Console | None) -> AbstractContextManager[Progress | None]:
    """A progress bar on the shared console, or no bar (``None``) when the demo runs silent."""
    if console is None:
        return nullcontext(None)
    return progress()


def _write_scenes(root: Path, split: str, num: int, *, opts: DemoOptions, console: Console | None) -> bool:
    """Generate ``num`` scenes of ``split`` unless a complete identical generation is there; True if written."""
    cfg = SyntheticConfig(seed=opts.seed, min_size=opts.min_size, max_size=opts.max_size)
    if is_complete(root, split, num, cfg):
        return False
    with _progress(console) as bar:
        task = bar.add_task(f"scenes {split}", total=num, rate="") if bar is not None else None
        write_synthetic(root, split, num, cfg,
                        on_image=(lambda i: bar.update(task, completed=i + 1)) if bar is not None else None)
    return True


def _build(dataset: str, split: str, *, base: str, out: Path, policy: ResizePolicy, opts: DemoOptions,
           console: Console | None, limit: int | None = None, overwrite: bool = False,
           params: TargetParams | None = None) -> BuildResult:
    """``prn build`` in-process with a progress bar; failed samples are an error (the demo needs them all)."""
    cfg = BuildConfig(dataset=dataset, split=split, base=base, out=str(out), limit=limit, workers=opts.workers,
                      scheduler=opts.scheduler, policy=policy, overwrite=overwrite, params=params)
    with _progress(console) as bar:
        task = bar.add_task(f"build {out.name}", total=None, rate="") if bar is not None else None

        def on_progress(done: int, total: int, advance: int) -> None:
            if bar is not None:
                bar.update(task, total=total, completed=done)

        result = build(cfg, on_progress=on_progress)
    if result.failures:
        first = result.failures[0]
        raise PrnError(f"{out}: {len(result.failures)} sample(s) failed to build, e.g. {first['file']}: "
                       f"{first['error']}")
    return result


def _other_params(store: Path, params: TargetParams) -> bool:
    """True when ``store`` exists with target parameters other than ``params``."""
    if not (store / "zarr.json").exists():
        return False
    try:
        recorded = json.loads((store / "zarr.json").read_text())["attributes"]["target_params"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # not a store the demo made: the build's own checks name the problem
    return recorded != params.to_json()


def stale_run(run: Path, cfg: TrainConfig, data_changed: bool) -> str | None:
    """Why the training run in ``run`` cannot be resumed or kept (its scenes were regenerated, or it was
    configured otherwise, e.g. by an older demo), or None."""
    saved = run / "config.yaml"
    if not saved.is_file():
        return None
    if data_changed:
        return "the training scenes were regenerated"
    try:
        if load_config(saved) != cfg:
            return "it was configured otherwise"
    except PrnError:
        return "its config.yaml is unreadable"
    return None


def _latest_step(run: Path) -> int:
    """The step of the newest checkpoint in ``run`` (0 when there is none)."""
    ck = latest_checkpoint(run)
    if ck is None:
        return 0
    digits = "".join(ch for ch in ck.stem if ch.isdigit())
    return int(digits) if digits else 0


def run_demo(
    out_dir: str | Path,
    options: DemoOptions | None = None,
    console: Console | None = None,
    on_stage: Callable[[str, dict], None] | None = None,
) -> dict:
    """Run the four demo stages under ``out_dir`` and return the summary written to ``out_dir/results.json``:
    ``{"base": {pq, sq, rq, pq_th, pq_st}, "rule", "untrained", "prn": {...}, "diff": prn − base`` (percent,
    test split), ``"split": "test"``, ``"gain_ci95": [low, high]`` (PRN − base PQ, points), ``"gains"`` (each
    method's gain and interval), ``"table"`` (text),
    ``"seconds"`` (wall time per stage), ``"artifacts"`` (paths), ``"options"``, ``"images"``}.

    ``console``: a rich console for stage headers and progress bars (None = silent). ``on_stage(name,
    info)`` is called after each stage.
    """
    opts = options or DemoOptions()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    p = _paths(out)
    config_path = Path(opts.config) if opts.config else default_config()
    rep = _Reporter(console)
    notify = on_stage or (lambda name, info: None)
    t_all = time.perf_counter()

    # 1. synthetic data and its three stores (stored at the scenes' own size: ResizePolicy(short=0))
    with rep.stage("data", f"1/4 synthetic COCO-panoptic scenes and stores (base {opts.base})"):
        wrote = {}
        splits = (("train", opts.train_images), ("val", opts.val_images), ("test", opts.test_images))
        for split, num in splits:
            wrote[split] = _write_scenes(p["synthetic"], split, num, opts=opts, console=console)
            rep.say(f"{num} {split} scenes {'written to' if wrote[split] else 'already in'} {p['synthetic']}")
        params = TargetParams(sigma=DEMO_SIGMA, small_instance_area=DEMO_SMALL_INSTANCE_AREA)
        for split, _ in splits:
            key = f"{split}_store"
            # New scenes (other sizes or counts than a previous demo in this folder), or a store made with
            # other target parameters by an earlier version, make the store stale.
            wrote[split] = wrote[split] or _other_params(p[key], params)
            r = _build(f"coco:{p['synthetic']}", split, base=opts.base, out=p[key], policy=ResizePolicy(short=0),
                       opts=opts, console=console, overwrite=wrote[split], params=params)
            rep.say(f"store {p[key]}: {r.built} built, {r.skipped} already done")
    notify("data", {k: str(p[k]) for k in ("train_store", "val_store", "test_store")})

    # 2. the real COCO sample at the paper's resolution, and one Fig. 4-style drawing of it
    with rep.stage("coco", f"2/4 real COCO sample ({coco_sample_root()}, split {COCO_SPLIT})"):
        r = _build(f"coco:{coco_sample_root()}", COCO_SPLIT, base="simulated", out=p["coco_store"],
                   policy=ResizePolicy(), opts=opts, console=console, limit=opts.coco_limit)
        rep.say(f"store {p['coco_store']}: {r.built} built, {r.skipped} already done")
        store = open_store(p["coco_store"])
        sample = store.read_sample(0)
        p["show"].mkdir(parents=True, exist_ok=True)
        figure = p["show"] / f"coco-{sample['image_id']}.png"
        title = (f"coco {COCO_SPLIT} · sample 0 · {sample['image_id']} · {sample['size'][0]}×{sample['size'][1]} "
                 f"· base simulated")
        draw_sample(sample, figure, store.categories, title=title)
        rep.say(f"drawing of sample 0: {figure}")
    notify("coco", {"coco_store": str(p["coco_store"]), "figure": str(figure)})

    # 3. training (resumes from the newest checkpoint; a finished run is kept as it is)
    cfg = load_config(config_path)
    cfg = override(cfg, **{"data.store": str(p["train_store"]), "out": str(p["run"]), "device": opts.device,
                           "iters": opts.iters, "data.batch_size": opts.batch_size})
    with rep.stage("train", f"3/4 train PRN ({config_path}, {cfg.iters} iterations, batch {cfg.data.batch_size})"):
        stale = stale_run(p["run"], cfg, data_changed=wrote["train"])
        if stale:
            shutil.rmtree(p["run"])
            rep.say(f"previous run in {p['run']} removed: {stale}")
        done_steps = _latest_step(p["run"])
        if done_steps == 0:
            # killed before its first checkpoint: nothing to resume, and the trainer refuses a folder with
            # old metrics, so start the run afresh
            for name in ("metrics.jsonl", "val.jsonl"):
                (p["run"] / name).unlink(missing_ok=True)
        if done_steps >= cfg.iters and p["checkpoint"].is_file():
            rep.say(f"already trained to step {done_steps}: {p['checkpoint']}")
        else:
            result = train(cfg, resume=done_steps > 0, validate=validation(cfg), show_progress=console is not None)
            last = result.get("last_metrics") or {}
            if last:
                rep.say(f"step {result['step']}: loss {last['loss']:.4g}")
            rep.say(f"run folder {p['run']} (config.yaml, metrics.jsonl, checkpoints/); weights {p['checkpoint']}")
    weights = p["checkpoint"]
    if not weights.is_file():
        # stopped between the last step's checkpoint and model.pt: that checkpoint holds the same weights
        weights = latest_checkpoint(p["run"]) or weights
    notify("train", {"checkpoint": str(weights)})

    # 4. evaluation on the untouched test store: base, rule baseline, untrained PRN, PRN
    with rep.stage("evaluate", f"4/4 evaluate base, rule baseline, untrained PRN and PRN on {p['test_store'].name}"):
        pp = default_postprocess_config(open_store(p["test_store"]).attrs)
        with _progress(console) as bar:
            task = bar.add_task("evaluate", total=None, rate="") if bar is not None else None

            def step(n: int, total: int) -> None:
                if bar is not None:
                    bar.update(task, completed=n, total=total)

            results = compare_store(p["test_store"], weights, out=p["evaluation"], device=opts.device, cfg=pp,
                                    seed=opts.seed, on_progress=step)
        table = format_compare(results)
        rep.say(table)
        rep.say(f"predictions (COCO panoptic) and the evaluator's results.json in {p['evaluation']}")

    rows = {name: summary(results[name]) for name in ("base", "rule", "untrained", "prn")}
    base, prn = rows["base"], rows["prn"]
    report = {
        **rows,
        "diff": {k: prn[k] - base[k] for k in base},
        "split": "test",
        "gain_ci95": results["gains"]["prn"]["ci"],
        "gains": results["gains"],
        "table": table,
        "images": results["images"],
        "scored": results["scored"],
        "postprocess": pp.to_json(),
        "seconds": rep.seconds | {"total": round(time.perf_counter() - t_all, 2)},
        "artifacts": {k: str(v) for k, v in p.items()} | {"figure": str(figure), "config": str(config_path)},
        "options": asdict(opts),
        "train": {"iters": cfg.iters, "batch_size": cfg.data.batch_size},
    }
    p["results"].write_text(json.dumps(report, indent=1, default=float))
    rep.say(f"\nsummary: {p['results']}  (wall time: " +
            ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items()) + ")")
    notify("evaluate", {"results": str(p["results"])})
    return report


__all__ = [
    "COCO_SPLIT",
    "DEMO_BASE",
    "DEMO_MAX_SIZE",
    "DEMO_MIN_SIZE",
    "DemoOptions",
    "run_demo",
    "stale_run",
    "coco_sample_root",
    "default_config",
]
