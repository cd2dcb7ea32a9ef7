"""The ``prn`` console command: the data commands (:mod:`prn_data.cli`) and the model commands (train,
evaluate, refine, plot, demo). Importing this package registers every model command module on :data:`app`."""

from __future__ import annotations

from prn_data.cli.app import run

from .app import app

# Each module registers its commands on `app`, after the data commands.
from . import train as _train  # noqa: F401,E402
from . import evaluate as _evaluate  # noqa: F401,E402
from . import refine as _refine  # noqa: F401,E402
from . import vis as _vis  # noqa: F401,E402
from . import plot as _plot  # noqa: F401,E402
from . import demo as _demo  # noqa: F401,E402


def main() -> None:
    """Entry point of ``prn``: run the app, printing prn's own errors as one line (no traceback), exit
    status 2."""
    run(app)


__all__ = ["app", "main"]
