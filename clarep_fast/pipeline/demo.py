"""The one-command demo: teacher → CLARep bank → students → evaluation → report, with a control.

    clarep-fast demo RUN_DIR [--seeds N] [--teacher FOLDER --data SPEC]

The embedded teacher and the default dataset unless --teacher and --data say otherwise.
RUN_DIR/bank (the CLARep search, 10% of the training set); per seed s three students with the same
architecture, schedule, initial weights and data order:
    baseline-s<s>    cross-entropy only
    ordinary-s<s>    the CaDistill loss on the bank's ordinary CFG samples (no projection): the
                     control that isolates CLARID from "distilling any CFG samples of the teacher"
    cadistill-s<s>   the CaDistill loss on the canonical samples (CLAReps)
RUN_DIR/evaluation.json, losses.png, canonical.png, nmi.png and report.md: every measure as mean
± 95% interval over seeds, and CaDistill minus each control paired per seed, with whether the
interval excludes 0. Every stage resumes from its files: rerunning after a kill continues.
The report states the measured numbers whether or not CaDistill wins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from clarep_fast.pipeline.clarid.bank import read_bank_config
from clarep_fast.pipeline.clarid.search import SearchConfig, run_search
from clarep_fast.pipeline.data.source import DataConfig
from clarep_fast.pipeline.distill.train import DistillConfig, load_student, train_student
from clarep_fast.pipeline.distributed import default_device
from clarep_fast.pipeline.evaluate.corruptions import CORRUPTIONS
from clarep_fast.pipeline.evaluate.robustness import EvaluateConfig, evaluate_student, headline
from clarep_fast.pipeline.evaluate.statistics import paired_difference, t_interval
from clarep_fast.pipeline.files import atomic_write, read_json, save_figure, write_text
from clarep_fast.pipeline.options import check_ranges, option
from clarep_fast.pipeline.rundir import RunDir, as_json


@dataclass(frozen=True)
class DemoConfig:
    seeds: int = option(
        1,
        "train the students with seeds 0..N-1 (mean and 95 percent interval over seeds; 5 or more for significance)",
        low=1,
    )
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


STUDENTS = (
    ("baseline", {"baseline": True}),
    ("ordinary", {"bank_samples": "ordinary"}),
    ("cadistill", {"bank_samples": "canonical"}),
)
GROUPS = {
    "baseline": "baseline (CE only)",
    "ordinary": "control: CaDistill on ordinary samples",
    "cadistill": "CaDistill (CLAReps)",
}


class _StageTimes:
    """Seconds per stage, kept in RUN_DIR/timings.json: a stage found finished on disk keeps the time
    it took when it ran, so a resumed or re-rendered report still says where the time went."""

    def __init__(self, run: RunDir):
        self.run = run
        self.recorded = (
            read_json(run / "timings.json", "the demo's stage times", "delete it (the next run records them again)")
            if (run / "timings.json").exists()
            else {}
        )
        self.seen: list[str] = []

    @contextlib.contextmanager
    def stage(self, name: str, *, done: bool):
        began = time.perf_counter()
        yield
        if not done or name not in self.recorded:
            self.recorded[name] = time.perf_counter() - began
            self.run.write_json("timings.json", self.recorded)
        self.seen.append(name)

    def report(self) -> dict[str, float]:
        times = {name: self.recorded[name] for name in self.seen}
        return {**times, "total": sum(times.values())}


def run_demo(
    run_dir: str | Path,
    *,
    seeds: int = 1,
    search: SearchConfig | None = None,
    distill: DistillConfig | None = None,
    evaluate: EvaluateConfig | None = None,
    progress: bool = True,
) -> Path:
    run_dir = Path(run_dir)
    run = RunDir(
        run_dir, command="demo", may_change=("seeds", "search.data.workers", "distill.data.workers")
    )  # more seeds add students; nothing else may change
    search = search or SearchConfig()
    distill = distill or DistillConfig()
    evaluate = evaluate or EvaluateConfig()
    run.claim({"seeds": seeds, "search": as_json(search), "distill": as_json(distill), "evaluate": as_json(evaluate)})
    timings = _StageTimes(run)
    with timings.stage("CLARep search", done=(run_dir / "bank" / "summary.json").exists()):
        bank_dir = run_search(search, run_dir / "bank", progress=progress)
    runs, results = {}, {}
    evaluation_file = run_dir / "evaluation.json"
    cached = (
        read_json(evaluation_file, "the demo's evaluations", "delete it and rerun the demo (the students are kept)")
        if evaluation_file.exists()
        else {}
    )
    for seed in range(seeds):
        for kind, changes in STUDENTS:
            name = f"{kind}-s{seed}"
            config = dataclasses.replace(distill, bank=str(bank_dir), seed=seed, data=search.data, **changes)
            with timings.stage(f"train {name}", done=(run_dir / name / "student.pt").exists()):
                student_file = train_student(config, run_dir / name, progress=progress)
            runs[name] = run_dir / name
            with timings.stage(f"evaluate {name}", done=name in cached):
                if name not in cached:
                    student = load_student(student_file, default_device())  # where it was trained
                    cached[name] = evaluate_student(student, search.data, evaluate, resolution=student.resolution)
                    run.write_json("evaluation.json", cached)
            results[name] = cached[name]
    timings = timings.report()
    for picture in ("canonical.png", "nmi.png"):
        atomic_write(run / picture, lambda temporary: shutil.copyfile(bank_dir / picture, temporary))
    _loss_curves(
        {name: path for name, path in runs.items() if name.endswith("-s0")}, run_dir / "losses.png"
    )  # seed 0: one curve per student kind
    summary = read_json(
        bank_dir / "summary.json", "the bank's summary", "delete it and rerun the demo (the shards are kept)"
    )
    searched = dataclasses.replace(search, layer=read_bank_config(bank_dir)["layer"])  # --layer auto, resolved
    _write_report(run_dir, results, summary, timings, searched, distill, evaluate, seeds)
    for stage, seconds in timings.items():
        print(f"{stage}: {seconds:.0f} s")
    return run_dir / "report.md"


def _number(value) -> str:
    """A measure for the report; None where the bank was too small to measure it."""
    return "n/a (too few CLAReps per class)" if value is None else f"{value:.3f}"


def _by_kind(results: dict[str, dict[str, float]], kind: str, measure: str) -> list[float]:
    """One value per seed, in seed order, for the students of one kind."""
    names = sorted((n for n in results if n.rsplit("-s", 1)[0] == kind), key=lambda n: int(n.rsplit("-s", 1)[1]))
    return [results[n][measure] for n in names]


def _table(results, measures: list[str], scale: float = 100.0, digits: int = 1) -> str:
    lines = ["| student | " + " | ".join(m.split("/")[-1] for m in measures) + " |", "|---|" + "---|" * len(measures)]
    for kind, title in GROUPS.items():
        lines.append(
            f"| {title} | "
            + " | ".join(t_interval(_by_kind(results, kind, m)).describe(scale, digits) for m in measures)
            + " |"
        )
    return "\n".join(lines)


def _differences(results, measures: list[str]) -> tuple[str, list[str]]:
    """The table of CaDistill minus each control (paired per seed), and the sentences that say what is significant."""
    lines = ["| CaDistill (CLAReps) minus | " + " | ".join(measures) + " |", "|---|" + "---|" * len(measures)]
    words = []
    for control in ("baseline", "ordinary"):
        cells, significant = [], []
        for measure in measures:
            difference = paired_difference(_by_kind(results, "cadistill", measure), _by_kind(results, control, measure))
            cells.append(difference.describe() + (" *" if difference.significant else ""))
            if difference.significant:
                significant.append(f"{measure} ({difference.describe()} points)")
        lines.append(f"| {GROUPS[control]} | " + " | ".join(cells) + " |")
        if significant:
            words.append(
                f"Against the {GROUPS[control]}, the differences whose 95% interval excludes 0: {', '.join(significant)}; the others are not significant."
            )
        else:
            words.append(
                f"Against the {GROUPS[control]}, no difference is significant (every 95% interval contains 0)."
            )
    return "\n".join(lines), words


def _write_report(run_dir, results, bank_summary, timings, search, distill, evaluate, seeds) -> None:
    first = next(iter(results.values()))
    measures = headline(first)
    distortions = [m for m in first if m.startswith("distortion/")]
    difference_table, verdicts = _differences(results, measures)
    if seeds == 1:
        verdicts = [
            "One seed cannot show significance: the differences above are single draws (rerun with `--seeds 5` for intervals)."
        ]
    teacher = (
        "Embedded teacher (`clarep_fast/pipeline/assets/teacher`)"
        if search.teacher == "default"
        else f"Teacher `{search.teacher}`"
    )
    data = (
        f"the default background dataset (MNIST digits on class-correlated backgrounds, rho = {search.data.rho})"
        if search.data.kind == "default"
        else f"`--data {search.data.dataset}`"
    )
    attacked = "the whole test split" if evaluate.attack_samples is None else f"{evaluate.attack_samples} test images"
    corruption_lines = ""
    if evaluate.corruption_samples:
        columns = [f"corruption/{c}" for c in CORRUPTIONS]
        corruption_lines = (
            f"\n\nPer corruption (accuracy, %, mean over severities 1–5, {evaluate.corruption_samples} test images):\n\n"
            + _table(results, columns)
        )
    nmi = bank_summary["nmi"]
    spread = bank_summary["background_spread"]
    interval_words = "mean ± 95% interval over seeds (Student's t)" if seeds > 1 else "one seed, no interval"
    text = (
        f"""# clarep_fast demo report

