"""Training curves of one or several run folders as one PNG (``prn plot``; README "Watching training").

The curves come from the run folders' ``metrics.jsonl`` and ``val.jsonl`` (:mod:`prn_model.trainlog`): the
total loss and each loss term of eq. (1) (log scale when it spans a decade), the learning rate, samples/s and the validation PQ;
several runs share each panel, one colour per run, named by run folder in the legend (for ablations).
Drawn with matplotlib's Agg canvas (no pyplot, no display).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from prn_data.errors import PrnError

NOT_PLOTTED = frozenset({"step", "data_wait"})
"""``metrics.jsonl`` keys that get no panel (``data_wait`` is shown in the log lines)."""

RATE_KEYS = ("lr", "samples_per_s")
VAL_KEYS = ("pq",)
TITLES = {"loss": "loss (eq. 1)", "lr": "learning rate", "samples_per_s": "samples/s", "val/pq": "validation PQ"}


class PlotError(PrnError):
    """A run folder cannot be plotted (missing or unreadable metrics)."""


@dataclass
class RunCurves:
    """The series of one run: ``series[key] = (steps, values)``, keys as in ``metrics.jsonl`` and, for the
    validation, ``val/<key>`` (``val/pq``)."""

    name: str
    series: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PlotError(f"{path}:{n}: not a JSON line ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise PlotError(f"{path}:{n}: expected an object with an integer step")
        records.append(record)
    return records


def _series(records: list[dict], prefix: str = "") -> dict[str, tuple[list[int], list[float]]]:
    """Every numeric key of ``records`` as ``(steps, values)``, in first-seen order (non-finite values,
    e.g. a diverged loss, are kept: matplotlib leaves a gap)."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        for key, value in r.items():
            if key in NOT_PLOTTED or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            steps, values = out.setdefault(prefix + key, ([], []))
            steps.append(int(r["step"]))
            values.append(float(value))
    return out


def read_run(run: str | Path, name: str | None = None) -> RunCurves:
    """The curves of the run folder ``run`` (``metrics.jsonl``, and ``val.jsonl`` when present)."""
    run = Path(run)
    metrics = run / "metrics.jsonl"
    if not run.is_dir():
        raise PlotError(f"{run}: no such run folder")
    if not metrics.is_file():
        raise PlotError(f"{run}: no metrics.jsonl (not a prn run folder, or no step logged yet)")
    curves = RunCurves(name or run.name, _series(_read_jsonl(metrics)))
    val = run / "val.jsonl"
    if val.is_file():
        curves.series.update(_series(_read_jsonl(val), prefix="val/"))
    return curves


def run_names(runs: list[Path]) -> list[str]:
    """Legend names: each run folder's name, or as many trailing path parts as make the names distinct
    (``a/run``, ``b/run``)."""
    parts = [Path(r).resolve().parts for r in runs]
    for depth in range(1, max(map(len, parts)) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(r) for r in runs]


def panel_keys(curves: list[RunCurves]) -> list[str]:
    """The panels, in order: ``loss``, each loss term, ``lr``, ``samples_per_s``, then the validation PQ
    (when any run has one)."""
    seen: list[str] = []
    for c in curves:
        seen += [k for k in c.series if k not in seen]
    losses = [k for k in seen if k not in RATE_KEYS and not k.startswith("val/")]
    losses.sort(key=lambda k: k != "loss")  # the total first, the terms in the file's order
    return losses + [k for k in RATE_KEYS if k in seen] + [f"val/{k}" for k in VAL_KEYS if f"val/{k}" in seen]


def plot_runs(runs: list[str | Path], out: str | Path, *, dpi: int = 100, columns: int = 3) -> Path:
    """Draw the curves of ``runs`` (run folders) to the PNG ``out``, one panel per :func:`panel_keys` entry,
    every run in each; returns ``out``."""
    if not runs:
        raise PlotError("no run folder given")
    out = Path(out)
    if out.is_dir():
        raise PlotError(f"{out}: is a folder; give the PNG's file name")
    names = run_names([Path(r) for r in runs])
    fig = draw_curves([read_run(r, n) for r, n in zip(runs, names)], dpi=dpi, columns=columns)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlotError(f"{out}: cannot make its folder ({exc.strerror or exc})") from None
    fig.savefig(out, format="png")
    return out


def draw_curves(curves: list[RunCurves], *, dpi: int = 100, columns: int = 3) -> Figure:
    """The figure of :func:`plot_runs`: a grid of ``columns`` panels per row, each 4.2 × 3.0 inches; in
    each panel, one line per run that has the key, labelled with the run's name."""
    keys = panel_keys(curves)
    cols = min(columns, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    colours = [f"C{i % 10}" for i in range(len(curves))]
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        low, high = math.inf, -math.inf
        for c, colour in zip(curves, colours):
            if key not in c.series:
                continue
            steps, values = c.series[key]
            ax.plot(steps, values, color=colour, label=c.name, marker="o" if len(steps) <= 30 else None,
                    markersize=2.5, linewidth=1.2)  # markers show where the logged points are on short runs
            finite = [v for v in values if math.isfinite(v)]
            low, high = min([low, *finite]), max([high, *finite])
        if key not in RATE_KEYS and not key.startswith("val/") and 0 < low and high > 10 * low:
            ax.set_yscale("log")  # a loss term falling over decades
        ax.set_title(TITLES.get(key, key), fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    return fig


__all__ = ["PlotError", "RunCurves", "draw_curves", "panel_keys", "plot_runs", "read_run", "run_names"]
