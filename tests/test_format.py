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


def test_clang_format():
    """csrc/ is formatted by clang-format under .clang-format (requirements.txt pins the tool)."""
    tool = Path(sys.executable).parent / "clang-format"
    if not tool.exists():
        pytest.skip("clang-format is in requirements.txt; scripts/setup.sh installs it")
    sources = subprocess.run(
        ["git", "ls-files", "csrc/*.h", "csrc/*.cpp", "csrc/*.cu", "csrc/*.cuh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert sources, "git ls-files found no csrc/ sources"
    completed = subprocess.run([str(tool), "--dry-run", "--Werror", *sources], cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, f"run `clang-format -i` on csrc/:\n{completed.stderr[-3000:]}"