{teacher} on {data}. {bank_summary["count"]} CLAReps (t_e = {search.t_e}, k = {search.k}, {search.directions} directions,
layer {search.layer}), student `{distill.student}` ({distill.epochs} epochs, batch {distill.batch_size}),
λ_align = {distill.lambda_align}, λ_cano = {distill.lambda_cano}, λ_dist = {distill.lambda_dist}; {seeds} seed(s): {interval_words}.
Per seed, three students with the same initial weights and data order: cross-entropy only; the
CaDistill loss on the bank's ordinary CFG samples (the control: no projection); CaDistill on the
canonical samples.

## Accuracy (%), test split

{_table(results, measures)}

Columns: clean test accuracy; {"for the default data, clean accuracy with the background removed (only_foreground), drawn at random (mixed_random) and swapped to another class (swapped); " if "swapped" in measures else ""}robust accuracy under
PGD-{evaluate.pgd_steps} and APGD-CE (L∞ ε = {evaluate.epsilon * 255:.0f}/255) and APGD-L2 (ε₂ = 0.5·sqrt(d/3072)) on {attacked};
corruption_mean: mean over 15 common corruptions × severities 1–5. Each student is the last
epoch's (validation accuracy is logged, nothing is picked). CW-L2 median distortion (L2 norm of the
perturbation it needed, on {attacked}; larger is more robust):

