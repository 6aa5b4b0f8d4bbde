"""The GPU compile gate: every Triton and CUDA kernel compiled for real GPUs, without one.

    .venv/bin/python -m scripts.gpu_gate --write docs/gpu.md     # what CI runs (tests/test_gpu_gate.py)
    .venv/bin/python -m scripts.gpu_gate --arch 90 --list        # the Triton launches only, no compiling

1. Triton: every launch the ops' launch cases make on the triton backend (gpu_gate/launches.py),
   compiled for each architecture (sm_80, sm_90; sm_100 as well, the ptxas Triton carries supports
   it), resources read from the cubin.
2. CUDA: every kernel of csrc/*/*_cuda.cu built with nvcc for each architecture.
3. Limits: the op refuses, before launching, the first shape past its documented limit, and the
   specialization that shape would compile is the first to fail the checks (the limit is tight).
A compile error, a spill, the register ceiling, or a block that cannot be resident fails the gate,
naming kernel, specialization and figure. Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from scripts.gpu_gate.limits import DEVICES, problems


def compile_all(launches, archs, jobs: int) -> dict:
    """(launch, arch) -> (Resources or None, error or None), compiled over ``jobs`` processes."""
    from scripts.gpu_gate.compile_triton import compile_job

    work = [(launch, arch) for arch in archs for launch in launches]
    if jobs <= 1:
        return dict(zip(work, map(compile_job, work)))
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return dict(zip(work, pool.map(compile_job, work, chunksize=4)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.gpu_gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=sorted(DEVICES), choices=sorted(DEVICES))
    parser.add_argument("--jobs", type=int, default=2, help="compiler processes (default 2)")
    parser.add_argument("--write", type=Path, help="write the resource tables (docs/gpu.md) here")
    parser.add_argument("--list", action="store_true", help="list the recorded Triton launches and stop")
    parser.add_argument("--no-cuda", action="store_true", help="skip the csrc/ CUDA kernels")
    args = parser.parse_args(argv)

    from scripts.gpu_gate import cuda_kernels, limit_checks, report
    from scripts.gpu_gate.launches import recorded_launches, unlaunched_kernels

    start = time.time()
    launches = recorded_launches()
    if args.list:
        for launch in launches:
            print(f"{launch.kernel:45s} {launch.label()}")
        return 0
    failures = [f"{name}: no launch case reaches this kernel" for name in unlaunched_kernels(launches)]
    print(f"gpu_gate: {len(launches)} Triton specializations × sm_{', sm_'.join(map(str, args.arch))}", flush=True)
    results = compile_all(launches, args.arch, args.jobs)
    for (launch, arch), (resources, error) in results.items():
        where = f"{launch.kernel} [{launch.label()}] on sm_{arch}"
        if error:
            failures.append(f"{where}: does not compile: {error}")
        else:
            failures += [f"{where}: {problem}" for problem in problems(resources, DEVICES[arch])]
    print(f"gpu_gate: Triton compiled in {time.time() - start:.0f} s", flush=True)

    cuda = {}
    if not args.no_cuda:
        caps = limit_checks.cuda_dynamic_caps()
        for arch in args.arch:
            try:
                cuda[arch] = cuda_kernels.build(arch, caps)
            except (FileNotFoundError, RuntimeError) as error:
                failures.append(f"csrc CUDA kernels on sm_{arch}: {error}")
                continue
            for kernel in cuda[arch]:
                where = f"{kernel.source} {kernel.name} on sm_{arch}"
                if kernel.resources is None:
                    failures.append(f"{where}: declares no __launch_bounds__, so its block size is unknown to the gate")
                else:
                    failures += [f"{where}: {problem}" for problem in problems(kernel.resources, DEVICES[arch])]
        print(f"gpu_gate: CUDA built in {time.time() - start:.0f} s", flush=True)

    limits = limit_checks.check(args.arch)
    failures += [line for line in limits if line.startswith("FAIL")]
    if args.write:
        args.write.write_text(report.render(launches, results, cuda, limits, args.arch))
        print(f"gpu_gate: wrote {args.write}")
    for failure in failures:
        print(f"FAIL {failure}" if not failure.startswith("FAIL") else failure)
    verdict = "passed" if not failures else f"{len(failures)} failures"
    print(
        f"gpu_gate: {verdict} ({len(launches)} Triton specializations, {sum(map(len, cuda.values()))} CUDA kernel builds, {time.time() - start:.0f} s)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
