"""The demo's pictures: the students' loss curves and the paired differences, one dot per seed.

The difference plot has a panel per measure; each row is one comparison (CaDistill minus a
control, or one setting minus another), drawn as its per-seed paired differences (dots), their
mean and its 95% t interval (bar), against the line at 0: the report's difference table as a
picture, where a reader sees at once which intervals clear 0 and how far the seeds scatter.
"""

from __future__ import annotations

from pathlib import Path

from clarep_fast.pipeline.evaluate.statistics import t_interval
from clarep_fast.pipeline.files import read_json, save_figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curves(runs: dict[str, Path], path: Path) -> None:
    """Per-epoch losses and validation accuracy of the students in ``runs`` (name -> folder)."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for name, run in runs.items():
        history = read_json(
            run / "metrics.json", "a student's per-epoch metrics", "delete the student's folder and rerun the demo"
        )
        epochs = [r["epoch"] for r in history]
        style = {"baseline": "--", "ordinary": ":"}.get(name.rsplit("-s", 1)[0], "-")
        left.plot(epochs, [r["ce"] for r in history], style, label=f"{name}: CE")
        if not name.startswith("baseline"):
            for term in ("align", "cano", "dist"):
                left.plot(epochs, [r[term] for r in history], style, label=f"{name}: {term}")
        right.plot(epochs, [100 * r["val_accuracy"] for r in history], style, label=name)
    left.set_xlabel("epoch"), left.set_ylabel("loss (epoch mean)"), left.legend(fontsize=7)
    right.set_xlabel("epoch"), right.set_ylabel("validation accuracy (%)"), right.legend(fontsize=7)
    save_figure(path, figure)


def difference_plot(rows: dict[str, dict[str, list[float]]], path: Path, title: str) -> None:
    """``rows``: comparison label -> measure -> its per-seed paired differences (fractions); drawn
    in points, one panel per measure, a row per comparison (top to bottom in the given order)."""
    plt = _pyplot()
    measures = list(dict.fromkeys(measure for row in rows.values() for measure in row))
    labels = list(rows)
    lines = -(-len(measures) // 4)  # at most four panels a line, the lines filled evenly
    columns = -(-len(measures) // lines)
    figure, axes = plt.subplots(
        lines, columns, figsize=(3.2 * columns, 0.6 + max(1.6, 0.45 * len(labels)) * lines), sharey=True, squeeze=False
    )
    for index, axis in enumerate(axes.flat):
        if index >= len(measures):
            axis.set_visible(False)
            continue
        measure = measures[index]
        for position, label in enumerate(labels):
            values = [100 * v for v in rows[label].get(measure, [])]
            y = len(labels) - 1 - position
            if not values:
                continue
            axis.plot(values, [y] * len(values), "o", color="0.6", markersize=3)
            interval = t_interval(values)
            error = None if interval.half_width is None else interval.half_width
            color = "C3" if interval.significant else "C0"
            axis.errorbar(interval.mean, y, xerr=error, fmt="D", color=color, capsize=3, markersize=5)
        axis.axvline(0.0, color="k", linewidth=0.8)
        axis.set_ylim(-0.6, len(labels) - 0.4)
        axis.set_title(measure, fontsize=9)
        axis.set_xlabel("points", fontsize=8)
        axis.set_yticks(range(len(labels)), labels[::-1], fontsize=8)
        axis.tick_params(axis="x", labelsize=8)
    figure.suptitle(title + " (dots: seeds; bar: mean ± 95% interval, red where it excludes 0)", fontsize=9)
    figure.tight_layout()
    save_figure(path, figure)
