"""Run the benchmark suite and write its results: JSON + CSV (fixed schema) and a markdown table.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--out DIR] [--module test_cka.py] [-k EXPR] [--render]

Results land in DIR (default benchmarks/results/) as <device>[-quick].{json,csv,md,png}; the markdown
table (fused against eager and torch.compile, as ratios) is also printed, and with the default DIR
the README's performance section (tables and plots) is regenerated from the result files.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import readme  # noqa: E402
from benchmarks.common import RESULT_FIELDS, ROOT, device_name, git_sha, quantiles_ms, versions  # noqa: E402
from benchmarks.plot import write_plot  # noqa: E402


COMPUTE_BOUND_FLOP_PER_BYTE = 10  # above this arithmetic intensity a row's rate is given in FLOP/s, else in bytes/s


def run_suite(device: str, quick: bool, select: str | None, module: str | None = None) -> list[dict]:
    """Time the suite; on CPU take peak memory from a separate pass (benchmarks/common.py says why)."""
    if device == "cuda":
        return _run_pass(device, quick, select, "both", module)
    peaks = {_key(record): record for record in _run_pass(device, quick, select, "peak", module)}
    records = _run_pass(device, quick, select, "time", module)
    for record in records:
        measured = peaks.get(_key(record), {})
        record.update(peak_mb=measured.get("peak_mb"), extra_mb=measured.get("extra_mb"))
    return records


def _key(record: dict) -> tuple:
    return tuple(record.get(field) for field in ("op", "provider", "mode", "shape", "dtype"))


def _run_pass(device: str, quick: bool, select: str | None, bench_pass: str, module: str | None = None) -> list[dict]:
    """Run pytest-benchmark in a child process (its own allocator settings) and parse its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.json"
        command = [sys.executable, "-m", "pytest", f"benchmarks/{module}" if module else "benchmarks", "-q", "-p", "no:cacheprovider", f"--bench-device={device}",
                   f"--benchmark-json={raw}", "--benchmark-save-data", "--benchmark-disable-gc", "-o", "testpaths=benchmarks"]  # fmt: skip
        if quick:
            command.append("--quick")
        if select:
            command += ["-k", select]
        environment = dict(os.environ, CLAREP_FAST_BENCH_PASS=bench_pass)
        environment.pop("MALLOC_MMAP_THRESHOLD_", None)
        if bench_pass == "peak":  # CPU peak memory needs it (benchmarks/common.py); CUDA counts on the device
            environment["MALLOC_MMAP_THRESHOLD_"] = "65536"
        print(f"== benchmark pass: {bench_pass}", flush=True)
        completed = subprocess.run(command, cwd=ROOT, env=environment)
        if completed.returncode not in (0, 5):
            raise SystemExit(f"benchmark run failed (pytest exit {completed.returncode})")
        text = raw.read_text() if raw.exists() else ""
        # every selected row skipped (e.g. no peak pass for it)
        report = json.loads(text) if text.strip() else {"benchmarks": []}
    common = {"device": device, "device_name": device_name(device), "git_sha": git_sha(), **versions()}
    records = []
    for bench in report["benchmarks"]:
        info, data = bench["extra_info"], [seconds * 1e3 for seconds in bench["stats"]["data"]]
        record = {**common, **{k: info.get(k) for k in RESULT_FIELDS if k in info}}
        if "p50_ms" not in info:  # CPU: wall-clock rounds from pytest-benchmark
            record.update(quantiles_ms(data))
        record["rounds"] = info.get("rounds", len(data))  # rows timed by their own loop say how many rounds
        records.append({field: record.get(field) for field in RESULT_FIELDS})
    return records


