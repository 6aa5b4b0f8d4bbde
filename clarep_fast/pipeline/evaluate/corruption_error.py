"""Corruption Error (Hendrycks & Dietterich 2019, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations"), from a table of accuracies per corruption c and severity s:

    CE_c           = Σ_s E_{s,c} / Σ_s E^ref_{s,c}                               (E = 1 − accuracy)
    relative CE_c  = Σ_s (E_{s,c} − E_clean) / Σ_s (E^ref_{s,c} − E^ref_clean)
    mCE, relative mCE = the mean of CE_c (relative CE_c) over the benchmark's 15 corruptions

The reference is AlexNet's errors in the paper; here any reference the user supplies (a JSON file of
errors, or the evaluation.json of another student: the demo uses its cross-entropy baseline). Only
the benchmark's 15 corruptions enter the mean (the four extra ones, speckle_noise, gaussian_blur,
spatter and saturate, are for validation); where the set or the reference lacks some, the mean is
over those both hold (evaluation.md names them). A relative CE whose reference
lost no accuracy to the corruption (denominator ≤ 0) is undefined and left out of its mean.
"""

from __future__ import annotations

from pathlib import Path

from clarep_fast.pipeline.evaluate.corruptions import SEVERITIES
from clarep_fast.pipeline.files import read_given_json

BENCHMARK = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")


def errors_of(results: dict, prefix: str) -> dict[str, list[float]]:
    """{corruption: [E_1 .. E_5]} from accuracies stored as ``<prefix>/<corruption>/<severity>``."""
    table = {}
    for name in BENCHMARK + EXTRA:
        keys = [f"{prefix}/{name}/{s}" for s in SEVERITIES]
        if all(key in results for key in keys):
            table[name] = [1.0 - float(results[key]) for key in keys]
    return table


def read_reference(path: str | Path, prefix: str) -> tuple[dict[str, list[float]], float | None]:
    """(errors per corruption, clean error or None) from --mce-reference: either
    {"clean": E_clean, "errors": {"<corruption>": [E_1, .., E_5], ...}} (e.g. AlexNet's, from the
    paper), or an evaluation.json of clarep-fast evaluate holding this set's accuracies."""
    content = read_given_json(path, "--mce-reference")
    if isinstance(content, dict) and isinstance(content.get("errors"), dict):
        errors = {}
        for name, values in content["errors"].items():
            if name not in BENCHMARK + EXTRA:
                raise ValueError(f"--mce-reference {path}: {name!r} is not an ImageNet-C corruption")
            if not (
                isinstance(values, list)
                and len(values) == 5
                and all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in values)
            ):
                raise ValueError(f"--mce-reference {path}: {name} must list 5 errors in [0, 1], one per severity")
            errors[name] = [float(v) for v in values]
        clean = content.get("clean")
        if clean is not None and not (isinstance(clean, (int, float)) and 0 <= clean <= 1):
            raise ValueError(f"--mce-reference {path}: clean must be an error in [0, 1], got {clean!r}")
        return errors, None if clean is None else float(clean)
    if isinstance(content, dict) and errors_of(content, prefix):
        clean = content.get("clean")
        return errors_of(content, prefix), None if clean is None else 1.0 - float(clean)
    raise ValueError(
        f"--mce-reference {path} holds neither {{'clean': .., 'errors': {{corruption: [5 errors]}}}} nor an "
        f"evaluation.json with {prefix}/<corruption>/<severity> accuracies"
    )


def mean_corruption_error(
    errors: dict[str, list[float]],
    reference: dict[str, list[float]],
    clean: float | None = None,
    reference_clean: float | None = None,
    prefix: str = "imagenet_c",
) -> dict[str, float]:
    """``<prefix>_mce`` and, with both clean errors, ``<prefix>_relative_mce``; {} when the two
    tables share none of the benchmark's corruptions."""
    shared = benchmark_in_both(errors, reference)
    if not shared:
        return {}
    results = {}
    if all(sum(reference[name]) > 0 for name in shared):
        results[f"{prefix}_mce"] = sum(sum(errors[n]) / sum(reference[n]) for n in shared) / len(shared)
    if clean is not None and reference_clean is not None:
        relative = [
            sum(e - clean for e in errors[n]) / denominator
            for n in shared
            if (denominator := sum(r - reference_clean for r in reference[n])) > 0
        ]
        if relative:
            results[f"{prefix}_relative_mce"] = sum(relative) / len(relative)
    return results


def benchmark_in_both(errors: dict[str, list[float]], reference: dict[str, list[float]]) -> list[str]:
    """The benchmark corruptions both tables hold: those that enter the mCE."""
    return [name for name in BENCHMARK if name in errors and name in reference]
