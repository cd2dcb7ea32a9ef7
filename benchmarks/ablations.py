"""The paper's ablations (§4.5) on the synthetic benchmark, as one command that writes the table.

Reads an ablation file (default ``workflows/ablations.yaml``): a training config every variant starts from,
common ``model`` settings, and variants that change ``model`` switches (``coordconv``, ``foreground``,
``box_offsets`` …) and/or ``postprocess`` settings (``box_gate``, ``box_iou``, ``grouping`` …). Each distinct
network is trained once for ``--iters`` iterations on the synthetic train split; every variant is evaluated
on the test split (never used for tuning) against the same base network; the table gives PQ / SQ / RQ /
PQ_th / PQ_st, the difference in PQ to the first variant, and the base's figures.

Synthetic scenes and stores are made under ``--out`` as the demo makes them (its scene sizes and base), or
given with ``--train-store`` / ``--test-store`` (e.g. a demo folder's ``train.zarr`` / ``test.zarr``). A run
whose ``model.pt`` is there with the same configuration is reused, so an interrupted command picks up where
it stopped.

Usage: ``python benchmarks/ablations.py --iters N [--train 800] [--test 100] [--out cache/ablations]
[--config workflows/ablations.yaml] [--train-store S --test-store S] [--seed 0] [--device auto]
[--loader-workers N] [--only NAME ...]``. Writes ``OUT/ablations.md`` (the table, with the command) and ``OUT/ablations.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import yaml

from prn_data.build import BuildConfig, build
from prn_data.datasets.synthetic import SyntheticConfig, is_complete, write_synthetic
from prn_data.errors import PrnError
from prn_data.resize import ResizePolicy
from prn_model.config import load_config, override
from prn_model.demo_options import DEMO_BASE, DEMO_MAX_SIZE, DEMO_MIN_SIZE
from prn_model.evaluate import SUMMARY_KEYS, evaluate_store, summary
from prn_model.train import train

ROOT = Path(__file__).resolve().parent.parent
VARIANT_KEYS = {"name", "model", "postprocess"}
FILE_KEYS = {"train", "base", "model", "variants"}


def read_ablations(path: Path) -> dict:
    """The ablation file, checked: ``train`` (path, relative to the file), ``base``, ``model``, ``variants``
    (each with a unique ``name`` and optional ``model`` / ``postprocess`` mappings)."""
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PrnError(f"{path}: cannot read ({exc})") from None
    unknown = set(d) - FILE_KEYS
    if unknown:
        raise PrnError(f"{path}: unknown key(s) {sorted(unknown)}")
    variants = d.get("variants") or []
    if not variants:
        raise PrnError(f"{path}: no variants")
    names = set()
    for i, v in enumerate(variants):
        if not isinstance(v, dict) or not v.get("name") or set(v) - VARIANT_KEYS:
            raise PrnError(f"{path}: variants[{i}] needs a name and only model / postprocess mappings")
        if v["name"] in names:
            raise PrnError(f"{path}: variant name {v['name']!r} given twice")
        names.add(v["name"])
    d["train"] = (path.parent / str(d.get("train") or "demo.yaml")).resolve()
    return d


def make_stores(out: Path, *, n_train: int, n_test: int, base: str, seed: int, workers: int | None) -> tuple[str, str]:
    """Synthetic train / test scenes (the demo's sizes) and their stores at the scenes' own size."""
    root = out / "synthetic"
    cfg = SyntheticConfig(seed=seed, min_size=DEMO_MIN_SIZE, max_size=DEMO_MAX_SIZE)
    stores = []
    for split, n in (("train", n_train), ("test", n_test)):
        fresh = not is_complete(root, split, n, cfg)
        if fresh:
            write_synthetic(root, split, n, cfg)
        store = out / f"{split}.zarr"
        result = build(BuildConfig(dataset=f"coco:{root}", split=split, base=base, out=str(store), workers=workers,
                                   scheduler="threads", policy=ResizePolicy(short=0), overwrite=fresh))
        if result.failures:
            raise PrnError(f"{store}: {len(result.failures)} sample(s) failed to build: {result.failures[0]}")
        stores.append(str(store))
    return stores[0], stores[1]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]


def run_ablations(args: argparse.Namespace) -> dict:
    spec = read_ablations(Path(args.config))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.train_store and args.test_store:
        train_store, test_store = args.train_store, args.test_store
    elif args.train_store or args.test_store:
        raise PrnError("give both --train-store and --test-store, or neither")
    else:
        train_store, test_store = make_stores(out, n_train=args.train, n_test=args.test,
                                              base=spec.get("base") or DEMO_BASE, seed=args.seed, workers=args.workers)
    variants = [v for v in spec["variants"] if not args.only or v["name"] in args.only]
    trained: dict[str, dict] = {}  # the network's settings (JSON) → its run
    rows = []
    for v in variants:
        model = {**(spec.get("model") or {}), **(v.get("model") or {})}
        key = json.dumps(model, sort_keys=True)
        if key not in trained:
            run = out / "runs" / _slug(v["name"])
            changes = {"data.store": train_store, "data.val_store": None, "out": str(run), "iters": args.iters,
                       "seed": args.seed, "device": args.device, "data.num_workers": args.loader_workers,
                       **{f"model.{k}": x for k, x in model.items()}}
            cfg = override(load_config(spec["train"]), **changes)
            saved = run / "config.yaml"
            t0 = time.perf_counter()
            if not ((run / "model.pt").is_file() and saved.is_file() and load_config(saved) == cfg):
                shutil.rmtree(run, ignore_errors=True)  # this command's own run folder, stale or unfinished
                print(f"training {v['name']!r}: {args.iters} iterations -> {run}", flush=True)
                train(cfg, show_progress=False)
            trained[key] = {"run": str(run), "train_s": round(time.perf_counter() - t0, 1)}
        run = trained[key]["run"]
        res = evaluate_store(test_store, checkpoint=Path(run) / "model.pt", device=args.device, batch=4,
                             post=v.get("postprocess") or {})
        rows.append({"name": v["name"], "model": model, "postprocess": v.get("postprocess") or {}, "run": run,
                     "prn": summary(res["prn"]), "base": summary(res["base"]), "images": res["images"],
                     "base_predictions": res.get("base_predictions")})
        print(f"{v['name']}: PQ {rows[-1]['prn']['pq']:.2f} (base {rows[-1]['base']['pq']:.2f})", flush=True)
    return {"command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/ablations.py", *sys.argv[1:]]),
            "iters": args.iters, "train_store": train_store, "test_store": test_store, "rows": rows,
            "runs": trained}


def format_table(result: dict) -> str:
    """The markdown table: one row per variant, Δ PQ against the first, the base's row last."""
    rows = result["rows"]
    ref = rows[0]["prn"]["pq"]
    head = "| variant | " + " | ".join(k.upper().replace("_TH", "_th").replace("_ST", "_st") for k in SUMMARY_KEYS) + " | Δ PQ |"
    lines = [head, "|" + "---|" * (len(SUMMARY_KEYS) + 2)]
    for r in rows:
        p = r["prn"]
        lines.append(f"| {r['name']} | " + " | ".join(f"{p[k]:.2f}" for k in SUMMARY_KEYS) + f" | {p['pq'] - ref:+.2f} |")
    b = rows[0]["base"]
    lines.append("| base network (input of every variant) | " + " | ".join(f"{b[k]:.2f}" for k in SUMMARY_KEYS) + " | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, required=True, help="training iterations of every run")
    ap.add_argument("--config", default=str(ROOT / "workflows" / "ablations.yaml"))
    ap.add_argument("--out", default="cache/ablations")
    ap.add_argument("--train", type=int, default=800, help="synthetic train scenes (the demo's 800)")
    ap.add_argument("--test", type=int, default=100, help="synthetic test scenes (the demo's 100)")
    ap.add_argument("--train-store")
    ap.add_argument("--test-store")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=None, help="build workers")
    ap.add_argument("--loader-workers", type=int, default=None, help="DataLoader workers (default: the config's)")
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = ap.parse_args(argv)
    try:
        result = run_ablations(args)
    except PrnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = format_table(result)
    out = Path(args.out)
    (out / "ablations.json").write_text(json.dumps(result, indent=1))
    n = result["rows"][0]["images"]
    (out / "ablations.md").write_text(f"`{result['command']}` — {args.iters} iterations per run, {n} test scenes\n\n"
                                      f"{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