{_table(results, distortions, scale=1.0, digits=3).replace("| cw_l2_median |", "| CW-L2 median L2 distortion |")}

## CaDistill minus the controls (points, paired per seed; * = the 95% interval excludes 0)

{difference_table}

{" ".join(verdicts)}{corruption_lines}

## The CLARep bank

![canonical samples](canonical.png)

NMI of k-means against the class, ordinary → canonical samples. On {bank_summary.get("nmi_features", "teacher features")}: """
        + ", ".join(
            f"{layer} {_number(v['ordinary'])} → {_number(v['canonical'])}"
            for layer, v in nmi.items()
            if not layer.startswith("pixels")
        )
        + f""". On the samples' raw pixels (an independent feature): {_number(nmi["pixels (independent)"]["ordinary"])} → {_number(nmi["pixels (independent)"]["canonical"])}.
Within-class background-color spread (pixels): {_number(spread["ordinary"])} → {_number(spread["canonical"])}.

![NMI](nmi.png)

## Training

![losses](losses.png)

## Wall-clock (seconds each stage took when it ran; RUN_DIR/timings.json)

"""
        + "\n".join(f"- {stage}: {seconds:.0f} s" for stage, seconds in timings.items())
        + "\n"
    )
    write_text(run_dir / "report.md", text)
