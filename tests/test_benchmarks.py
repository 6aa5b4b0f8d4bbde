"""The benchmark suite collects every row it promises, and its table computes ratios as it says."""

import subprocess
import sys
from pathlib import Path
import torch

from benchmarks.run import markdown_table, merged
from clarep_fast.ops import OPS

ROOT = Path(__file__).resolve().parent.parent
MODULES = (
    "test_op_table",
    "test_cka",
    "test_feature_tap",
    "test_project_out",
    "test_feature_align",
    "test_cadistill_step",
    "test_clarid_search",
    "test_evaluate_step",
    "test_per_call",
)


def test_quick_suite_collects_every_op():
    completed = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q", "--quick", "-p", "no:cacheprovider", "-o", "testpaths=benchmarks"],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    collected = [line for line in completed.stdout.splitlines() if "::" in line]
    on_disk = {path.stem for path in (ROOT / "benchmarks").glob("test_*.py")}
    assert on_disk == set(MODULES)
    for module in MODULES:
        assert any(line.startswith(f"benchmarks/{module}.py::") for line in collected), (
            f"{module} collected no benchmark"
        )
    for spec in OPS:  # the table benchmark gives every op of the op table its rows
        assert any(line.startswith(f"benchmarks/test_op_table.py::test_op_table[{spec.name}-") for line in collected), (
            f"{spec.name} has no row"
        )
        assert any(line.startswith(f"benchmarks/test_per_call.py::test_per_call[{spec.name}-") for line in collected), (
            f"{spec.name} has no per-call row"
        )


def _record(provider, p50, shape="s", extra=None, **work):
    return {
        "op": "op",
        "provider": provider,
        "mode": "m",
        "shape": shape,
        "dtype": "float32",
        "p50_ms": p50,
        "extra_mb": extra,
        **work,
    }


def test_table_ratios_are_other_over_fused_and_missing_providers_show_a_dash():
    records = [
        _record("fused", 2.0, extra=1.0, min_mb_moved=20.48, gflop=0.02),  # 1 FLOP per byte: memory-bound
        _record("eager", 5.0, extra=8.0),
        _record("fused", 4.0, shape="t", min_mb_moved=1.0, gflop=2.0),  # 1907 FLOP per byte: compute-bound
        _record("eager", 1.0, shape="t"),
    ]
    rows = markdown_table(records).splitlines()[2:]
    assert rows[0] == "| op | s | m | float32 | 2.00 | 5.00 | - | 2.50× | - | 1 / 8 / - | 20.5 MB → 10.0 GB/s |"
    assert rows[1] == "| op | t | m | float32 | 4.00 | 1.00 | - | 0.25× | - | - / - / - | 2.00 GFLOP → 500 GFLOP/s |"


def test_a_subset_run_replaces_only_its_rows():
    previous = [_record("fused", 1.0), _record("eager", 2.0), _record("fused", 1.0, shape="t")]
    result = merged(previous, [_record("fused", 9.0)])
    assert sorted((r["shape"], r["provider"], r["p50_ms"]) for r in result) == [
        ("s", "eager", 2.0),
        ("s", "fused", 9.0),
        ("t", "fused", 1.0),
    ]


def test_rows_from_two_machines_name_their_machine_and_never_share_a_ratio():
    amd = [dict(_record(p, t), device_name="AMD EPYC") for p, t in (("fused", 2.0), ("compile", 1.0))]
    intel = [dict(_record("eager", 8.0), device_name="Intel Xeon")]
    rows = markdown_table(amd + intel).splitlines()[2:]
    assert rows[0].startswith("| op [AMD EPYC] | s |") and "| 0.50× |" in rows[0]
    assert rows[1].startswith("| op [Intel Xeon] | s |") and "2.50×" not in rows[1]


def test_the_scale_projection_counts_products_as_its_docstring_says():
    """benchmarks/scale_projection.py (docs/scale.md's hours): Krylov s steps of r probes cost s·r
    J v + (s − 1)·r VJPs + the linearization; exact takes its cheaper side; a probe's FLOPs are its
    marginal cost in a batched call, counted through the search's own products; the step counts are
    read from the committed top-k results at Krylov's default tolerance only."""
    from benchmarks.scale_projection import STEPS_FROM, jacobian_flops, krylov_steps, product_flops
    from clarep_fast.taps import FeatureTap
    from tests.taps_models import tiny_dit

    cost = {"jv": 3.0, "vjp": 2.0, "linearization": 7.0}
    assert jacobian_flops("krylov", 4096, 4608, 116, 5, cost) == 5 * 116 * 3 + 4 * 116 * 2 + 7
    assert jacobian_flops("exact", 4096, 4608, 116, 5, cost) == 4608 * 2 + 7  # D VJPs: D < 1.5 N
    assert jacobian_flops("exact", 768, 2048, 116, 5, cost) == 768 * 3 + 7  # N J v: 1.5 N < D
    # through a tiny DiT's tap: every product and the linearization cost about what a forward does
    # (the weights need no gradient), none is free
    tap = FeatureTap(tiny_dit(), ["transformer_blocks.1"], pool=2, fused=False)
    counted = product_flops(tap, torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.tensor([3]))
    for kind in ("jv", "vjp", "linearization"):
        assert 0.5 * counted["forward"] < counted[kind] < 4 * counted["forward"], (kind, counted)
    measured = krylov_steps(STEPS_FROM)
    assert set(measured) == {10, 20}
    assert all(
        len(runs) == len(STEPS_FROM) and all(1 <= run["steps"] <= 50 for run in runs) for runs in measured.values()
    )
