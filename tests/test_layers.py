"""The layers run one way (prn_data never imports prn_model), no library module imports a CLI module, and
there is no import cycle: ``scripts/imports.py`` checks all three from the source and exits 0."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_imports_follow_the_layers():
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "imports.py")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
