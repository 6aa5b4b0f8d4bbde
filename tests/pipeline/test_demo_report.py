"""The demo report's difference section on hand-made evaluations: the table, the verdicts, the seeds
a non-significant difference would need and Holm's correction."""

from clarep_fast.pipeline.demo.report import _differences, headline_measures


def evaluations(per_kind: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """kind -> measure -> per-seed values, as the demo's evaluation.json names them."""
    results = {}
    for kind, measures in per_kind.items():
        for measure, values in measures.items():
            for seed, value in enumerate(values):
                results.setdefault(f"{kind}-s{seed}", {})[measure] = value
    return results


def test_the_difference_section_says_what_survives_and_what_would_need_more_seeds():
    base = [0.80, 0.70, 0.90, 0.85, 0.75, 0.82]
    results = evaluations(
        {
            "baseline": {"clean": base, "swapped": base, "corruption/fog": base},
            "ordinary": {"clean": base, "swapped": base, "corruption/fog": base},
            # clean: +3 points on every seed but one (+2.9): significant, and far below Holm's threshold;
            # swapped: +1 ± a lot: not significant, a number of seeds it would need is named
            "cadistill": {
                "clean": [b + 0.03 for b in base[:-1]] + [base[-1] + 0.029],
                "swapped": [b + d for b, d in zip(base, (0.05, -0.03, 0.04, -0.02, 0.03, -0.01))],
                "corruption/fog": base,
            },
        }
    )
    measures = headline_measures(results)
    assert measures == ["clean", "swapped"]  # kind/detail entries are not headline measures
    table, words = _differences(results, measures)
    text = " ".join(words)
    # swapped: differences 5, -3, 4, -2, 3, -1 points: s = sqrt(58 / 5), half width 2.5706 * s / sqrt(6) = 3.57
    assert "| baseline (CE only) | 3.0 ± 0.0 * | 1.0 ± 3.6 |" in table
    assert "the differences whose 95% interval excludes 0: clean (3.0 ± 0.0 points)" in text
    assert "would detect the measured mean" in text and "swapped " in text
    assert "This table tests 4 differences" in text
    assert "these stay significant: clean against the baseline (CE only); clean against the control" in text


def test_no_correction_sentence_when_nothing_is_significant():
    flat = [0.8, 0.7, 0.9]
    results = evaluations(
        {
            "baseline": {"clean": flat},
            "ordinary": {"clean": flat},
            "cadistill": {"clean": [0.81, 0.69, 0.9]},
        }
    )
    _, words = _differences(results, ["clean"])
    assert "no difference is significant" in words[0] and not any("Holm" in w for w in words)