def markdown_table(records: list[dict]) -> str:
    """One row per (op, shape, mode, dtype): fused time, ratios to eager and compile, extra memory, and
    the fused call's rate at its minimum work: one-pass bytes (memory-bound ops) or FLOPs."""
    groups: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for record in records:
        case = (record["op"], record["shape"], record["mode"], record["dtype"], record.get("device_name"))
        groups[case][record["provider"]] = record
    lines = [
        "| op | shape | grads | dtype | fused ms | eager ms | compile ms | fused vs eager | fused vs compile | extra MB fused / eager / compile | minimum work → fused rate |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def rate(record):
        if not record or not record["p50_ms"]:
            return "-"
        seconds, megabytes, gflop = record["p50_ms"] / 1e3, record.get("min_mb_moved"), record.get("gflop")
        if gflop and (not megabytes or gflop * 1e9 > COMPUTE_BOUND_FLOP_PER_BYTE * megabytes * 2**20):
            return f"{gflop:.2f} GFLOP → {gflop / seconds:.0f} GFLOP/s"
        if megabytes:
            return f"{megabytes:.1f} MB → {megabytes / 1024 / seconds:.1f} GB/s"
        return "-"

    def ms(provider_records, name):
        record = provider_records.get(name)
        return record["p50_ms"] if record else None

    def extra(provider_records, name):
        record = provider_records.get(name)
        return "-" if not record or record["extra_mb"] is None else f"{record['extra_mb']:.0f}"

    # rows merged from several machines name theirs (a ratio is only ever within one row's machine)
    mixed = len({record.get("device_name") for record in records}) > 1

    def where(by_provider) -> str:
        record = next(iter(by_provider.values()))
        return f" [{record.get('device_name', '?')}]" if mixed else ""

    for (op, shape, mode, dtype, _), by_provider in groups.items():
        fused, eager, compiled = ms(by_provider, "fused"), ms(by_provider, "eager"), ms(by_provider, "compile")
        ratio = lambda other: f"{other / fused:.2f}×" if fused and other else "-"  # noqa: E731
        cell = lambda value: "-" if value is None else f"{value:.2f}" if value >= 1 else f"{value:.3f}"  # noqa: E731
        memory = " / ".join(extra(by_provider, name) for name in ("fused", "eager", "compile"))
        lines.append(
            f"| {op}{where(by_provider)} | {shape} | {mode} | {dtype} | {cell(fused)} | {cell(eager)} | {cell(compiled)} | {ratio(eager)} | {ratio(compiled)} | {memory} | {rate(by_provider.get('fused'))} |"
        )
        for provider, record in by_provider.items():  # other providers (fused-triton, model-only, ...)
            if provider in ("fused", "eager", "compile"):
                continue
            versus = lambda other: f"{other / record['p50_ms']:.2f}×" if other else "-"  # noqa: E731
            lines.append(
                f"| {op} ({provider}) | {shape} | {mode} | {dtype} | {cell(record['p50_ms'])} | | | {versus(eager)} | {versus(compiled)} | {extra(by_provider, provider)} | {rate(record)} |"
            )
    return "\n".join(lines)


def merged(previous: list[dict], records: list[dict]) -> list[dict]:
    """Earlier results updated by this run's: a subset run (-k) replaces only the rows it measured."""
    fresh = {_key(record) for record in records}
    return [record for record in previous if _key(record) not in fresh] + records


def write_results(records: list[dict], out: Path, stem: str) -> str:
    """Merge into <stem>.json, write <stem>.csv and <stem>.md under ``out`` atomically; return the table."""
    out.mkdir(parents=True, exist_ok=True)
    existing = out / f"{stem}.json"
    if existing.exists():
        records = merged(json.loads(existing.read_text()), records)
    table = markdown_table(records)
    first = records[0] if records else {}
    shas = sorted({str(record.get("git_sha", "?")) for record in records})
    git = (
        f"git {shas[0]}" if len(shas) == 1 else f"rows measured at git {', '.join(shas)} (each row's in the .json/.csv)"
    )
    devices = sorted({str(record.get("device_name", "?")) for record in records})
    machine = (
        f"Device: {devices[0]}" if len(devices) == 1 else f"Devices (each row names its own): {'; '.join(devices)}"
    )
    header = f"{machine}; torch {first.get('torch', '?')}, triton {first.get('triton', '?')}; {git}. Times are medians (ms); ratios are eager/fused and compile/fused (>1: fused is faster); extra MB = peak memory of the call minus its outputs (the input gradients for CKA, the packed features for the tap); minimum work = the FLOPs for compute-bound rows (over {COMPUTE_BOUND_FLOP_PER_BYTE} FLOP per byte), else the bytes one pass must move (inputs read once, outputs written once), with the fused call's rate at that minimum."
    contents = {
        ".json": json.dumps(records, indent=1),
        ".md": f"{header}\n\n{table}\n",
    }
    for suffix, text in contents.items():
        _atomic_write(out / f"{stem}{suffix}", text)
    temporary = out / f".{stem}.csv.tmp"
    with open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        writer.writerows(records)
    temporary.replace(out / f"{stem}.csv")
    return f"{header}\n\n{table}"


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sweep (minutes, not tens of minutes)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--module", default=None, help="one benchmark file of benchmarks/ (say test_cka.py) instead of all"
    )
    parser.add_argument("-k", dest="select", default=None, help="pytest -k expression to run a subset")
    parser.add_argument(
        "--render", action="store_true", help="measure nothing: rewrite the table, plot and README from the stored JSON"
    )
    args = parser.parse_args()
    stem = args.device + ("-quick" if args.quick else "")
    if args.render:
        stored = args.out / f"{stem}.json"
        if not stored.exists():
            raise SystemExit(f"{stored} does not exist; run the suite first")
        records = json.loads(stored.read_text())
    else:
        records = run_suite(args.device, args.quick, args.select, args.module)
    if not records:
        raise SystemExit("no benchmark ran")
    print(write_results(records, args.out, stem))
    merged_records = json.loads((args.out / f"{stem}.json").read_text())
    write_plot(
        merged_records,
        args.out / f"{stem}.png",
        f"{merged_records[0].get('device_name', stem)}: fused vs eager and torch.compile",
    )
    if args.out.resolve().is_relative_to((ROOT / "benchmarks" / "results").resolve()):
        readme.main()  # the README's table and plots come from these files


if __name__ == "__main__":
    main()
