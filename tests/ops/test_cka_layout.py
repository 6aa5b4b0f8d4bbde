"""The CKA stats row and the stats kernels' partials have one named layout each, STATS_FIELDS and
PARTIAL_FIELDS (clarep_fast/reference/cka.py); the Triton constexprs come from them and the C++
enums CkaStat and CkaPartial (csrc/cka/cka.h) must list the same fields in the same order, or a
kernel would read hkk where it wants tr K."""

import re
from pathlib import Path

import pytest

from clarep_fast.reference.cka import PARTIAL_FIELDS, STATS_FIELDS

ROOT = Path(__file__).resolve().parents[2]


def _enum_fields(enum: str) -> list[str]:
    header = (ROOT / "csrc" / "cka" / "cka.h").read_text()
    body = re.search(rf"enum {enum} : int \{{([^}}]*)\}}", header)
    assert body, f"csrc/cka/cka.h has no enum {enum}"
    return [name.strip() for name in body.group(1).split(",")]


def _snake(constant: str, prefix: str) -> str:
    """kStatTraceX -> trace_x"""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", constant.removeprefix(prefix)).lower()


@pytest.mark.parametrize(
    ("enum", "prefix", "count", "fields"),
    [("CkaStat", "kStat", "kNumStats", STATS_FIELDS), ("CkaPartial", "kPartial", "kNumPartials", PARTIAL_FIELDS)],
)
def test_cpp_enums_list_the_python_fields_in_order(enum, prefix, count, fields):
    *names, last = _enum_fields(enum)
    assert last == count
    assert [_snake(name, prefix) for name in names] == list(fields)


def test_triton_constexprs_follow_stats_fields():
    pytest.importorskip("triton")
    from kernels import cka as kernels

    assert kernels.NUM_STATS == len(STATS_FIELDS)
    for name in STATS_FIELDS:
        assert getattr(kernels, f"_{name.upper()}").value == STATS_FIELDS.index(name), name
    assert kernels.NUM_PARTIALS == len(PARTIAL_FIELDS)
    for name in PARTIAL_FIELDS:
        assert getattr(kernels, f"_P_{name.upper()}").value == PARTIAL_FIELDS.index(name), name
