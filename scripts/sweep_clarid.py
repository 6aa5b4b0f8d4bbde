"""How t_e and k shape the CLAReps of a teacher: the measurement behind the search defaults.

    python scripts/sweep_clarid.py [--count 60] [--out docs/runs/clarid]
    python scripts/sweep_clarid.py --teacher default-dit -k 24 48 96 192 --out runs/clarid-dit
    python scripts/sweep_clarid.py --teacher default-dit -k 96 --layers transformer_blocks.0 transformer_blocks.1

For each (t_e, k, rescale) (the settings below, or t_e 600 with rescale at each -k, at each of
--layers: the search layer; the feature layers stay the teacher's auto ones, so the NMI columns
compare) it runs a small search and reports, for canonical vs ordinary samples of
the same starting latents: class-consistency under the quality-gate judge (trained on real digits
with class-independent backgrounds), the within-class background-color spread, and the NMI of
k-means on the teacher's features (all cached layers). Writes OUT/sweep.md and OUT/sweep.json.
"""

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clarep_fast.pipeline.clarid import SearchConfig, load_bank, run_search  # noqa: E402
from clarep_fast.pipeline.teacher.quality import train_judge  # noqa: E402

SETTINGS = [
    (600, 24, True),
    (600, 8, True),
    (600, 48, True),
    (600, 96, True),
    (500, 24, True),
    (500, 48, True),
    (700, 24, True),
    (600, 48, False),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("docs/runs/clarid"))
    parser.add_argument("--teacher", default="default", help="a --teacher value of search")
    parser.add_argument("-k", type=int, nargs="+", default=None, help="sweep only k (t_e 600, rescale)")
    parser.add_argument("--layers", nargs="+", default=["auto"], help="search layers to sweep (each pooled 2×2)")
    args = parser.parse_args()
    settings = SETTINGS if args.k is None else [(600, k, True) for k in args.k]
    settings = [(t_e, k, rescale, layer) for layer in args.layers for t_e, k, rescale in settings]
    judge, judge_accuracy = train_judge()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for t_e, k, rescale, layer in settings:
            config = dataclasses.replace(
                SearchConfig(teacher=args.teacher),
                t_e=t_e,
                k=k,
                rescale=rescale,
                layer=layer,
                count=args.count,
                shard_size=args.count,
            )
            bank_dir = run_search(config, Path(tmp) / f"t{t_e}-k{k}-{rescale}-{layer}", progress=False)
            bank = load_bank(bank_dir)
            summary = json.loads((bank_dir / "summary.json").read_text())
            with torch.no_grad():
                consistency = {
                    kind: float((judge((images.clamp(-1, 1) + 1) / 2).argmax(1) == bank.classes).float().mean())
                    for kind, images in (("ordinary", bank.ordinary_samples), ("canonical", bank.samples))
                }
            layer = bank.config["layer"]
            row = {"t_e": t_e, "k": k, "rescale": rescale, "consistency": consistency, "background_spread": summary["background_spread"],
                   "nmi_all_layers": summary["nmi"]["all layers"], "seconds": summary["search_seconds_rank0"], "layer": layer}  # fmt: skip
            print(row, flush=True)
            rows.append(row)
    lines = [f"Teacher {args.teacher}. Judge accuracy on real test digits: {judge_accuracy}. {args.count} CLAReps per setting "
             f"(generative route, guidance 3, 30 DDIM steps, search layer pooled 2×2); each cell is ordinary → canonical.", "",
             "| layer | t_e | k | rescale | class-consistency | background spread | NMI (all layers) | search s |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        c, b, n = row["consistency"], row["background_spread"], row["nmi_all_layers"]
        lines.append(
            f"| {row['layer']} | {row['t_e']} | {row['k']} | {row['rescale']} | {c['ordinary']:.3f} → {c['canonical']:.3f} | "
            f"{b['ordinary']:.3f} → {b['canonical']:.3f} | {n['ordinary']:.3f} → {n['canonical']:.3f} | {row['seconds']:.0f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.md").write_text("\n".join(lines) + "\n")
    (args.out / "sweep.json").write_text(json.dumps({"judge_accuracy": judge_accuracy, "rows": rows}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
