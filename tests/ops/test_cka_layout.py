"""The CKA stats row has one named layout, STATS_FIELDS (clarep_fast/reference/cka.py); the Triton
constexprs come from it and the C++ enum CkaStat (csrc/cka/cka.h) must list the same fields in the
same order, or a kernel would read hkk where it wants tr K."""

import re
from pathlib import Path

import pytest

from clarep_fast.reference.cka import STATS_FIELDS

ROOT = Path(__file__).resolve().parents[2]


def _enum_fields() -> list[str]:
    header = (ROOT / "csrc" / "cka" / "cka.h").read_text()
    body = re.search(r"enum CkaStat : int \{([^}]*)\}", header)
    assert body, "csrc/cka/cka.h has no enum CkaStat"
    return [name.strip() for name in body.group(1).split(",")]


def _snake(constant: str) -> str:
    """kStatTraceX -> trace_x"""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", constant.removeprefix("kStat")).lower()


def test_cpp_enum_lists_stats_fields_in_order():
    *fields, count = _enum_fields()
    assert count == "kNumStats"
    assert [_snake(name) for name in fields] == list(STATS_FIELDS)


def test_triton_constexprs_follow_stats_fields():
    pytest.importorskip("triton")
    from kernels import cka as kernels

    assert kernels.NUM_STATS == len(STATS_FIELDS)
    for name in STATS_FIELDS:
        assert getattr(kernels, f"_{name.upper()}").value == STATS_FIELDS.index(name), name
