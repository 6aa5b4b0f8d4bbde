"""The sensitivity table: CaDistill minus the ordinary-sample control, paired per seed, for each
search setting, scored on the validation split (settings are compared there, never on test).

    python scripts/sensitivity_report.py STUDY_DIR [--out docs/evidence/sensitivity]

STUDY_DIR holds one demo folder per setting (scripts/study.sh sensitivity writes them: k = 24, 96,
192, the random-direction control at k = 96, guidance 1.5; each demo with --split validation).
Reads each folder's config.json and evaluation.json; writes OUT/report.md (per setting and measure:
CaDistill minus its ordinary-sample control, and CaDistill minus CaDistill at the default k96;
mean ± 95% interval of the paired difference, * where it excludes 0, the smallest difference the
seeds could detect at 80% power), OUT/sensitivity.png (the same differences, one dot per seed)
and OUT/sensitivity.json (every per-seed value). A setting whose demo has not finished shows the
seeds it has.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clarep_fast.pipeline.demo.figures import difference_plot  # noqa: E402
from clarep_fast.pipeline.demo.report import paired_seeds, per_seed  # noqa: E402
from clarep_fast.pipeline.evaluate.statistics import (  # noqa: E402
    detectable_difference,
    holm_rejected,
    paired_p_value,
    t_interval,
)

MEASURES = ("clean", "only_foreground", "mixed_random", "swapped", "pgd20")
DEFAULT = "k96"  # the demo's defaults (k = 96, top directions, guidance 3.0): what the other settings are held against


def describe(folder: Path) -> str:
    """The setting a demo folder ran: its k, directions and guidance (from its config.json)."""
    search = json.loads((folder / "config.json").read_text())["search"]
    directions = "random directions (control)" if search["directions"] == "random" else "top directions"
    return f"k = {search['k']}, {directions}, guidance {search['guidance']}"


def cell(values: list[float]) -> str:
    """mean ± 95% interval of paired differences, * where it excludes 0, (≥ smallest detectable)."""
    if not values:
        return "–"
    difference, smallest = t_interval(values), detectable_difference(values)
    return (
        difference.describe()
        + (" *" if difference.significant else "")
        + (f" (≥ {100 * smallest:.1f})" if smallest is not None else "")
    )


def holm_sentence(tests: dict[str, list[float]]) -> str:
    """What of a table survives Holm's correction over all its cells (5% family-wise)."""
    p_values = {name: p for name, values in tests.items() if (p := paired_p_value(values)) is not None}
    rejected = set(holm_rejected(p_values))
    kept = [name for name in p_values if name in rejected]  # in the table's order
    return (
        f"Over the table's {len(p_values)} differences with Holm's correction (5% chance of any false finding): "
        + ("still significant: " + ", ".join(kept) if kept else "none is significant")
        + "."
    )


def against_default(results: dict, default: dict, measure: str) -> list[float]:
    """CaDistill at this setting minus CaDistill at the default setting, per student seed (the same
    initial weights and data order; the banks differ by the setting alone: same search seed)."""
    here, there = per_seed(results, "cadistill", measure), per_seed(default, "cadistill", measure)
    return [here[seed] - there[seed] for seed in here if seed in there]


def read_folder(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    if config["evaluate"]["split"] != "validation":
        raise SystemExit(f"{folder} was scored on {config['evaluate']['split']}: settings are compared on validation")
    return json.loads((folder / "evaluation.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/evidence/sensitivity"))
    args = parser.parse_args()
    folders = sorted(p for p in args.study_dir.iterdir() if (p / "evaluation.json").exists())
    if not folders:
        raise SystemExit(f"no demo folder with evaluation.json under {args.study_dir}")
    results = {folder.name: read_folder(folder) for folder in folders}
    default = results.get(DEFAULT)
    control_rows, default_rows, payload, picture = [], [], {}, {}
    control_tests, default_tests = {}, {}
    for folder in folders:
        here = results[folder.name]
        entry = {"setting": describe(folder), "per_seed": {}}
        for measure in MEASURES:
            entry["per_seed"][measure] = {
                kind: per_seed(here, kind, measure) for kind in ("baseline", "ordinary", "cadistill")
            }
        seeds = len(per_seed(here, "cadistill", "clean"))
        start = f"| {folder.name} | {entry['setting']} | {seeds} | "
        control_rows.append(start + " | ".join(cell(paired_seeds(here, m, "ordinary")) for m in MEASURES) + " |")
        picture[f"{folder.name} − its ordinary"] = {m: paired_seeds(here, m, "ordinary") for m in MEASURES}
        control_tests.update({f"{folder.name} {m}": paired_seeds(here, m, "ordinary") for m in MEASURES})
        if default is not None and folder.name != DEFAULT:
            default_rows.append(start + " | ".join(cell(against_default(here, default, m)) for m in MEASURES) + " |")
            picture[f"{folder.name} − {DEFAULT}"] = {m: against_default(here, default, m) for m in MEASURES}
            default_tests.update({f"{folder.name} {m}": against_default(here, default, m) for m in MEASURES})
        payload[folder.name] = entry
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sensitivity.json").write_text(json.dumps(payload, indent=1))
    difference_plot(picture, args.out / "sensitivity.png", "CaDistill, paired per seed, validation split")
    header = ["| folder | setting | seeds | " + " | ".join(MEASURES) + " |", "|---|---|---:|" + "---|" * len(MEASURES)]
    lines = [
        "# Sensitivity of CaDistill to the search settings (validation split)",
        "",
        "Points, paired per seed; mean ± 95% interval over seeds, * where the interval excludes 0, in brackets the"
        " smallest difference these seeds could detect with 80% power. Per-seed values: sensitivity.json.",
        "",
        "## CaDistill minus the ordinary-sample control at the same setting",
        "",
        "The same initial weights, data order and x_{t_e}: the difference is the canonical projection alone.",
        "",
        *header,
        *control_rows,
        "",
        holm_sentence(control_tests),
        "",
        "![paired differences per setting](sensitivity.png)",
    ]
    if default_rows:
        lines += [
            "",
            f"## CaDistill at each setting minus CaDistill at the default ({DEFAULT}: {describe(args.study_dir / DEFAULT)})",
            "",
            "The same student seeds, and banks searched with the same search seed: the difference is the setting"
            " alone. The random-direction row is the control for choosing the top directions.",
            "",
            *header,
            *default_rows,
            "",
            holm_sentence(default_tests),
        ]
    text = "\n".join(lines + [""])
    (args.out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
