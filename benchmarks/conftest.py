"""Options of the benchmark suite: --quick (small sweep) and --bench-device (cpu or cuda)."""

import pytest
import torch


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
