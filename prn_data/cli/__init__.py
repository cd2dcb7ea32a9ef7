"""The data commands of ``prn``. Importing this package registers every data command module on :data:`app`.

The ``prn`` console command (:func:`prn_model.cli.main`) joins these commands with the model's; :func:`main`
here runs the data commands alone (no torch is imported).
"""

from __future__ import annotations

from .app import app, run

# Each module registers its commands on `app`; keep the list in data-path order.
from . import datasets as _datasets  # noqa: F401,E402
from . import build as _build  # noqa: F401,E402
from . import base as _base  # noqa: F401,E402
from . import inspect as _inspect  # noqa: F401,E402
from . import share as _share  # noqa: F401,E402
from . import pq as _pq  # noqa: F401,E402


def main() -> None:
    """Entry point of the data commands alone (see :func:`prn_data.cli.app.run`)."""
    run(app)


__all__ = ["app", "main"]
