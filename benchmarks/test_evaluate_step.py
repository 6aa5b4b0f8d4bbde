"""One evaluation step of `clarep-fast evaluate`: a clean forward and PGD-20 (torchattacks) on a batch.

Student resnet18 at 16×16 in eval mode, batch 250 (EvaluateConfig.batch), PGD-20 at ε = 8/255 with
step 2/255 and random start: 21 forwards and 20 backwards to the input per step. Providers:
  fused    the model the evaluation runs: BatchNorm folded into the convolutions (evaluate/fold.py)
  eager    the trained student as it is (eval mode)
  compile  torch.compile of the trained student (compiled once, before timing)
"""

from __future__ import annotations

import pytest
import torch
import torchattacks

from benchmarks.common import measure
from clarep_fast.pipeline.distill.student import Student
from clarep_fast.pipeline.evaluate.fold import fold_batchnorm
from clarep_fast.pipeline.evaluate.robustness import EvaluateConfig

CASES = [{"batch": 250, "dtype": "float32"}]
QUICK_CASES = CASES


def case_id(case: dict) -> str:
    return f"b{case['batch']}-{case['dtype']}"


@pytest.mark.parametrize("provider", ["fused", "eager", "compile"])
def test_evaluate_step(benchmark, case, provider, bench_device):
    torch.manual_seed(0)
    student = Student("resnet18", 10, (2, 3, 4)).to(bench_device).eval()
    with torch.no_grad():  # a few training-mode forwards: BatchNorm statistics away from (0, 1)
        student.train()
        for _ in range(3):
            student(torch.rand(64, 3, 16, 16, device=bench_device))
        student.eval()
    model = {"fused": fold_batchnorm, "eager": lambda m: m, "compile": torch.compile}[provider](student)
    config = EvaluateConfig()
    attack = torchattacks.PGD(
        model, eps=config.epsilon, alpha=config.pgd_step_size, steps=config.pgd_steps, random_start=True
    )
    images = torch.rand(case["batch"], 3, 16, 16, device=bench_device)
    labels = torch.randint(0, 10, (case["batch"],), device=bench_device)

    def step():
        with torch.no_grad():
            clean = model(images).argmax(1)
        adversarial = attack(images, labels)
        with torch.no_grad():
            robust = model(adversarial).argmax(1)
        if bench_device == "cuda":
            torch.cuda.synchronize()
        return clean, robust

    step()  # compiles the compile provider; warms the others
    measure(
        benchmark,
        step,
        bench_device,
        rounds=7,
        warmup_rounds=1,
        op="evaluate_step",
        provider=provider,
        mode=f"clean + PGD-{config.pgd_steps}",
        shape=f"resnet18 16×16 B={case['batch']}",
        dtype=case["dtype"],
    )
