"""Choose the feature time t_f of the cached canonical features, on the validation split.

The bank's features are the teacher's null-label features of samples re-noised to t_f. Which t_f
gives features that describe an image's content? Measured on real images whose content is known:
the validation split (never test), each image re-noised to t_f with a fixed noise draw and tapped
with the null label; the score is the NMI of k-means on those features against the class (the
interpretability measure of the bank, on real images). Too small a t_f gives features of a network
asked to denoise an almost clean image; too large a t_f drowns the content in noise.
Beside it, why the label must be null: the same NMI on features of pure Gaussian noise (no image at
all) at t = 600, tapped with the true label, the null label and shuffled labels.

    python scripts/feature_time.py [--teacher default] [--out docs/runs/clarid/feature_time.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clarep_fast.pipeline.clarid.clustering import feature_nmi  # noqa: E402
from clarep_fast.pipeline.clarid.config import SearchConfig  # noqa: E402
from clarep_fast.pipeline.clarid.setup import with_layers  # noqa: E402
from clarep_fast.pipeline.data.source import DataConfig, load_splits, resolve  # noqa: E402
from clarep_fast.pipeline.teacher.load import load_teacher  # noqa: E402
from clarep_fast.taps import FeatureTap  # noqa: E402

TIMES = (0, 25, 50, 100, 200, 300, 400, 600)


def standardized(features: torch.Tensor) -> torch.Tensor:
    features = features.double()
    return (features - features.mean(0)) / features.std(0).clamp_min(1e-8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="default")
    parser.add_argument("--data", default="default")
    parser.add_argument("--out", type=Path, default=Path("docs/runs/clarid/feature_time.md"))
    args = parser.parse_args()
    teacher = load_teacher(args.teacher).requires_grad_(False)
    data = DataConfig(dataset=args.data)
    val = load_splits(data, resolve(data, teacher.resolution))["val"]
    layers = with_layers(SearchConfig(), teacher).feature_layers  # the search's default for this teacher
    tap = FeatureTap(teacher.denoiser, list(layers), pool=SearchConfig().feature_pool)
    images = val.take(torch.arange(len(val)))
    clean = teacher.encode(images * 2 - 1)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    null = torch.full_like(val.labels, teacher.num_classes)
    rows = []
    for t in TIMES:
        alpha = teacher.schedule.alpha_bar(t)
        with torch.no_grad():
            found = tap(alpha**0.5 * clean + (1 - alpha) ** 0.5 * noise, torch.full_like(val.labels, t), null).features
        scores = {layer: feature_nmi(found[layer].flatten(1), val.labels) for layer in layers}
        together = torch.cat([standardized(found[layer].flatten(1)) for layer in layers], 1)
        scores["all layers"] = feature_nmi(together, val.labels)
        rows.append((t, scores))
        print(t, {k: round(v, 3) for k, v in scores.items()}, flush=True)
    best = max(rows, key=lambda row: row[1]["all layers"])[0]
    pure = torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    shuffled = val.labels[torch.randperm(len(val), generator=torch.Generator().manual_seed(2))]
    leak = {}
    for name, shown in (("true label", val.labels), ("null label", null), ("shuffled labels", shuffled)):
        with torch.no_grad():
            found = tap(pure, torch.full_like(val.labels, 600), shown).features
        leak[name] = feature_nmi(found["mid_block"].flatten(1), val.labels)
    print("pure noise at t = 600:", leak)
    names = list(rows[0][1])
    lines = ["| t_f | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {t} | " + " | ".join(f"{scores[n]:.3f}" for n in names) + " |" for t, scores in rows]
    text = (
        f"# Feature time t_f, chosen on the validation split\n\n`python scripts/feature_time.py` (teacher {args.teacher}, data {args.data}, "
        f"{len(val)} validation images, null label, features pooled {SearchConfig().feature_pool}×{SearchConfig().feature_pool}, one fixed noise draw). "
        f"NMI of k-means on the teacher's features of real validation images re-noised to t_f, against their class:\n\n"
        + "\n".join(lines)
        + f"\n\nHighest on all layers together: t_f = {best}.\n\n"
        f"Why the null label: NMI of k-means on `mid_block` features of *pure Gaussian noise* at t = 600 (no image at all) against the "
        f"validation labels, the network shown the true label {leak['true label']:.3f}, the null label {leak['null label']:.3f}, "
        f"shuffled labels {leak['shuffled labels']:.3f}: with the true label the features cluster by the label input alone.\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
