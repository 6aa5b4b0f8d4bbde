"""Options of the benchmark suite: --quick (small sweep) and --bench-device (cpu or cuda); in the peak
pass (CLAREP_FAST_BENCH_PASS=peak, benchmarks/common.py) every timing call runs one round."""

import pytest
import torch

from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.common import BENCH_PASS


class _OneRound(BenchmarkFixture):
    """pytest-benchmark's fixture with every timing call cut to one round: the peak pass only needs
    the row recorded (its extra_info), not its times."""

    def __call__(self, function_to_benchmark, *args, **kwargs):
        return super().pedantic(function_to_benchmark, args=args, kwargs=kwargs, rounds=1, iterations=1)

    def pedantic(
        self, target, args=(), kwargs=None, setup=None, teardown=None, rounds=1, warmup_rounds=0, iterations=1
    ):
        return super().pedantic(
            target, args=args, kwargs=kwargs, setup=setup, teardown=teardown, rounds=1, iterations=1
        )


@pytest.fixture
def benchmark(benchmark):
    if BENCH_PASS == "peak":
        benchmark.__class__ = _OneRound  # pytest-benchmark insists on its own fixture type
    return benchmark


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", help="run the small sweep only")
    parser.addoption("--bench-device", default="cpu", choices=("cpu", "cuda"), help="device to benchmark on")


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return request.config.getoption("--quick")


@pytest.fixture(scope="session")
def bench_device(request) -> str:
    device = request.config.getoption("--bench-device")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device cuda needs a CUDA device")
    return device


def pytest_generate_tests(metafunc):
    """Benchmarks declare their sweeps as CASES (full) and QUICK_CASES on their module."""
    if "case" in metafunc.fixturenames:
        module = metafunc.module
        cases = module.QUICK_CASES if metafunc.config.getoption("--quick") else module.CASES
        device = metafunc.config.getoption("--bench-device")
        cases = [case for case in cases if device in case.get("devices", ("cpu", "cuda"))]
        metafunc.parametrize("case", cases, ids=[module.case_id(case) for case in cases])
