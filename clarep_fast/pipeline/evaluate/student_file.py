"""``clarep-fast evaluate``'s work, for API users too: a saved student scored on its data's test (or
validation) split, written as evaluation.json and evaluation.md beside it.

    results, json_file = evaluate_student_file(
        "runs/cadistill/student.pt", EvaluateConfig(sets=("imagenet-a:/data/imagenet-a",)), runtime=Runtime(device="cuda")
    )
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from clarep_fast.pipeline.data.source import dataset_classes
from clarep_fast.pipeline.distill.train import load_student
from clarep_fast.pipeline.evaluate.autoattack import implementation
from clarep_fast.pipeline.evaluate.corruption_error import benchmark_in_both, errors_of, read_reference
from clarep_fast.pipeline.evaluate.robustness import (
    DETAIL_TITLES,
    EvaluateConfig,
    detail_groups,
    evaluate_student,
    markdown_table,
)
from clarep_fast.pipeline.files import write_json, write_text
from clarep_fast.pipeline.runtime import Runtime


def evaluate_student_file(
    student: str | Path,
    config: EvaluateConfig = EvaluateConfig(),
    *,
    data: str | None = None,
    runtime: Runtime = Runtime(),
    out: str | Path | None = None,
) -> tuple[dict[str, float], Path]:
    """Score ``student`` (student.pt or its distill run folder) on ``data`` (a --data spec; default:
    the data it was trained on, whose classes it must share), on the runtime's device (default: the
    GPU when there is one; attacks run where the student is). Returns the results and the JSON file written
    (``out``, default evaluation.json beside the student; a Markdown table beside that)."""
    student_file = Path(student)
    if student_file.is_dir():  # a distill run folder
        student_file = student_file / "student.pt"
    model = load_student(student_file, runtime.torch_device)
    spec = model.data if data is None else dataclasses.replace(model.data, dataset=data)
    if dataset_classes(spec) != model.classes:
        raise ValueError(
            f"--data {spec.dataset} has classes {dataset_classes(spec)[:5]}... but the student was trained on {model.classes[:5]}..."
        )
    results = evaluate_student(
        model, spec, config, resolution=model.resolution, classes=model.classes, workers=runtime.workers
    )
    out = Path(out) if out else student_file.with_name("evaluation.json")
    write_json(out, results)
    write_text(out.with_suffix(".md"), evaluation_text(student_file.parent.name, results, spec.dataset, config))
    return results, out


def evaluation_text(name: str, results: dict[str, float], dataset: str, config: EvaluateConfig) -> str:
    """evaluation.md: the headline table, the CW distortion when it ran, then one table per group of
    detail ("<group>/<measure>": the corruptions, AutoAttack's parts, each evaluation set's parts)."""
    text = f"Accuracy (%) on the {config.split} split of --data {dataset}\n\n{markdown_table({name: results})}\n"
    if "distortion/cw_l2_median" in results:
        text += f"\nCW-L2 median L2 distortion: {results['distortion/cw_l2_median']:.3f}\n"
    if "autoattack" in results:
        text += f"\n{implementation()}\n"
    for group, keys in detail_groups(results).items():
        text += f"\n{DETAIL_TITLES[group]}\n\n{markdown_table({name: results}, keys)}\n"
    if config.mce_reference and "imagenet_c_mce" in results:
        reference, _ = read_reference(config.mce_reference, "imagenet_c")
        shared = benchmark_in_both(errors_of(results, "imagenet_c"), reference)
        text += f"\nmCE against {config.mce_reference}, over {len(shared)} corruptions: {', '.join(shared)}\n"
    return text
