"""The tree stays formatted and lint-clean under the project's ruff settings (pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", [["format", "--check"], ["check"]], ids=["format", "lint"])
def test_ruff(command):
    pytest.importorskip("ruff", reason="ruff is in requirements.txt; scripts/setup.sh installs it")
    completed = subprocess.run([sys.executable, "-m", "ruff", *command, "."], cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, (
        f"ruff {' '.join(command)}: run `ruff format .` / `ruff check .`\n{completed.stdout[-3000:]}"
    )
