"""Base network, rule baseline, untrained PRN and PRN side by side on one store, with the PQ gain's paired
bootstrap interval (workflows/README.md "Evidence"; README "The demo").

- ``base``: the base network's panoptic output as stored;
- ``rule``: :func:`prn_data.rule_baseline.rule_baseline` on it (score threshold, thing-labelled VOID regions
  filled from the base's semantic arg-max) — no learning;
- ``untrained``: a freshly initialised *residual* PRN of the checkpoint's architecture: its heads start at
  exactly zero, so its maps are the base's own maps (§3.2 inputs) and this row is the base passed through
  PPGBF and majority voting (§3.5) — what post-processing alone does;
- ``prn``: the trained PRN (checkpoint), post-processed the same way.

All four are scored by :class:`prn_model.scoring.StreamedScorer` on the same images; the per-image PQ counts
feed :func:`prn_data.bootstrap.paired_bootstrap` (images resampled, PQ recomputed from the counts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from prn_data.bootstrap import paired_bootstrap
from prn_data.errors import PrnError
from prn_data.records import CategorySet, Segment
from prn_data.rule_baseline import RuleParams, rule_baseline, semantic_labels
from prn_data.store import Store, open_store

from .checkpoint import load_checkpoint, read_checkpoint
from .devices import resolve_device
from .evaluate import SUMMARY_KEYS, default_postprocess_config, predict, summary, write_results
from .network import PRN, PRNConfig
from .ppgbf import PostProcessConfig
from .scoring import StreamedScorer, locate_ground_truth

NAMES = ("base", "rule", "untrained", "prn")
LABELS = {"base": "base", "rule": "rule", "untrained": "untrained PRN", "prn": "PRN"}


def untrained_model(checkpoint: str | Path, device: torch.device | str = "cpu", seed: int = 0) -> PRN:
    """A freshly initialised residual PRN of ``checkpoint``'s architecture (seeded; eval mode): its outputs are
    the base network's maps whatever the seed, since residual heads start at exactly zero."""
    ckpt = read_checkpoint(checkpoint)
    mcfg = PRNConfig.from_dict({**ckpt["model_config"], "residual": True})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PRN(mcfg)
    return model.to(device).eval()


def _rule(store: Store, meta: dict, base: tuple[np.ndarray, list[Segment]], params: RuleParams, cats: CategorySet,
          divisor: int) -> tuple[np.ndarray, list[Segment]]:
    """The rule baseline of one sample at store resolution, from its stored base prediction ``base``
    (panoptic, segments)."""
    probs = np.asarray(store.read_sample(meta["index"], crop=False, arrays=["base/semantic"])["base/semantic"])
    h, w = meta["size"]
    labels = semantic_labels(probs, (4 * probs.shape[1], 4 * probs.shape[2]))[:h, :w]
    return rule_baseline(base[0], base[1], labels, cats, params, divisor=divisor)


def compare_store(
    store_url: str | Path,
    checkpoint: str | Path,
    *,
    out: str | Path | None = None,
    device: str = "cpu",
    cfg: PostProcessConfig | None = None,
    rule: RuleParams = RuleParams(),
    replicates: int = 2000,
    seed: int = 0,
    limit: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> dict:
    """Score :data:`NAMES` on the store's done samples (original size when the dataset's ground truth is at
    hand, as ``prn evaluate``). Returns ``{name: pq_compute-form result for each of NAMES, "gains": {name:
    paired_bootstrap(base → name)} for rule/untrained/prn, "scored", "ground_truth", "images"}``; with
    ``out``, predictions under ``out/<name>/`` and the dict as ``out/results.json``."""
    store = open_store(str(store_url))
    if not store.has_base:
        raise PrnError(f"{store_url}: the store holds no base-network prediction (built with --base none)")
    dev = resolve_device(device)
    trained, _ = load_checkpoint(checkpoint, dev)
    untrained = untrained_model(checkpoint, dev)
    indices = [int(i) for i in np.nonzero(store.done)[0]][: limit or None]
    if not indices:
        raise PrnError(f"{store_url}: no finished samples to evaluate")
    cfg = cfg or default_postprocess_config(store.attrs)
    cats = store.categories
    divisor = int(store.attrs["label_divisor"])
    truth = locate_ground_truth(store)
    out_dir = Path(out) if out is not None else None
    ev = StreamedScorer(truth, cats, NAMES, out_dir=out_dir, workers=workers)
    try:
        pairs = zip(predict(trained, store, indices, device=dev, cfg=cfg),
                    predict(untrained, store, indices, device=dev, cfg=cfg))
        for n, ((meta, refined), (_, plain)) in enumerate(pairs, 1):
            base = (meta["base/panoptic"], [Segment.from_json(d, cats) for d in meta["base/segments"]])
            ev.add(meta, {"base": base, "rule": _rule(store, meta, base, rule, cats, divisor), "untrained": plain,
                          "prn": refined})
            if on_progress is not None:
                on_progress(n, len(indices))
        results: dict = ev.finish()
    finally:
        ev.close()
    per_image = {name: [ev.stats[name][k] for k in sorted(ev.stats[name])] for name in NAMES}
    cat_ids = [c.id for c in cats]
    results["gains"] = {name: paired_bootstrap(per_image["base"], per_image[name], cat_ids, replicates=replicates,
                                               seed=seed) for name in NAMES[1:]}
    results |= {"scored": truth.mode, "ground_truth": truth.where, "images": len(indices),
                "rule_params": {"threshold": rule.threshold, "min_area": rule.min_area}}
    return write_results(out_dir, results)


def format_compare(results: dict) -> str:
    """The table: one row per method (percent), then each method's PQ gain over the base with its interval."""
    head = f"{'':14s}" + "".join(f"{k.upper():>8s}" for k in SUMMARY_KEYS)
    lines = [f"scored at {results['ground_truth']} ({results['images']} images)", head]
    for name in NAMES:
        s = summary(results[name])
        lines.append(f"{LABELS[name]:14s}" + "".join(f"{s[k]:8.2f}" for k in SUMMARY_KEYS))
    for name in NAMES[1:]:
        g = results["gains"][name]
        lo, hi = g["ci"]
        lines.append(f"{LABELS[name]} − base: PQ {g['gain']:+.2f}, {100 * g['level']:.0f}% interval "
                     f"[{lo:+.2f}, {hi:+.2f}] (paired bootstrap over {g['images']} images)")
    return "\n".join(lines)


__all__ = ["LABELS", "NAMES", "compare_store", "format_compare", "untrained_model"]
