"""Seeds and the paper's plain PRN next to the residual one, on a demo folder's test split (workflows/README.md
"Evidence on the coupled-error base").

For every variant (``residual``: ``workflows/demo.yaml`` as it is; ``plain``: the same with
``model.residual: false``, the paper's PRN, optionally with its own ``--plain-lr`` / ``--plain-iters``) and
every seed, PRN is trained on ``DEMO/train.zarr`` into ``OUT/<variant>-seed<k>/`` (a finished run is kept,
an unfinished one resumed) and compared with the base network, the rule baseline and the untrained PRN on
``DEMO/test.zarr`` (:func:`prn_model.compare.compare_store`, paired bootstrap 95 % interval). Prints one
Markdown table and writes it, with every figure, to ``OUT/evidence.json`` and ``OUT/evidence.md``.

    .venv/bin/prn demo --out cache/demo                 # builds the stores (and trains seed 0 once)
    nice -n 5 .venv/bin/python scripts/evidence.py --demo cache/demo --out cache/evidence \\
        --seeds 0 1 2 --variants residual plain

``--iters`` / ``--batch-size`` / ``--config`` as ``prn demo``; ``--device cuda`` for the GPU recipe.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, required=True, help="a prn demo folder (train.zarr, test.zarr)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["residual", "plain"], choices=["residual", "plain"])
    ap.add_argument("--config", type=Path, default=REPO / "workflows" / "demo.yaml")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--plain-lr", type=float, default=None, help="lr of the plain PRN (default: the config's)")
    ap.add_argument("--plain-iters", type=int, default=None, help="iterations of the plain PRN (default: --iters)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N test scenes")
    args = ap.parse_args(argv)

    from prn_model.compare import compare_store
    from prn_model.config import load_config, override
    from prn_model.demo import stale_run
    from prn_model.evaluate import summary
    from prn_model.train import train

    rows = []
    for variant in args.variants:
        for seed in args.seeds:
            run = args.out / f"{variant}-seed{seed}"
            plain = variant == "plain"
            cfg = override(load_config(args.config), **{
                "data.store": str(args.demo / "train.zarr"), "out": str(run), "device": args.device,
                "seed": seed, "model.residual": not plain, "data.batch_size": args.batch_size,
                "iters": (args.plain_iters or args.iters) if plain else args.iters,
                "optim.lr": args.plain_lr if plain else None})
            if stale_run(run, cfg, data_changed=False):
                raise SystemExit(f"{run}: holds a run configured otherwise; remove it or pick another --out")
            model = run / "model.pt"
            if not model.is_file():
                train(cfg, resume=(run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir()),
                      show_progress=True)
            res = compare_store(args.demo / "test.zarr", model, out=run / "evaluation", device=args.device,
                                seed=seed, limit=args.limit)
            table = {name: summary(res[name]) for name in ("base", "rule", "untrained", "prn")}
            gain = res["gains"]["prn"]
            rows.append({"variant": variant, "seed": seed, "iters": cfg.iters, "lr": cfg.optim.lr,
                         **{f"{k}_pq": v["pq"] for k, v in table.items()}, "gain": gain["gain"],
                         "gain_ci95": gain["ci"], "rule_gain": res["gains"]["rule"]["gain"],
                         "rule_ci95": res["gains"]["rule"]["ci"], "images": res["images"], "table": table})
            print(render(rows[-1:]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evidence.json").write_text(json.dumps(rows, indent=1))
    text = render(rows)
    (args.out / "evidence.md").write_text(text + "\n")
    print(text)
    return 0


def render(rows: list[dict]) -> str:
    """One Markdown row per run: PQ of base, rule, untrained PRN, PRN; PRN − base with its interval."""
    head = ("| variant | seed | iters | lr | base | rule | untrained | PRN | PRN − base [95 % interval] |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for r in rows:
        lo, hi = r["gain_ci95"]
        lines.append(f"| {r['variant']} | {r['seed']} | {r['iters']} | {r['lr']:g} | {r['base_pq']:.2f} | "
                     f"{r['rule_pq']:.2f} | {r['untrained_pq']:.2f} | {r['prn_pq']:.2f} | "
                     f"{r['gain']:+.2f} [{lo:+.2f}, {hi:+.2f}] |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
