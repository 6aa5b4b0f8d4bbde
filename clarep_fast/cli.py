"""The ``clarep-fast`` command line.

    clarep-fast backends             which backends are usable here, and why not
    clarep-fast selfcheck [--quick]  every usable backend of every op against the reference (forward
                                     and backward), then fused vs eager CKA timing as a ratio
    clarep-fast train-teacher RUN_DIR [--steps N ...]
                                     train (or resume) the class-conditional diffusion teacher on the
                                     default background dataset; RUN_DIR/teacher is the result
    clarep-fast search BANK_DIR [--t-e 600 -k 24 --layer mid_block ...]
                                     CLARep search (CLARID) with the teacher (default: the embedded
                                     one) into a bank: shards, config.json, canonical.png, nmi.png;
                                     resumes; under torchrun the ranks split the shards
    clarep-fast distill RUN_DIR [--bank DIR] [--baseline] [--student resnet18 ...]
                                     CaDistill (or the CE-only baseline) student training; resumes;
                                     torchrun runs DDP
    clarep-fast evaluate STUDENT.pt [--autoattack]
                                     clean, PGD/APGD/CW and background-variant accuracies
    clarep-fast demo RUN_DIR [--seeds N]
                                     the whole pipeline on the embedded default, with report.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from clarep_fast.backends import available_backends, unusable_reason, use_backend
from clarep_fast.data.default import DataConfig
from clarep_fast.diffusion.teacher import TeacherConfig
from clarep_fast.diffusion.train import TrainTeacherConfig, train_teacher
from clarep_fast.distributed import is_main_process
from clarep_fast.ops.cka import cka
from clarep_fast.ops.feature_align import feature_align
from clarep_fast.ops.feature_pool import feature_pool
from clarep_fast.ops.project_out import project_out
from clarep_fast.reference import cka_reference, feature_align_reference, feature_pool_reference, project_out_reference


def _print_backends() -> None:
    for name, status in available_backends().items():
        where = ", ".join(status.devices) if status.available else "unavailable"
        note = f"  ({status.reason})" if status.reason else ""
        print(f"  {name:7s} {where}{note}")


def _max_errors(backend: str, device: str) -> tuple[float, float]:
    """Largest |fused - reference| of the value and of the gradients at an odd shape, fp32."""
    x = torch.randn(41, 401, device=device, requires_grad=True)
    y = (torch.randn(41, 33, device=device) + x[:, :33].detach()).requires_grad_(True)
    with use_backend(backend):
        value = cka(x, y)
    grads = torch.autograd.grad(value, (x, y))
    x64, y64 = (t.detach().double().requires_grad_(True) for t in (x, y))
    expected = cka_reference(x64, y64)
    expected_grads = torch.autograd.grad(expected, (x64, y64))
    grad_error = max(((g.double() - e).abs().max() / e.abs().max()).item() for g, e in zip(grads, expected_grads))
    return abs(value.item() - expected.item()), grad_error


def _pool_errors(backend: str, device: str) -> tuple[float, float]:
    """Largest |fused - reference| of packed features and map gradients (odd windows, normalized), fp32."""
    maps = [torch.randn(3, 5, 7, 9, device=device, requires_grad=True), torch.randn(3, 4, 4, 4, device=device, requires_grad=True)]
    with use_backend(backend):
        packed = feature_pool(maps, 3, normalize=True)
    weights = torch.randn_like(packed)
    grads = torch.autograd.grad((packed * weights).sum(), maps)
    expected = feature_pool_reference(maps, 3, normalize=True)
    expected_grads = torch.autograd.grad((expected * weights).sum(), maps)
    grad_error = max(((g - e).abs().max() / e.abs().max()).item() for g, e in zip(grads, expected_grads))
    return (packed - expected).abs().max().item(), grad_error


def _project_errors(backend: str, device: str) -> tuple[float, float]:
    """Largest |fused - reference| of project_out (rescaled, odd shape) and of its gradient, fp32."""
    x = torch.randn(3, 3, 5, 7, device=device, requires_grad=True)
    vectors = torch.linalg.qr(torch.randn(3, 105, 6, device=device)).Q
    with use_backend(backend):
        out = project_out(x, vectors, rescale=True)
    weights = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    expected = project_out_reference(x, vectors, True)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), x)
    return (out - expected).abs().max().item(), ((grad - expected_grad).abs().max() / expected_grad.abs().max()).item()


def _align_errors(backend: str, device: str) -> tuple[float, float]:
    """Largest |fused - reference| of the cosine alignment loss (two odd pairs) and of its gradient, fp32."""
    students = [torch.randn(5, 37, device=device, requires_grad=True), torch.randn(5, 3, 4, 4, device=device, requires_grad=True)]
    teachers = [torch.randn(5, 37, device=device), torch.randn(5, 48, device=device)]
    with use_backend(backend):
        loss = feature_align(students, teachers, reduction="none")
    weights = torch.randn_like(loss)
    grads = torch.autograd.grad((loss * weights).sum(), students)
    expected = feature_align_reference(students, teachers, "cosine", "none")
    expected_grads = torch.autograd.grad((expected * weights).sum(), students)
    grad_error = max(((g - e).abs().max() / e.abs().max()).item() for g, e in zip(grads, expected_grads))
    return (loss - expected).abs().max().item(), grad_error


def _median_seconds(fn, repeats: int, device: str) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def selfcheck(quick: bool) -> int:
    print(f"clarep_fast self-check: torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    _print_backends()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    failures = 0
    print("\ncorrectness against the reference, fp32 (value abs error, gradient error relative to max):")
    for op, check in (("cka", _max_errors), ("feature_pool", _pool_errors), ("project_out", _project_errors), ("feature_align", _align_errors)):
        for device in devices:
            for backend in ("cuda", "triton", "cpu", "torch"):
                if unusable_reason(backend, device):
                    continue
                value_error, grad_error = check(backend, device)
                ok = value_error < 1e-5 and grad_error < 1e-3
                failures += not ok
                print(f"  {op:12s} {device:4s} {backend:7s} value {value_error:.1e}  grad {grad_error:.1e}  {'ok' if ok else 'FAIL'}")
    n, d = (256, 8192) if quick else (512, 32768)
    print(f"\nspeed: CKA forward+backward of x, y: ({n}, {d}) fp32, median of 5 (one process, same inputs):")
    for device in devices:
        x = torch.randn(n, d, device=device, requires_grad=True)
        y = torch.randn(n, d, device=device, requires_grad=True)
        fused = _median_seconds(lambda: torch.autograd.grad(cka(x, y), (x, y)), 5, device)
        eager = _median_seconds(lambda: torch.autograd.grad(cka_reference(x, y), (x, y)), 5, device)
        print(f"  {device:4s} fused {fused * 1e3:8.1f} ms   eager {eager * 1e3:8.1f} ms   fused is {eager / fused:.2f}x eager")
    print("\nfull comparison with torch.compile: python benchmarks/run.py [--quick]")
    print("self-check " + ("passed" if failures == 0 else f"FAILED ({failures} backend(s))"))
    return 1 if failures else 0


def _train_teacher(args) -> int:
    data = DataConfig(resolution=args.resolution, rho=args.rho, seed=args.seed)
    model = TeacherConfig(resolution=args.resolution, channels=tuple(args.channels), layers_per_block=args.layers_per_block)
    config = TrainTeacherConfig(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
        checkpoint_every=args.checkpoint_every, sample_every=args.sample_every, seed=args.seed,
        device=args.device, data=data, teacher=model,
    )  # fmt: skip
    teacher_dir = train_teacher(config, args.run_dir)
    print(f"teacher saved to {teacher_dir}")
    return 0


def _add_search(commands) -> None:
    from clarep_fast.clarid.search import SearchConfig

    defaults = SearchConfig()
    search = commands.add_parser("search", help="CLARep search into a bank (resumable; torchrun splits it)")
    search.add_argument("bank_dir", help="bank folder: config.json, shards/, summary.json, canonical.png, nmi.png")
    search.add_argument("--teacher", default=defaults.teacher, help="'default' (embedded) or a diffusers model folder")
    search.add_argument("--route", choices=["generative", "inversion"], default=defaults.route)
    search.add_argument("--t-e", type=int, default=defaults.t_e, help="time of the projection (0..998)")
    search.add_argument("-k", type=int, default=defaults.k, help="directions projected out")
    search.add_argument("--layer", default=defaults.layer, help="teacher feature whose Jacobian is searched")
    search.add_argument("--pool", type=int, default=defaults.pool)
    search.add_argument("--guidance", type=float, default=defaults.guidance)
    search.add_argument("--no-rescale", action="store_true", help="do not restore the latent's norm after projecting")
    search.add_argument("--steps", type=int, default=defaults.steps, help="DDIM steps of a full trajectory")
    search.add_argument("--count", type=int, default=None, help="CLAReps in all (default: --fraction of the training set)")
    search.add_argument("--fraction", type=float, default=defaults.fraction)
    search.add_argument("--feature-layers", nargs="+", default=list(defaults.feature_layers), help="layers of the cached canonical features")
    search.add_argument("--feature-pool", type=int, default=defaults.feature_pool)
    search.add_argument("--mode", choices=["auto", "jvp", "vjp", "exact"], default=defaults.mode, help="top-k method (auto: exact for narrow features)")
    search.add_argument("--oversample", type=int, default=defaults.oversample)
    search.add_argument("--tol", type=float, default=defaults.tol, help="stop when successive subspaces are this close (radians)")
    search.add_argument("--max-iters", type=int, default=defaults.max_iters)
    search.add_argument("--shard-size", type=int, default=defaults.shard_size)
    search.add_argument("--jacobian-batch", type=int, default=defaults.jacobian_batch)
    search.add_argument("--seed", type=int, default=defaults.seed)
    search.add_argument("--rho", type=float, default=defaults.data.rho, help="class correlation of the default dataset's backgrounds")
    search.add_argument("--device", default=None, help="default: cuda (the rank's GPU under torchrun) if available, else cpu")


def _search(args) -> int:
    from clarep_fast.clarid.search import SearchConfig, run_search

    config = SearchConfig(
        teacher=args.teacher, route=args.route, t_e=args.t_e, k=args.k, layer=args.layer, pool=args.pool,
        guidance=args.guidance, rescale=not args.no_rescale, steps=args.steps, count=args.count, fraction=args.fraction,
        feature_layers=tuple(args.feature_layers), feature_pool=args.feature_pool, mode=args.mode,
        oversample=args.oversample, tol=args.tol, max_iters=args.max_iters, shard_size=args.shard_size,
        jacobian_batch=args.jacobian_batch, seed=args.seed, data=DataConfig(rho=args.rho),
    )  # fmt: skip
    bank = run_search(config, args.bank_dir, device=args.device)
    if is_main_process():
        print(f"CLARep bank written to {bank} (summary.json, canonical.png, nmi.png)")
    return 0


def _add_distill(commands) -> None:
    from clarep_fast.distill.train import DistillConfig

    defaults = DistillConfig()
    distill = commands.add_parser("distill", help="train a CaDistill (or baseline) student from a CLARep bank")
    distill.add_argument("run_dir", help="run folder: config.json, metrics.csv/json, checkpoint.pt, student.pt")
    distill.add_argument("--bank", default=defaults.bank, help="CLARep bank folder (clarep-fast search)")
    distill.add_argument("--baseline", action="store_true", help="cross-entropy only (same student, schedule, seed)")
    distill.add_argument("--student", default=defaults.student, help="timm model name")
    distill.add_argument("--student-layers", type=int, nargs="+", default=list(defaults.student_layers))
    distill.add_argument("--teacher-layers", nargs="+", default=None, help="bank feature layers (default: all, in order)")
    distill.add_argument("--epochs", type=int, default=defaults.epochs)
    distill.add_argument("--batch-size", type=int, default=defaults.batch_size)
    distill.add_argument("--bank-batch-size", type=int, default=defaults.bank_batch_size)
    distill.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    distill.add_argument("--lambda-align", type=float, default=defaults.lambda_align)
    distill.add_argument("--lambda-cano", type=float, default=defaults.lambda_cano)
    distill.add_argument("--lambda-dist", type=float, default=defaults.lambda_dist)
    distill.add_argument("--temperature", type=float, default=defaults.temperature)
    distill.add_argument("--seed", type=int, default=defaults.seed)
    distill.add_argument("--device", default=None)
    evaluate = commands.add_parser("evaluate", help="clean, adversarial and background-shift accuracy of a student")
    evaluate.add_argument("student", help="student.pt from clarep-fast distill")
    evaluate.add_argument("--autoattack", action="store_true", help="also run AutoAttack (slow)")
    evaluate.add_argument("--attack-samples", type=int, default=500)
    evaluate.add_argument("--out", default=None, help="JSON file (default: evaluation.json beside the student)")
    demo = commands.add_parser("demo", help="embedded teacher -> bank -> baseline + CaDistill students -> evaluation -> report.md")
    demo.add_argument("run_dir")
    demo.add_argument("--seeds", type=int, default=1, help="repeat the students with N seeds (mean ± std)")
    demo.add_argument("--epochs", type=int, default=defaults.epochs)


def _distill(args) -> int:
    from clarep_fast.distill.train import DistillConfig, train_student

    config = DistillConfig(
        bank=args.bank, student=args.student, student_layers=tuple(args.student_layers),
        teacher_layers=tuple(args.teacher_layers) if args.teacher_layers else None, epochs=args.epochs,
        batch_size=args.batch_size, bank_batch_size=args.bank_batch_size, learning_rate=args.learning_rate,
        lambda_align=args.lambda_align, lambda_cano=args.lambda_cano, lambda_dist=args.lambda_dist,
        temperature=args.temperature, baseline=args.baseline, seed=args.seed,
    )  # fmt: skip
    path = train_student(config, args.run_dir, device=args.device)
    if is_main_process():
        print(f"student saved to {path}")
    return 0


def _evaluate(args) -> int:
    from pathlib import Path

    from clarep_fast.clarid.bank import write_json
    from clarep_fast.distill.train import load_student
    from clarep_fast.evaluate.robustness import EvaluateConfig, evaluate_student, markdown_table

    student = load_student(args.student)
    results = evaluate_student(student, DataConfig(resolution=int(torch.load(args.student, weights_only=True)["resolution"])),
                               EvaluateConfig(autoattack=args.autoattack, attack_samples=args.attack_samples))  # fmt: skip
    out = Path(args.out) if args.out else Path(args.student).with_name("evaluation.json")
    write_json(out, results)
    table = markdown_table({Path(args.student).parent.name: results})
    out.with_suffix(".md").write_text("Accuracy (%)\n\n" + table + "\n")
    print(table)
    print(f"written to {out} and {out.with_suffix('.md')}")
    return 0


def _demo(args) -> int:
    from clarep_fast.demo import run_demo
    from clarep_fast.distill.train import DistillConfig

    report = run_demo(args.run_dir, seeds=args.seeds, distill=DistillConfig(epochs=args.epochs))
    print(report.read_text())
    print(f"report: {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clarep-fast", description="clarep_fast: fused kernels for CLAReps and CaDistill")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("backends", help="list backends and why any is unavailable")
    check = commands.add_parser("selfcheck", help="check every backend against the reference and time fused vs eager")
    check.add_argument("--quick", action="store_true", help="smaller timing problem")
    teacher = commands.add_parser("train-teacher", help="train or resume the diffusion teacher on the default dataset")
    teacher.add_argument("run_dir", help="run folder: config.json, loss.csv, checkpoint.pt, samples_*.png, teacher/")
    defaults = TrainTeacherConfig()
    teacher.add_argument("--steps", type=int, default=defaults.steps)
    teacher.add_argument("--batch-size", type=int, default=defaults.batch_size)
    teacher.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    teacher.add_argument("--resolution", type=int, default=defaults.data.resolution)
    teacher.add_argument("--rho", type=float, default=defaults.data.rho, help="class correlation of the backgrounds")
    teacher.add_argument("--channels", type=int, nargs="+", default=list(defaults.teacher.channels))
    teacher.add_argument("--layers-per-block", type=int, default=defaults.teacher.layers_per_block)
    teacher.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    teacher.add_argument("--sample-every", type=int, default=defaults.sample_every)
    teacher.add_argument("--seed", type=int, default=defaults.seed)
    teacher.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    _add_search(commands)
    _add_distill(commands)
    args = parser.parse_args(argv)
    handlers = {"search": _search, "distill": _distill, "evaluate": _evaluate, "demo": _demo}
    if args.command in handlers:
        return handlers[args.command](args)
    if args.command == "train-teacher":
        return _train_teacher(args)
    if args.command == "backends":
        _print_backends()
        return 0
    return selfcheck(args.quick)


if __name__ == "__main__":
    sys.exit(main())
