"""The one-command demo: teacher → CLARep bank → students → evaluation → report, with a control.

    clarep-fast demo RUN_DIR [--seeds N] [--bank-per-seed] [--teacher FOLDER --data SPEC] [search,
                             distill and evaluate flags]

The embedded teacher and the default dataset unless --teacher and --data say otherwise; the
search's, the students' and the evaluation's settings take the flags of those commands.
RUN_DIR/bank (the CLARep search, 10% of the training set), or with --bank-per-seed one bank per
seed, RUN_DIR/bank-s<s> searched with seed s; per seed s three students with the same
architecture, schedule, initial weights and data order:
    baseline-s<s>    cross-entropy only
    ordinary-s<s>    the CaDistill loss on the bank's ordinary CFG samples (no projection): the
                     control that isolates CLARID from "distilling any CFG samples of the teacher"
    cadistill-s<s>   the CaDistill loss on the canonical samples (CLAReps)
RUN_DIR/evaluation.json (every student's measures, by name), losses.png, differences.png (the
paired differences, figures.py), canonical.png and nmi.png (of the seed-0 bank), and report.md
(report.py): every measure as mean ± 95% interval over seeds, and CaDistill minus each control
paired per seed, with whether the interval excludes 0. Every stage resumes from its files: rerunning after a kill continues.
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
from clarep_fast.pipeline.distill.train import DistillConfig, load_student, train_student
from clarep_fast.pipeline.demo.figures import difference_plot, loss_curves
from clarep_fast.pipeline.demo.report import (
    GROUPS,
    demo_report,
    headline_measures,
    paired_seeds,
    with_corruption_errors,
)
from clarep_fast.pipeline.evaluate.robustness import EvaluateConfig, evaluate_student
from clarep_fast.pipeline.files import atomic_write, read_json, write_text
from clarep_fast.pipeline.options import check_ranges, option
from clarep_fast.pipeline.rundir import RunDir, as_json
from clarep_fast.pipeline.runtime import Runtime


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings: its own, and the search's, the students' and the evaluation's under the
    flags of ``search``, ``distill`` and ``evaluate`` (the fields the demo sets itself have none)."""

    seeds: int = option(
        1,
        "train the students with seeds 0..N-1 (mean and 95 percent interval over seeds; 5 or more for significance)",
        low=1,
    )
    bank_per_seed: bool = option(
        False, "search a bank per seed (seed s searches with seed s): the interval then holds the search's randomness"
    )
    full_evaluation_seeds: int | None = option(
        None,
        "seeds below this get every --attacks, the corruptions and the --sets, the others clean accuracy, the "
        "default data's background variants and PGD only (default: every seed gets everything)",
        low=0,
    )
    search: SearchConfig = option(default_factory=SearchConfig, section=True, omit=("seed",))
    distill: DistillConfig = option(
        default_factory=DistillConfig, section=True, omit=("bank", "seed", "data", "baseline", "bank_samples")
    )
    evaluate: EvaluateConfig = option(default_factory=EvaluateConfig, section=True, omit=("seed",))

    def __post_init__(self):
        check_ranges(self)

    def bank_seed(self, seed: int) -> int:
        """The search seed of the bank student seed ``seed`` distills."""
        return seed if self.bank_per_seed else 0

    def bank_folder(self, seed: int) -> str:
        return f"bank-s{seed}" if self.bank_per_seed else "bank"

    def evaluation(self, seed: int) -> EvaluateConfig:
        """The evaluation of the students of ``seed``: the full one, or the cheap columns only."""
        if self.full_evaluation_seeds is None or seed < self.full_evaluation_seeds:
            return self.evaluate
        return dataclasses.replace(
            self.evaluate, attacks=tuple(a for a in self.evaluate.attacks if a == "pgd"), corruption_samples=0, sets=()
        )


STUDENTS = (
    ("baseline", {"baseline": True}),
    ("ordinary", {"bank_samples": "ordinary"}),
    ("cadistill", {"bank_samples": "canonical"}),
)


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
    run_dir: str | Path, config: DemoConfig = DemoConfig(), *, runtime: Runtime = Runtime(), progress: bool = True
) -> Path:
    """Run (or resume) the demo into ``run_dir`` (every stage on ``runtime``); returns its report.md."""
    run_dir = Path(run_dir)
    run = RunDir(run_dir, command="demo", may_change=("seeds",))  # more seeds add students; nothing else may change
    run.claim(as_json(config))
    timings = _StageTimes(run)
    runs, results, banks = {}, {}, {}
    evaluation_file = run_dir / "evaluation.json"
    cached = (
        read_json(evaluation_file, "the demo's evaluations", "delete it and rerun the demo (the students are kept)")
        if evaluation_file.exists()
        else {}
    )
    data = config.search.data
    for seed in range(config.seeds):
        folder = config.bank_folder(seed)
        if folder not in banks:
            search = dataclasses.replace(config.search, seed=config.bank_seed(seed))
            with timings.stage(f"CLARep search {folder}", done=(run_dir / folder / "summary.json").exists()):
                banks[folder] = run_search(search, run_dir / folder, runtime=runtime, progress=progress)
        for kind, changes in STUDENTS:
            name = f"{kind}-s{seed}"
            student_config = dataclasses.replace(
                config.distill, bank=str(banks[folder]), seed=seed, data=data, **changes
            )
            with timings.stage(f"train {name}", done=(run_dir / name / "student.pt").exists()):
                student_file = train_student(student_config, run_dir / name, runtime=runtime, progress=progress)
            runs[name] = run_dir / name
            with timings.stage(f"evaluate {name}", done=name in cached):
                if name not in cached:
                    student = load_student(student_file, runtime.torch_device)
                    cached[name] = evaluate_student(
                        student,
                        data,
                        config.evaluation(seed),
                        resolution=student.resolution,
                        classes=student.classes,
                        workers=runtime.workers,
                    )
                    run.write_json("evaluation.json", cached)
            results[name] = cached[name]
    timings = timings.report()
    results = with_corruption_errors(results)
    first_bank = banks[config.bank_folder(0)]
    for picture in ("canonical.png", "nmi.png"):
        atomic_write(run / picture, lambda temporary: shutil.copyfile(first_bank / picture, temporary))
    # seed 0: one curve per student kind
    loss_curves({name: path for name, path in runs.items() if name.endswith("-s0")}, run_dir / "losses.png")
    difference_plot(
        {
            f"minus {GROUPS[control]}": {m: paired_seeds(results, m, control) for m in headline_measures(results)}
            for control in ("baseline", "ordinary")
        },
        run_dir / "differences.png",
        "CaDistill (CLAReps) minus each control, paired per seed",
    )
    summaries = {
        folder: read_json(
            path / "summary.json", "the bank's summary", "delete it and rerun the demo (the shards are kept)"
        )
        for folder, path in banks.items()
    }
    searched = dataclasses.replace(config.search, layer=read_bank_config(first_bank)["layer"])  # --layer auto, resolved
    write_text(
        run_dir / "report.md", demo_report(results, summaries, timings, dataclasses.replace(config, search=searched))
    )
    for stage, seconds in timings.items():
        print(f"{stage}: {seconds:.0f} s")
    return run_dir / "report.md"
