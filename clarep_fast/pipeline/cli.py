"""The ``clarep-fast`` command line. Each command's flags come from its config dataclass
(clarep_fast/pipeline/options.py); ``clarep-fast <command> --help`` lists them.

    clarep-fast backends                 which backends are usable here, and why not
    clarep-fast selfcheck [--quick]      every usable backend of every op in the op table against the
                                         reference (forward and backward), then fused vs eager CKA time
    clarep-fast train-teacher RUN_DIR    train (or resume) a class-conditional pixel diffusion teacher
                                         on a dataset (--data); RUN_DIR/teacher is the result
    clarep-fast search BANK_DIR          CLARep search (CLARID) into a bank; resumes; torchrun splits it
    clarep-fast distill RUN_DIR          CaDistill (or --baseline) student training; resumes; torchrun: DDP
    clarep-fast evaluate STUDENT.pt      clean, adversarial and background-shift accuracy, and the
                                         field's sets (--sets: ImageNet-9, -C, -A, -R, ReaL)
    clarep-fast demo RUN_DIR             the whole pipeline (default: the embedded teacher and data), with report.md

Errors print one line and exit with 2 (bad input: a flag out of range, a missing or damaged file, a
folder held by another run) or 1 (the system: out of space, ...); ``--debug`` shows the traceback.
Ctrl-C and SIGTERM stop cleanly after the last finished write (exit 130 / 143): rerun the same
command to resume.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Callable, NamedTuple

import torch

from clarep_fast.pipeline.options import add_options, bounded, config_from_args
from clarep_fast.pipeline.rundir import RunFolderBusy
from clarep_fast.pipeline.runtime import limit_threads


def _backends(args) -> int:
    from clarep_fast.selfcheck import print_backends

    print_backends()
    return 0


def _selfcheck(args) -> int:
    from clarep_fast.selfcheck import run_selfcheck

    return run_selfcheck(quick=args.quick)


def _runtime(args):
    """The run-time settings of a pipeline command: bound here once, handed to the command."""
    from clarep_fast.pipeline.runtime import Runtime

    return Runtime(device=args.device, workers=args.workers)


def _train_teacher(args) -> int:
    from clarep_fast.pipeline.teacher.train import TrainTeacherConfig, train_teacher

    teacher_dir = train_teacher(config_from_args(TrainTeacherConfig, args), args.run_dir, runtime=_runtime(args))
    print(f"teacher saved to {teacher_dir}")
    return 0


def _search(args) -> int:
    from clarep_fast.pipeline.clarid.search import SearchConfig, run_search
    from clarep_fast.pipeline.distributed import is_main_process

    bank = run_search(config_from_args(SearchConfig, args), args.bank_dir, runtime=_runtime(args))
    if is_main_process():
        print(f"CLARep bank written to {bank} (summary.json, canonical.png, nmi.png)")
    return 0


def _distill(args) -> int:
    from clarep_fast.pipeline.distill.train import DistillConfig, train_student
    from clarep_fast.pipeline.distributed import is_main_process

    path = train_student(config_from_args(DistillConfig, args), args.run_dir, runtime=_runtime(args))
    if is_main_process():
        print(f"student saved to {path}")
    return 0


def _evaluate(args) -> int:
    from clarep_fast.pipeline.evaluate.robustness import EvaluateConfig
    from clarep_fast.pipeline.evaluate.student_file import evaluate_student_file

    config = config_from_args(EvaluateConfig, args)
    _, out = evaluate_student_file(args.student, config, data=args.data, runtime=_runtime(args), out=args.out)
    print(out.with_suffix(".md").read_text())
    print(f"written to {out} and {out.with_suffix('.md')}")
    return 0


def _demo(args) -> int:
    from clarep_fast.pipeline.demo import DemoConfig, run_demo

    report = run_demo(args.run_dir, config_from_args(DemoConfig, args), runtime=_runtime(args))
    print(report.read_text())
    print(f"report: {report}")
    return 0


def _config_class(module: str, name: str) -> Callable[[], type]:
    """The config dataclass of a pipeline command, imported only when its parser is built."""

    def load():
        import importlib

        return getattr(importlib.import_module(module), name)

    return load


class Command(NamedTuple):
    help: str
    run: Callable[[argparse.Namespace], int]
    positional: tuple[tuple[str, str], ...] = ()  # (name, help)
    config: Callable[[], type] | None = None  # its flags: one per config field
    extra: tuple[tuple[str, dict], ...] = ()  # flags that are not config fields


DEVICE = ("--device", {"default": None, "help": "default: cuda (the rank's GPU under torchrun) if available, else cpu"})
WORKERS = (
    "--workers",
    {
        "default": 0,
        "type": bounded(int, low=0),
        "help": "DataLoader workers decoding folder images (0: in the main process); an int >= 0",
    },
)
RUNTIME = (DEVICE, WORKERS)  # run-time settings (pipeline/runtime.py): never config, never compared on resume

COMMANDS = {
    "backends": Command("list backends and why any is unavailable", _backends),
    "selfcheck": Command("check every backend of every op against the reference and time fused vs eager", _selfcheck,
                         extra=(("--quick", {"action": "store_true", "help": "smaller timing problem"}),)),
    "train-teacher": Command("train or resume a pixel diffusion teacher (UNet2DModel) on a dataset", _train_teacher,
                             (("run_dir", "run folder: config.json, loss.csv, checkpoint.pt, samples_*.png, teacher/"),),
                             _config_class("clarep_fast.pipeline.teacher.train", "TrainTeacherConfig"), RUNTIME),
    "search": Command("CLARep search into a bank (resumable; torchrun splits it)", _search,
                      (("bank_dir", "bank folder: config.json, shards/, summary.json, canonical.png, nmi.png"),),
                      _config_class("clarep_fast.pipeline.clarid.search", "SearchConfig"), RUNTIME),
    "distill": Command("train a CaDistill (or baseline) student from a CLARep bank", _distill,
                       (("run_dir", "run folder: config.json, metrics.csv/json, checkpoint.pt, student.pt"),),
                       _config_class("clarep_fast.pipeline.distill.train", "DistillConfig"), RUNTIME),
    "evaluate": Command("clean, adversarial and background-shift accuracy of a student, and the field's sets (--sets)", _evaluate,
                        (("student", "student.pt from clarep-fast distill, or its run folder"),),
                        _config_class("clarep_fast.pipeline.evaluate.robustness", "EvaluateConfig"),
                        (("--out", {"default": None, "help": "JSON file (default: evaluation.json beside the student)"}),
                         ("--data", {"default": None, "help": "dataset whose test split is used (default: the one the student was trained on)"}),
                         *RUNTIME)),
    "demo": Command("embedded teacher -> bank -> baseline + CaDistill students -> evaluation -> report.md", _demo,
                    (("run_dir", "demo folder: bank/, one folder per student, evaluation.json, report.md"),),
                    _config_class("clarep_fast.pipeline.demo", "DemoConfig"), RUNTIME),
}  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: what is wrong and where to look, not the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` given, only that command's config is imported (fast --help)."""
    parser = _Parser(prog="clarep-fast", description="clarep_fast: fused kernels for CLAReps and CaDistill")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, spec in COMMANDS.items():
        sub = commands.add_parser(name, help=spec.help, description=spec.help)
        for positional, text in spec.positional:
            sub.add_argument(positional, help=text)
        if spec.config is not None and name == command:
            add_options(sub, spec.config())
        for flag, keywords in spec.extra:
            sub.add_argument(flag, **keywords)
    return parser


