"""Test setup: CPU-only runs execute Triton kernels in its interpreter; GPU tests skip without a GPU."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must happen before triton is first imported (the kernels are defined at import).
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
