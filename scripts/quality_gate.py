"""Quality gate of a teacher: class-consistency of its CFG samples under an independent judge.

    python scripts/quality_gate.py TEACHER_DIR [--per-class 50] [--guidance 3] [--seed 0] [--out DIR]
    python scripts/quality_gate.py RUN_DIR --out DIR      (a train-teacher run, even one still training:
                                                          the EMA teacher of its last checkpoint)

Writes DIR/quality.json and DIR/samples_per_class.png (one row per class) and prints the result.
The gate: ≥ 90% of the samples are labeled as their conditioning class.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from torchvision.utils import save_image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clarep_fast.pipeline.teacher.quality import GATE, class_consistency, passes_gate, train_judge  # noqa: E402
from clarep_fast.pipeline.evaluate.statistics import wilson_interval  # noqa: E402
from clarep_fast.pipeline.teacher.load import load_teacher  # noqa: E402
from clarep_fast.pipeline.teacher.train import export_checkpoint  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", type=Path)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="seed of the starting noise (0: the gate's own draw)")
    parser.add_argument("--out", type=Path, default=None, help="default: the teacher folder's parent")
    args = parser.parse_args()
    step = None
    if (args.teacher / "checkpoint.pt").exists():
        if args.out is None:
            parser.error("a run folder needs --out (the gate's files do not go into a run folder)")
        args.teacher, step = export_checkpoint(args.teacher, args.out / "teacher")
    teacher = load_teacher(args.teacher)
    classes = teacher.num_classes
    judge, judge_accuracy = train_judge(teacher.resolution)
    score, per_class, samples = class_consistency(
        teacher, judge, per_class=args.per_class, guidance=args.guidance, steps=args.steps, seed=args.seed
    )
    correct = round(score * len(samples))
    passed = passes_gate(correct, len(samples))
    out = args.out or args.teacher.parent
    out.mkdir(parents=True, exist_ok=True)
    grid = samples.view(classes, args.per_class, *samples.shape[1:])[:, :10].reshape(-1, *samples.shape[1:])
    save_image(grid, out / "samples_per_class.png", nrow=10)
    result = {
        "teacher": str(args.teacher), "checkpoint_step": step, "guidance": args.guidance, "ddim_steps": args.steps, "noise_seed": args.seed, "samples": len(samples),
        "class_consistency": score, "class_consistency_wilson95": [round(v, 4) for v in wilson_interval(correct, len(samples))],
        "per_class": [round(v, 3) for v in per_class.tolist()],
        "judge_accuracy": judge_accuracy, "gate": float(GATE), "passed": passed,
    }  # fmt: skip
    temporary = out / ".quality.json.tmp"
    temporary.write_text(json.dumps(result, indent=1))
    os.replace(temporary, out / "quality.json")
    print(json.dumps(result, indent=1))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
