"""The one-command demo: teacher → CLARep bank → baseline and CaDistill students → evaluation → report.

    clarep-fast demo RUN_DIR [--seeds N] [--teacher FOLDER --data SPEC]

The embedded teacher and the default dataset unless --teacher and --data say otherwise.

RUN_DIR/bank (the CLARep search, 10% of the training set), RUN_DIR/baseline-s<seed> and
RUN_DIR/cadistill-s<seed> (the same student, schedule and seed; cross-entropy only vs CaDistill),
RUN_DIR/evaluation.json, RUN_DIR/losses.png, RUN_DIR/canonical.png and RUN_DIR/report.md.
Every stage resumes from its files: rerunning the command after a kill continues where it stopped.
The report states the measured numbers whether or not CaDistill wins.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from clarep_fast.pipeline.clarid.search import SearchConfig, run_search
from clarep_fast.pipeline.data.source import DataConfig
from clarep_fast.pipeline.distill.train import DistillConfig, load_student, train_student
from clarep_fast.pipeline.evaluate.corruptions import CORRUPTIONS
from clarep_fast.pipeline.evaluate.robustness import EvaluateConfig, evaluate_student, headline
from clarep_fast.pipeline.files import atomic_write, read_json, save_figure, write_text
from clarep_fast.pipeline.options import check_ranges, option
from clarep_fast.pipeline.rundir import RunDir, as_json


@dataclass(frozen=True)
class DemoConfig:
    seeds: int = option(1, "train the students with seeds 0..N-1 (mean ± std over seeds)", low=1)
    epochs: int = option(DistillConfig().epochs, "student training epochs", low=1)
    student: str = option(DistillConfig().student, "timm model name of the students")
    teacher: str = option("default", "'default' (the embedded teacher), a diffusers model folder or a pipeline folder")
    data: DataConfig = option(default_factory=DataConfig)

    def __post_init__(self):
        check_ranges(self)


def _loss_curves(runs: dict[str, Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for name, run in runs.items():
        history = read_json(run / "metrics.json", "a student's per-epoch metrics", "delete the student's folder and rerun the demo")
        epochs = [r["epoch"] for r in history]
        style = "--" if name.startswith("baseline") else "-"
        left.plot(epochs, [r["ce"] for r in history], style, label=f"{name}: CE")
        if not name.startswith("baseline"):
            for term in ("align", "cano", "dist"):
                left.plot(epochs, [r[term] for r in history], style, label=f"{name}: {term}")
        right.plot(epochs, [100 * r["val_accuracy"] for r in history], style, label=name)
    left.set_xlabel("epoch"), left.set_ylabel("loss (epoch mean)"), left.legend(fontsize=7)
    right.set_xlabel("epoch"), right.set_ylabel("validation accuracy (%)"), right.legend(fontsize=7)
    save_figure(path, figure)


def _mean_std(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def run_demo(run_dir: str | Path, *, seeds: int = 1, search: SearchConfig | None = None, distill: DistillConfig | None = None,
             evaluate: EvaluateConfig | None = None, progress: bool = True) -> Path:  # fmt: skip
    run_dir = Path(run_dir)
    run = RunDir(run_dir, command="demo", may_change=("seeds", "search.data.workers", "distill.data.workers"))  # more seeds add students; nothing else may change
    search = search or SearchConfig()
    distill = distill or DistillConfig()
    evaluate = evaluate or EvaluateConfig()
    run.claim({"seeds": seeds, "search": as_json(search), "distill": as_json(distill), "evaluate": as_json(evaluate)})
    began = time.perf_counter()
    timings = {}
    bank_dir = run_search(search, run_dir / "bank", progress=progress)
    timings["CLARep search"] = time.perf_counter() - began
    runs, results = {}, {}
    evaluation_file = run_dir / "evaluation.json"
    cached = read_json(evaluation_file, "the demo's evaluations", "delete it and rerun the demo (the students are kept)") if evaluation_file.exists() else {}
    for seed in range(seeds):
        for baseline in (True, False):
            name = f"{'baseline' if baseline else 'cadistill'}-s{seed}"
            stage = time.perf_counter()
            config = dataclasses.replace(distill, bank=str(bank_dir), baseline=baseline, seed=seed, data=search.data)
            student_file = train_student(config, run_dir / name, progress=progress)
            timings[f"train {name}"] = time.perf_counter() - stage
            runs[name] = run_dir / name
            stage = time.perf_counter()
            if name not in cached:
                student = load_student(student_file)
                cached[name] = evaluate_student(student, search.data, evaluate, resolution=student.resolution)
                run.write_json("evaluation.json", cached)
            results[name] = cached[name]
            timings[f"evaluate {name}"] = time.perf_counter() - stage
    timings["total"] = time.perf_counter() - began
    for picture in ("canonical.png", "nmi.png"):
        atomic_write(run / picture, lambda temporary: shutil.copyfile(bank_dir / picture, temporary))
    _loss_curves(runs, run_dir / "losses.png")
    _write_report(run_dir, results, read_json(bank_dir / "summary.json", "the bank's summary", "delete it and rerun the demo (the shards are kept)"), timings, search, distill, evaluate, seeds)
    return run_dir / "report.md"


def _number(value) -> str:
    """A measure for the report; None where the bank was too small to measure it."""
    return "n/a (too few CLAReps per class)" if value is None else f"{value:.3f}"


def _write_report(run_dir, results, bank_summary, timings, search, distill, evaluate, seeds) -> None:
    measures = headline(next(iter(results.values())))
    groups = {"baseline (CE only)": [r for n, r in results.items() if n.startswith("baseline")],
              "CaDistill": [r for n, r in results.items() if n.startswith("cadistill")]}  # fmt: skip
    lines = ["| student | " + " | ".join(measures) + " |", "|---|" + "---|" * len(measures)]
    for name, group in groups.items():
        lines.append(f"| {name} | " + " | ".join(_mean_std([r[m] for r in group]) for m in measures) + " |")
    nmi = bank_summary["nmi"]
    spread = bank_summary["background_spread"]
    delta = {m: statistics.mean(r[m] for r in groups["CaDistill"]) - statistics.mean(r[m] for r in groups["baseline (CE only)"]) for m in measures}
    verdict = ", ".join(f"{m} {100 * d:+.1f} points" for m, d in delta.items())
    teacher = "Embedded teacher (`clarep_fast/pipeline/assets/teacher`)" if search.teacher == "default" else f"Teacher `{search.teacher}`"
    if search.data.kind == "default":
        data = f"the default background dataset (MNIST digits on class-correlated backgrounds, rho = {search.data.rho})"
    else:
        data = f"`--data {search.data.dataset}`"
    corruption_lines = ""
    if evaluate.corruption_samples:
        columns = [f"corruption/{c}" for c in CORRUPTIONS]
        corruption_lines = "\n".join(
            ["| student | " + " | ".join(c.removeprefix("corruption/") for c in columns) + " |", "|---|" + "---|" * len(columns)]
            + [f"| {name} | " + " | ".join(_mean_std([r[c] for r in group]) for c in columns) + " |" for name, group in groups.items()]
        )
        corruption_lines = f"\n\nPer corruption (accuracy, %, mean over severities 1–5, {evaluate.corruption_samples} test images):\n\n" + corruption_lines
    text = f"""# clarep_fast demo report

