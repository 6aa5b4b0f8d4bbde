"""The sensitivity table: CaDistill minus the ordinary-sample control, paired per seed, for each
search setting, scored on the validation split (settings are compared there, never on test).

    python scripts/sensitivity_report.py STUDY_DIR [--out docs/evidence/sensitivity]

STUDY_DIR holds one demo folder per setting (scripts/study.sh sensitivity writes them: k = 24, 96,
192, the random-direction control at k = 96, guidance 1.5; each demo with --split validation).
Reads each folder's config.json and evaluation.json; writes OUT/report.md (per setting and measure:
mean ± 95% interval of the paired difference, * where it excludes 0, the smallest difference the
seeds could detect at 80% power) and OUT/sensitivity.json (every per-seed value). A setting whose
demo has not finished shows the seeds it has.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clarep_fast.pipeline.demo.report import paired_seeds, per_seed  # noqa: E402
from clarep_fast.pipeline.evaluate.statistics import detectable_difference, t_interval  # noqa: E402

MEASURES = ("clean", "only_foreground", "mixed_random", "swapped")


def describe(folder: Path) -> str:
    """The setting a demo folder ran: its k, directions and guidance (from its config.json)."""
    search = json.loads((folder / "config.json").read_text())["search"]
    directions = "random directions (control)" if search["directions"] == "random" else "top directions"
    return f"k = {search['k']}, {directions}, guidance {search['guidance']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/evidence/sensitivity"))
    args = parser.parse_args()
    folders = sorted(p for p in args.study_dir.iterdir() if (p / "evaluation.json").exists())
    if not folders:
        raise SystemExit(f"no demo folder with evaluation.json under {args.study_dir}")
    table, payload = [], {}
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        if config["evaluate"]["split"] != "validation":
            raise SystemExit(
                f"{folder} was scored on {config['evaluate']['split']}: settings are compared on validation"
            )
        results = json.loads((folder / "evaluation.json").read_text())
        cells, entry = [], {"setting": describe(folder), "per_seed": {}}
        for measure in MEASURES:
            values = paired_seeds(results, measure, "ordinary")
            difference = t_interval(values) if values else None
            smallest = detectable_difference(values)
            cells.append(
                "–"
                if difference is None
                else difference.describe()
                + (" *" if difference.significant else "")
                + (f" (≥ {100 * smallest:.1f})" if smallest is not None else "")
            )
            entry["per_seed"][measure] = {
                kind: per_seed(results, kind, measure) for kind in ("baseline", "ordinary", "cadistill")
            }
        seeds = len(per_seed(results, "cadistill", "clean"))
        table.append(f"| {folder.name} | {entry['setting']} | {seeds} | " + " | ".join(cells) + " |")
        payload[folder.name] = entry
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sensitivity.json").write_text(json.dumps(payload, indent=1))
    header = "| folder | setting | seeds | " + " | ".join(MEASURES) + " |"
    text = "\n".join(
        [
            "# Sensitivity of CaDistill to the search settings (validation split)",
            "",
            "CaDistill minus the ordinary-sample control (points, paired per seed: the same initial weights, data"
            " order and x_{t_e}); mean ± 95% interval over seeds, * where the interval excludes 0, in brackets the"
            " smallest difference these seeds could detect with 80% power. Per-seed values: sensitivity.json.",
            "",
            header,
            "|---|---|---:|" + "---|" * len(MEASURES),
            *table,
            "",
        ]
    )
    (args.out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
