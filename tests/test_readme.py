"""The README stays true: its CLI reference is the one the app generates, and CI runs its test command."""

from __future__ import annotations

import re

from conftest import REPO
from prn_model.cli.reference import cli_reference, embed


def test_cli_reference_in_readme_is_current():
    readme = (REPO / "README.md").read_text()
    assert embed(readme, cli_reference()) == readme, (
        "README's CLI reference is stale: run `.venv/bin/python -m prn_model.cli.reference --write README.md`"
    )


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_cmd = next(b for b in blocks if "pytest" in b)
    demo_cmd = next(b for b in blocks if "prn demo" in b)
    ci = (REPO / ".ci" / "run").read_text()
    assert test_cmd.strip() in ci.splitlines()
    assert demo_cmd.startswith("bash scripts/setup.sh")