{teacher} on {data}. {bank_summary['count']} CLAReps (t_e = {search.t_e},
k = {search.k}, layer {search.layer}), student `{distill.student}` ({distill.epochs} epochs, batch {distill.batch_size}),
λ_align = {distill.lambda_align}, λ_cano = {distill.lambda_cano}, λ_dist = {distill.lambda_dist}; {seeds} seed(s){' (mean ± std)' if seeds > 1 else ''}.

## Baseline vs CaDistill (accuracy, %)

{chr(10).join(lines)}

Columns: clean test accuracy; clean accuracy with the background removed (only_foreground), drawn
at random (mixed_random) and swapped to another class's color (swapped); robust accuracy under
PGD-{evaluate.pgd_steps} and APGD-CE (L∞ ε = {evaluate.epsilon * 255:.0f}/255) and CW-L2 (c = 1, {evaluate.cw_steps} steps) on
{evaluate.attack_samples} test images; corruption_mean: mean accuracy over 15 common corruptions × severities 1–5.
All on the test split; each student is the last epoch's (validation accuracy is logged, nothing is picked).
CaDistill minus baseline: {verdict}.{corruption_lines}

## The CLARep bank

![canonical samples](canonical.png)

NMI of k-means on teacher features (ordinary → canonical samples): """ + ", ".join(
        f"{layer} {_number(v['ordinary'])} → {_number(v['canonical'])}" for layer, v in nmi.items()
    ) + f""". Within-class background-color spread: {_number(spread['ordinary'])} → {_number(spread['canonical'])}.

![NMI](nmi.png)

## Training

![losses](losses.png)

## Wall-clock (this run; stages found complete on disk take ~0 s)

""" + "\n".join(f"- {stage}: {seconds:.0f} s" for stage, seconds in timings.items()) + "\n"
    write_text(run_dir / "report.md", text)
