"""A picture of a results table: fused vs eager and fused vs torch.compile, one bar pair per row.

Ratios above 1 (right of the line) mean the fused path is faster. Called by benchmarks/run.py;
the README shows the PNG beside its table.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path


def write_plot(records: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    groups: dict[tuple, dict[str, float]] = defaultdict(dict)
    for record in records:
        groups[(record["op"], record["shape"], record["mode"], record["dtype"])][record["provider"]] = record["p50_ms"]
    # that row's columns mean base/terms: NOTES.md
    rows = [
        (
            f"{op} | {shape} | {mode} | {dtype}",
            times["eager"] / times["fused"],
            times.get("compile", 0) / times["fused"],
        )
        for (op, shape, mode, dtype), times in groups.items()
        if "fused" in times and "eager" in times and op != "cadistill_step"
    ]
    if not rows:
        return
    figure, axis = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.2))
    positions = list(range(len(rows)))
    axis.barh([p + 0.2 for p in positions], [r[1] for r in rows], 0.4, label="eager / fused")
    axis.barh([p - 0.2 for p in positions], [r[2] for r in rows], 0.4, label="torch.compile / fused")
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_yticks(positions, [r[0] for r in rows], fontsize=6)
    axis.invert_yaxis()
    axis.set_xlabel("speed-up of the fused path (log scale; > 1: fused is faster)")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, loc="lower right")
    temporary = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(temporary, dpi=110, bbox_inches="tight")
    os.replace(temporary, path)
    plt.close(figure)
