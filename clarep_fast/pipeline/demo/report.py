"""The demo's report.md: accuracy tables over seeds, CaDistill minus each control paired per seed
(with the smallest difference the study could detect), the bank(s) and where the time went.

Students are named "<kind>-s<seed>" (baseline, ordinary, cadistill). A measure some seeds lack (the
demo's cheaper evaluation past --full-evaluation-seeds) is summarized over the seeds that have it,
and the table says over how many. Corruption tables without a reference of the user's get their mCE
against the cross-entropy baseline of the same seed (``with_corruption_errors``).
"""

from __future__ import annotations

from clarep_fast.pipeline.evaluate.autoattack import implementation
from clarep_fast.pipeline.evaluate.corruption_error import errors_of, mean_corruption_error
from clarep_fast.pipeline.evaluate.corruptions import CORRUPTIONS
from clarep_fast.pipeline.evaluate.robustness import DETAIL_TITLES, detail_groups
from clarep_fast.pipeline.teacher.load import EMBEDDED_TEACHERS
from clarep_fast.pipeline.evaluate.statistics import (
    detectable_difference,
    holm_rejected,
    paired_p_value,
    seeds_needed,
    t_interval,
)

GROUPS = {
    "baseline": "baseline (CE only)",
    "ordinary": "control: CaDistill on ordinary samples",
    "cadistill": "CaDistill (CLAReps)",
}
SPLIT_WORDS = {"test": "test split", "validation": "validation split (settings are compared here, never on test)"}


def per_seed(results: dict[str, dict[str, float]], kind: str, measure: str) -> dict[int, float]:
    """seed -> value of ``measure`` for the students of one kind that have it."""
    values = {}
    for name, measures in results.items():
        student_kind, seed = name.rsplit("-s", 1)
        if student_kind == kind and measure in measures:
            values[int(seed)] = measures[measure]
    return dict(sorted(values.items()))


def paired_seeds(results, measure: str, control: str) -> list[float]:
    """CaDistill minus ``control`` on ``measure``, one value per seed both students have."""
    treated, untreated = per_seed(results, "cadistill", measure), per_seed(results, control, measure)
    return [treated[seed] - untreated[seed] for seed in treated if seed in untreated]