class Terminated(BaseException):
    """SIGTERM (a scheduler's preemption), raised where the process is: writes in flight are abandoned whole."""


def _terminate(signum, frame):
    raise Terminated()


def _check_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--device must be cpu or a visible CUDA device; anything else is refused before any work starts."""
    device = getattr(args, "device", None)
    if device is None:
        return
    prefix = f"clarep-fast {args.command}: error: argument --device:"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parser.exit(2, f"{prefix} {device!r} is not a torch device (cpu, cuda, cuda:1, ...)\n")
    if parsed.type not in ("cpu", "cuda"):
        parser.exit(2, f"{prefix} {device!r}: clarep-fast runs on cpu and cuda devices only\n")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, f"{prefix} {device!r} was asked for but no CUDA device is visible here; use --device cpu\n")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        parser.exit(
            2,
            f"{prefix} {device!r} was asked for but only {torch.cuda.device_count()} CUDA device(s) are visible (cuda:0 ...)\n",
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [word for word in argv if word != "--debug"]
    command = next((word for word in argv if word in COMMANDS), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    _check_device(parser, args)
    limit_threads()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        print(
            f"clarep-fast {args.command}: interrupted; what was finished is saved: rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    except Terminated:
        print(
            f"clarep-fast {args.command}: terminated; what was finished is saved: rerun the same command to resume",
            file=sys.stderr,
        )
        return 143
    except (
        ValueError,
        LookupError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        RunFolderBusy,
    ) as error:
        if debug:
            raise
        print(f"clarep-fast {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if debug:
            raise
        print(f"clarep-fast {args.command}: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # a fault nobody foresaw: still one line, the traceback behind --debug
        if debug:
            raise
        print(
            f"clarep-fast {args.command}: unexpected error: {type(error).__name__}: {error} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
