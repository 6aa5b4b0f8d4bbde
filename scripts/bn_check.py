"""BatchNorm and the canonical batch: does it matter whether the canonical forward writes the
running statistics? Measured on the validation split (never test).

Trains, for each seed of a finished demo folder, a CaDistill student with ``--canonical-bn update``
(the canonical forward writes BatchNorm's running statistics, the earlier behaviour) beside the
demo's own CaDistill student (``frozen``, the default: statistics of real images only), same bank,
seed, data order and schedule, and compares their last-epoch validation accuracy, paired per seed.

    python scripts/bn_check.py RUN_DIR [--out docs/runs/bn_check.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clarep_fast.pipeline.data.source import DataConfig  # noqa: E402
from clarep_fast.pipeline.distill.train import DistillConfig, train_student  # noqa: E402
from clarep_fast.pipeline.evaluate.statistics import paired_difference, t_interval  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/runs/bn_check.md"))
    args = parser.parse_args()
    seeds = sorted(int(p.name.rsplit("-s", 1)[1]) for p in args.run_dir.glob("cadistill-s*"))
    frozen, updating = [], []
    for seed in seeds:
        config = json.loads((args.run_dir / f"cadistill-s{seed}" / "config.json").read_text())
        distill = DistillConfig(
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in config.items()
                if k in {f.name for f in dataclasses.fields(DistillConfig)} and k != "data"
            }
        )
        distill = dataclasses.replace(
            distill,
            canonical_bn="update",
            data=DataConfig(**{k: v for k, v in config["data"].items() if k != "workers"}),
        )
        train_student(distill, args.run_dir / f"bn-update-s{seed}", progress=False)
        frozen.append(
            json.loads((args.run_dir / f"cadistill-s{seed}" / "metrics.json").read_text())[-1]["val_accuracy"]
        )
        updating.append(
            json.loads((args.run_dir / f"bn-update-s{seed}" / "metrics.json").read_text())[-1]["val_accuracy"]
        )
        print(f"seed {seed}: frozen {frozen[-1]:.4f}, update {updating[-1]:.4f}", flush=True)
    difference = paired_difference(frozen, updating)
    text = (
        f"# BatchNorm running statistics and the canonical batch (validation split)\n\n`python scripts/bn_check.py {args.run_dir}`: "
        f"{len(seeds)} seeds of the demo's CaDistill student, each beside a twin trained with `--canonical-bn update`.\n\n"
        f"| canonical forward | validation accuracy (%), mean ± 95% interval |\n|---|---|\n"
        f"| frozen (default: running statistics from real images only) | {t_interval(frozen).describe()} |\n"
        f"| update (the earlier behaviour) | {t_interval(updating).describe()} |\n\n"
        f"Frozen minus update, paired per seed: {difference.describe()} points "
        f"({'significant' if difference.significant else 'not significant'} at the 5% level). Per seed: "
        + ", ".join(f"{100 * a:.1f} vs {100 * b:.1f}" for a, b in zip(frozen, updating))
        + ".\n"
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
