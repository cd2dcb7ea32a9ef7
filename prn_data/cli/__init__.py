"""``prn`` console command. Importing this package registers every command module on the app."""

from __future__ import annotations

import sys

from .app import app, console

# Each module registers its commands on `app`; keep the list in data-path order.
from . import datasets as _datasets  # noqa: F401,E402
from . import build as _build  # noqa: F401,E402
from . import base as _base  # noqa: F401,E402
from . import inspect as _inspect  # noqa: F401,E402
from . import share as _share  # noqa: F401,E402
from . import train as _train  # noqa: F401,E402
from . import evaluate as _evaluate  # noqa: F401,E402
from . import demo as _demo  # noqa: F401,E402


def main() -> None:
    """Entry point: run the app, printing prn's own errors as one line (no traceback), exit status 2."""
    from ..errors import PrnError

    try:
        app()
    except PrnError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)


__all__ = ["app", "main"]
