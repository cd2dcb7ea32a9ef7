"""What a training run reports as it goes (README "Training", "Watching training"), written by rank 0.

``metrics.jsonl`` and ``val.jsonl`` are the source of truth (``prn plot`` and any script read them); the same
figures also go, as one plain line each, to ``log.txt`` in the run folder (always) and to stdout when the
rich progress bar cannot be seen (stdout or the console not a terminal: a cluster job writing to files),
and, with ``tensorboard: true``, to TensorBoard event files in ``RUN/tensorboard`` (tags ``train/<key>``
and ``val/<key>``, the step as TensorBoard's step).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from prn_data.errors import PrnError

TENSORBOARD_DIR = "tensorboard"
LOG_FILE = "log.txt"


class TensorBoardMissing(PrnError):
    """``tensorboard: true`` but the tensorboard package is not installed."""


def tensorboard_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``; :class:`TensorBoardMissing` (one line saying what to
    install) when the optional tensorboard package is absent. Imported here, not at module level, since the
    package is an optional extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TensorBoardMissing("tensorboard: true (--tensorboard) needs the tensorboard package: "
                                 "pip install 'prn[tensorboard]' (or pip install tensorboard)") from None
    return SummaryWriter


def _number(v: float) -> str:
    return f"{v:.4g}"


def format_metrics(record: dict[str, Any], total: int) -> str:
    """One ``metrics.jsonl`` record as a plain line: ``step 20/1000  loss 1.234  semantic 0.5 … lr 0.001
    12.3 samples/s  wait 3%`` (every loss term, in the record's order)."""
    parts = [f"step {record['step']}/{total}"]
    for key, value in record.items():
        if key in ("step", "lr", "samples_per_s", "data_wait") or not isinstance(value, (int, float)):
            continue
        parts.append(f"{key} {_number(value)}")
    if "lr" in record:
        parts.append(f"lr {record['lr']:.3g}")
    if "samples_per_s" in record:
        parts.append(f"{record['samples_per_s']:.1f} samples/s")
    if "data_wait" in record:
        parts.append(f"wait {100 * record['data_wait']:.0f}%")
    return "  ".join(parts)


def format_validation(record: dict[str, Any], total: int) -> str:
    """One ``val.jsonl`` record as a plain line: ``step 20/1000  validation  pq 45.2  sq 78.1 …``."""
    figures = [f"{k} {v:.2f}" for k, v in record.items()
               if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return "  ".join([f"step {record['step']}/{total}", "validation", *figures])


class RunLog:
    """Rank 0's writer of a run's progress (module docstring). ``start``: the first step of this process's
    steps (a resumed run's checkpoint step: TensorBoard drops its events after it, as the trainer drops
    later metrics lines). ``echo``: also print each line to ``stream`` (stdout)."""

    def __init__(self, out: str | Path, *, total: int, start: int = 0, echo: bool = False,
                 tensorboard: bool = False, stream: TextIO | None = None):
        self.out = Path(out)
        self.total = total
        self.echo = echo
        self.stream = stream
        writer_class = tensorboard_writer_class() if tensorboard else None
        self.log_path = self.out / LOG_FILE
        # a new run starts a new log.txt (a folder a run left before its first step may hold one); a
        # resumed run appends, marked
        self._log = self.log_path.open("a" if start else "w")
        self.note(f"resumed at step {start}/{total}" if start else f"started: {total} steps")
        self.writer = None
        if writer_class is not None:
            self.writer = writer_class(log_dir=str(self.out / TENSORBOARD_DIR), purge_step=start or None)

    def note(self, text: str) -> None:
        """A plain line (time-stamped) to ``log.txt`` and, with ``echo``, stdout."""
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {text}"
        self._log.write(line + "\n")
        self._log.flush()
        if self.echo:
            stream = self.stream or sys.stdout
            stream.write(line + "\n")
            stream.flush()

    def metrics(self, record: dict[str, Any]) -> None:
        """Append ``record`` (a logged step's figures) to ``metrics.jsonl``, then report it."""
        _append_jsonl(self.out / "metrics.jsonl", record)
        self.note(format_metrics(record, self.total))
        self._scalars("train", record)

    def validation(self, record: dict[str, Any]) -> None:
        """Append ``record`` (a validation's figures, with ``step``) to ``val.jsonl``, then report it."""
        _append_jsonl(self.out / "val.jsonl", record)
        self.note(format_validation(record, self.total))
        self._scalars("val", record)

    def _scalars(self, group: str, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{group}/{key}", value, global_step=record["step"])
        self.writer.flush()

    def close(self) -> None:
        self._log.close()
        if self.writer is not None:
            self.writer.close()


def _append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


__all__ = [
    "LOG_FILE",
    "RunLog",
    "TENSORBOARD_DIR",
    "TensorBoardMissing",
    "format_metrics",
    "format_validation",
    "tensorboard_writer_class",
]
