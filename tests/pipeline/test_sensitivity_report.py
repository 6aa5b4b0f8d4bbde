"""scripts/sensitivity_report.py against hand-made demo folders: both paired tables and the refusal
of a setting scored on test."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def write_setting(folder: Path, k: int, directions: str, values: dict, split: str = "validation") -> None:
    """A finished demo folder: config.json with the search setting, evaluation.json with ``values``
    (kind -> per-seed clean accuracies)."""
    folder.mkdir(parents=True)
    config = {"search": {"k": k, "directions": directions, "guidance": 3.0}, "evaluate": {"split": split}}
    (folder / "config.json").write_text(json.dumps(config))
    results = {
        f"{kind}-s{seed}": {"clean": value} for kind, seeds in values.items() for seed, value in enumerate(seeds)
    }
    (folder / "evaluation.json").write_text(json.dumps(results))


def run_report(study: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts/sensitivity_report.py"), str(study), "--out", str(out)],
        capture_output=True,
        text=True,
    )


def test_the_report_pairs_each_setting_with_its_control_and_with_the_default(tmp_path):
    study = tmp_path / "sensitivity"
    # default: CaDistill beats its ordinary control by exactly 2 points on every seed
    write_setting(study / "k96", 96, "top", {"ordinary": [0.80, 0.70, 0.90], "cadistill": [0.82, 0.72, 0.92]})
    # random directions: 1 point above its control, and 1 point below the default's CaDistill
    write_setting(study / "random96", 96, "random", {"ordinary": [0.80, 0.70, 0.90], "cadistill": [0.81, 0.71, 0.91]})
    result = run_report(study, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    control, default = report.split("## CaDistill at each setting minus CaDistill at the default")
    assert "| k96 | k = 96, top directions, guidance 3.0 | 3 | 2.0 ± 0.0 *" in control
    assert "| random96 | k = 96, random directions (control), guidance 3.0 | 3 | 1.0 ± 0.0 *" in control
    assert "Holm's correction" in control and "still significant: k96 clean, random96 clean." in control
    assert "| random96 |" in default and "-1.0 ± 0.0 *" in default and "| k96 |" not in default
    per_seed = json.loads((tmp_path / "out" / "sensitivity.json").read_text())
    assert per_seed["random96"]["per_seed"]["clean"]["cadistill"] == {"0": 0.81, "1": 0.71, "2": 0.91}


def test_a_setting_scored_on_test_is_refused_by_name(tmp_path):
    study = tmp_path / "sensitivity"
    write_setting(study / "k24", 24, "top", {"ordinary": [0.8, 0.7], "cadistill": [0.8, 0.7]}, split="test")
    result = run_report(study, tmp_path / "out")
    assert result.returncode != 0 and "k24 was scored on test" in result.stderr
    assert not (tmp_path / "out").exists()