def with_corruption_errors(results: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Every student's results with "<table>_mce" and "<table>_relative_mce" added for each
    corruption table (the generated "corruption", ImageNet-C's "imagenet_c") that has none yet,
    against the baseline of its seed: the baseline's own mCE is 1 by construction."""
    added = {}
    for name, measures in results.items():
        baseline = results.get(f"baseline-s{name.rsplit('-s', 1)[1]}")
        extra = {}
        for table in ("corruption", "imagenet_c"):
            if baseline is not None and f"{table}_mce" not in measures:
                clean, reference_clean = 1.0 - measures["clean"], 1.0 - baseline["clean"]
                extra.update(
                    mean_corruption_error(
                        errors_of(measures, table), errors_of(baseline, table), clean, reference_clean, table
                    )
                )
        added[name] = {**measures, **extra}
    return added


def headline_measures(results) -> list[str]:
    """The measures of the main tables, in first-seen order: all but the per-corruption and CW
    distortion entries (named kind/detail)."""
    every = dict.fromkeys(measure for measures in results.values() for measure in measures)
    return [m for m in every if "/" not in m]


def _number(value) -> str:
    """A bank measure; None where the bank was too small to measure it."""
    return "n/a (too few CLAReps per class)" if value is None else f"{value:.3f}"


def _seed_counts(results, measures: list[str]) -> str:
    """'' when every measure has every seed, else a note naming the measures with fewer."""
    every = len(per_seed(results, "cadistill", measures[0])) if measures else 0
    fewer = {m: len(per_seed(results, "cadistill", m)) for m in measures}
    fewer = {m: n for m, n in fewer.items() if n != every}
    return "" if not fewer else " Over fewer seeds: " + ", ".join(f"{m} ({n})" for m, n in fewer.items()) + "."


def _table(results, measures: list[str], scale: float = 100.0, digits: int = 1) -> str:
    lines = ["| student | " + " | ".join(m.split("/")[-1] for m in measures) + " |", "|---|" + "---|" * len(measures)]
    for kind, title in GROUPS.items():
        cells = [t_interval(list(per_seed(results, kind, m).values())).describe(scale, digits) for m in measures]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _differences(results, measures: list[str]) -> tuple[str, list[str]]:
    """The table of CaDistill minus each control (paired per seed) with the smallest detectable
    difference under it, and the sentences that say what is significant."""
    lines = ["| CaDistill (CLAReps) minus | " + " | ".join(measures) + " |", "|---|" + "---|" * len(measures)]
    words, p_values = [], {}
    for control in ("baseline", "ordinary"):
        cells, detectable, significant, unresolved = [], [], [], []
        for measure in measures:
            values = paired_seeds(results, measure, control)
            difference = t_interval(values)
            cells.append(difference.describe() + (" *" if difference.significant else ""))
            smallest = detectable_difference(values)
            detectable.append("–" if smallest is None else f"{100 * smallest:.1f}")
            if (p := paired_p_value(values)) is not None:
                p_values[f"{measure} against the {GROUPS[control]}"] = p
            if difference.significant:
                significant.append(f"{measure} ({difference.describe()} points)")
            elif difference.significant is False and (needed := seeds_needed(values, difference.mean)) is not None:
                unresolved.append(f"{measure} {needed if needed < 10_000 else 'over 10,000'}")
        lines.append(f"| {GROUPS[control]} | " + " | ".join(cells) + " |")
        lines.append("| (smallest detectable, 80% power) | " + " | ".join(detectable) + " |")
        if significant:
            words.append(
                f"Against the {GROUPS[control]}, the differences whose 95% interval excludes 0: {', '.join(significant)}; the others are not significant."
            )
        else:
            words.append(
                f"Against the {GROUPS[control]}, no difference is significant (every 95% interval contains 0)."
            )
        if unresolved:
            words.append(
                "Seeds that would detect the measured mean of a non-significant difference, were it the true one, at"
                f" 80% power (at the measured spread): {', '.join(unresolved)}."
            )
    if any(p < 0.05 for p in p_values.values()):
        kept = holm_rejected(p_values)
        words.append(
            f"This table tests {len(p_values)} differences; with Holm's correction (5% chance of any false"
            f" finding in the table) {'these stay significant: ' + '; '.join(kept) if kept else 'none stays significant'}."
        )
    return "\n".join(lines), words


def _over_banks(summaries: dict[str, dict], read) -> str:
    """One bank's value, or mean ± 95% interval over the banks (None values left out)."""
    values = [value for value in (read(summary) for summary in summaries.values()) if value is not None]
    if not values:
        return _number(None)
    return _number(values[0]) if len(values) == 1 else t_interval(values).describe(1.0, 3)


def _bank_section(summaries: dict[str, dict]) -> str:
    first = next(iter(summaries.values()))
    layers = [layer for layer in first["nmi"] if not layer.startswith("pixels")]
    where = "one bank" if len(summaries) == 1 else f"mean ± 95% interval over {len(summaries)} banks, one per seed"
    nmi = ", ".join(
        f"{layer} {_over_banks(summaries, lambda s, l=layer: s['nmi'][l]['ordinary'])} → "
        f"{_over_banks(summaries, lambda s, l=layer: s['nmi'][l]['canonical'])}"
        for layer in layers
    )
    pixels = "pixels (independent)"
    return f"""## The CLARep bank{"s" if len(summaries) > 1 else ""} ({where})

![canonical samples](canonical.png)

NMI of k-means against the class, ordinary → canonical samples. On {first.get("nmi_features", "teacher features")}: {nmi}.
On the samples' raw pixels (an independent feature): {_over_banks(summaries, lambda s: s["nmi"][pixels]["ordinary"])} → {_over_banks(summaries, lambda s: s["nmi"][pixels]["canonical"])}.
Within-class background-color spread (pixels): {_over_banks(summaries, lambda s: s["background_spread"]["ordinary"])} → {_over_banks(summaries, lambda s: s["background_spread"]["canonical"])}.

![NMI](nmi.png)"""


def _setup(config, count: int) -> str:
    search, distill = config.search, config.distill
    teacher = (
        f"Embedded teacher `{search.teacher}` (`clarep_fast/pipeline/assets/{EMBEDDED_TEACHERS[search.teacher].name}`)"
        if search.teacher in EMBEDDED_TEACHERS
        else f"Teacher `{search.teacher}`"
    )
    data = (
        f"the default background dataset (MNIST digits on class-correlated backgrounds, rho = {search.data.rho})"
        if search.data.kind == "default"
        else f"`--data {search.data.dataset}`"
    )
    seeds = config.seeds
    intervals = "mean ± 95% interval over seeds (Student's t)" if seeds > 1 else "one seed, no interval"
    banks = "a bank per seed (searched with the student's seed)" if config.bank_per_seed else "one bank (search seed 0)"
    return f"""{teacher} on {data}. {count} CLAReps per bank, {banks} (t_e = {search.t_e}, k = {search.k},
{search.directions} directions, guidance {search.guidance}, layer {search.layer}), student `{distill.student}`
({distill.epochs} epochs, batch {distill.batch_size}), λ_align = {distill.lambda_align}, λ_cano = {distill.lambda_cano},
λ_dist = {distill.lambda_dist}; {seeds} seed(s): {intervals}.
Per seed, three students with the same initial weights and data order: cross-entropy only; the
CaDistill loss on the bank's ordinary CFG samples (the control: no projection); CaDistill on the
canonical samples."""


def _columns(evaluate, measures: list[str], attacked: str) -> str:
    background = (
        "for the default data, clean accuracy with the background removed (only_foreground), drawn at random "
        "(mixed_random), swapped to another class (swapped), taken from another image of the same class "
        "(mixed_same) and alone without the digit (only_background: what the background alone tells; "
        "chance is 10%), and BG-Gap = mixed_same − mixed_random (the Backgrounds Challenge's measure of "
        "reliance on a background that agrees with the class; lower is less reliant); "
        if "swapped" in measures
        else ""
    )
    corruption_errors = (
        "; corruption_mce and corruption_relative_mce: mean corruption error (Hendrycks & Dietterich) "
        "against the baseline of the same seed, in % of the baseline's (lower is better; the baseline is 100)"
        if "corruption_mce" in measures
        else ""
    )
    sets = (
        " The field's evaluation sets given with --sets add their own columns (docs/evaluation.md)."
        if evaluate.sets
        else ""
    )
    if "autoattack" in measures:
        sets += f" autoattack: {implementation()}."
    return f"""Columns: clean accuracy; {background}robust accuracy under the attacks run
(PGD-{evaluate.pgd_steps} and APGD-CE at L∞ ε = {evaluate.epsilon * 255:.0f}/255, APGD-L2 at ε₂ = 0.5·sqrt(d/3072)) on {attacked};
corruption_mean: mean over 15 common corruptions × severities 1–5{corruption_errors}. Each student is the last
epoch's (validation accuracy is logged, nothing is picked).{sets}"""


def demo_report(
    results: dict[str, dict[str, float]], summaries: dict[str, dict], timings: dict[str, float], config
) -> str:
    """report.md of a demo run (``config``: its DemoConfig, layer resolved) from its evaluations,
    its banks' summaries (folder -> summary.json) and its stage times."""
    evaluate = config.evaluate
    every = list(dict.fromkeys(measure for measures in results.values() for measure in measures))  # first-seen order
    measures = headline_measures(results)
    distortions = [m for m in every if m.startswith("distortion/")]
    difference_table, verdicts = _differences(results, measures)
    if config.seeds == 1:
        verdicts = [
            "One seed cannot show significance: the differences above are single draws (rerun with `--seeds 5` for intervals)."
        ]
    split = SPLIT_WORDS[evaluate.split]
    attacked = (
        f"the whole {evaluate.split} split" if evaluate.attack_samples is None else f"{evaluate.attack_samples} images"
    )
    sections = [
        "# clarep_fast demo report",
        _setup(config, next(iter(summaries.values()))["count"]),
        f"## Accuracy (%), {split}",
        _table(results, measures),
        _columns(evaluate, measures, attacked) + _seed_counts(results, measures),
    ]
    if distortions:
        sections += [
            f"CW-L2 median distortion (L2 norm of the perturbation it needed, on {attacked}; larger is more robust):",
            _table(results, distortions, scale=1.0, digits=3).replace(
                "| cw_l2_median |", "| CW-L2 median L2 distortion |"
            ),
        ]
    sections += [
        "## CaDistill minus the controls (points, paired per seed; * = the 95% interval excludes 0)",
        difference_table,
        " ".join(verdicts),
        "![paired differences](differences.png)",
    ]
    if any(m.startswith("corruption/") for m in every):
        samples = evaluate.corruption_samples
        sections += [
            f"Per corruption (accuracy, %, mean over severities 1–5, {samples} images):",
            _table(results, [f"corruption/{c}" for c in CORRUPTIONS]),
        ]
    for group, keys in detail_groups(every).items():
        if not group.startswith("corruption"):  # the generated corruptions have their section above
            sections += [f"{DETAIL_TITLES[group]} (accuracy, %):", _table(results, keys)]
    sections += [
        _bank_section(summaries),
        "## Training\n\n![losses](losses.png)",
        "## Wall-clock (seconds each stage took when it ran; RUN_DIR/timings.json)",
        "\n".join(f"- {stage}: {seconds:.0f} s" for stage, seconds in timings.items()),
    ]
    return "\n\n".join(sections) + "\n"
