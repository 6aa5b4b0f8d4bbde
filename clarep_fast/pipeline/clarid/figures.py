"""Pictures and interpretability figures of a CLARep bank.

canonical.png  one row per class: ordinary CFG samples (left) beside the canonical samples of the
               same starting latents (right)
nmi.png        the paper's interpretability measure: NMI of k-means on the teacher's cached features of
               canonical vs ordinary samples, per tapped layer, and the same on the samples' raw
               pixels (an independent feature: the teacher is not judge of itself); beside it the
               within-class spread of the background color (irrelevant on the default dataset).
The teacher features are content features (samples re-noised to t_f, null label) unless the bank
was built with feature_label = true or feature_from = latent: then the figure says that they read
the label input, so their NMI says little about the images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from clarep_fast.pipeline.clarid.bank import load_bank
from clarep_fast.pipeline.clarid.clustering import background_spread, feature_nmi
from clarep_fast.pipeline.files import save_figure

PER_CLASS = 6
MAX_CLASSES = 12  # rows of canonical.png: the first classes of a large label set


def class_picture(samples: torch.Tensor, ordinary: torch.Tensor, classes: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    labels = classes.unique().tolist()[:MAX_CLASSES]
    rows = []
    for label in labels:
        members = (classes == label).nonzero().flatten()[:PER_CLASS]
        pad = PER_CLASS - len(members)
        left = torch.cat([ordinary[members], torch.ones(pad, *ordinary.shape[1:])])
        right = torch.cat([samples[members], torch.ones(pad, *samples.shape[1:])])
        rows.append(torch.cat([left, torch.ones(1, *samples.shape[1:]), right]))  # a white gap between halves
    grid = make_grid(torch.cat(rows).clamp(0, 1), nrow=2 * PER_CLASS + 1, padding=1, pad_value=1.0)
    figure, axis = plt.subplots(figsize=(8, 0.65 * len(labels) + 0.6))
    axis.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    axis.set_xticks(
        [grid.shape[2] * 0.25, grid.shape[2] * 0.75], ["ordinary CFG samples", "canonical samples (CLAReps)"]
    )
    step = grid.shape[1] / len(labels)
    axis.set_yticks([step * (i + 0.5) for i in range(len(labels))], [f"class {label}" for label in labels])
    axis.tick_params(length=0)
    save_figure(path, figure)


def feature_description(config: dict) -> str:
    """What the bank's cached teacher features are, in words (for figures and reports)."""
    label = config.get("feature_label", "true")
    if config.get("feature_from", "latent") == "latent":
        where = f"the projected latent at t_e = {config['t_e']}"
    else:
        where = f"the samples re-noised to t_f = {config['feature_time']}"
    reads = "null label: content only" if label == "null" else "TRUE label: they read the label input"
    return f"teacher features of {where} ({reads})"


def nmi_figure(scores: dict[str, dict[str, float]], spread: dict[str, float], path: Path, description: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [3, 1]})
    positions = torch.arange(len(names)).float()
    left.bar(positions - 0.2, [scores[n]["ordinary"] for n in names], 0.4, label="ordinary samples")
    left.bar(positions + 0.2, [scores[n]["canonical"] for n in names], 0.4, label="canonical samples")
    left.set_xticks(positions.tolist(), names, rotation=15)
    left.set_ylabel("NMI (k-means vs class)")
    left.set_ylim(0, 1)
    left.legend(loc="lower right", framealpha=0.9)
    left.set_title(description, fontsize=9)
    # None: too few per class
    right.bar([0, 1], [spread["ordinary"] or 0.0, spread["canonical"] or 0.0], color=["C0", "C1"])
    right.set_xticks([0, 1], ["ordinary", "canonical"])
    right.set_title("background color spread\nwithin a class")
    save_figure(path, figure)


def write_bank_figures(bank_dir: str | Path) -> dict:
    """Write canonical.png and nmi.png into the bank folder; return the measured numbers."""
    bank_dir = Path(bank_dir)
    bank = load_bank(bank_dir)
    class_picture(bank.samples, bank.ordinary_samples, bank.classes, bank_dir / "canonical.png")
    scores = {}
    for layer in bank.features:
        scores[layer] = {"ordinary": feature_nmi(bank.ordinary_features[layer], bank.classes),
                         "canonical": feature_nmi(bank.features[layer], bank.classes)}  # fmt: skip
    together = {
        kind: torch.cat([(f - f.mean(0)) / f.std(0).clamp_min(1e-8) for f in source.values()], 1)
        for kind, source in (("ordinary", bank.ordinary_features), ("canonical", bank.features))
    }
    scores["all layers"] = {kind: feature_nmi(features, bank.classes) for kind, features in together.items()}
    scores["pixels (independent)"] = {"ordinary": feature_nmi(bank.ordinary_samples.flatten(1), bank.classes),
                                      "canonical": feature_nmi(bank.samples.flatten(1), bank.classes)}  # fmt: skip
    spread = {
        "ordinary": background_spread(bank.ordinary_samples, bank.classes),
        "canonical": background_spread(bank.samples, bank.classes),
    }
    description = feature_description(bank.config)
    nmi_figure(scores, spread, bank_dir / "nmi.png", description)
    return {"count": len(bank.classes), "nmi": scores, "nmi_features": description, "background_spread": spread,
            "mean_iterations": float(bank.iterations.float().mean()),
            "top_singular_value_mean": float(bank.singular_values[:, 0].mean())}  # fmt: skip
