"""Fused ops, one file each: torch.library custom op, fake implementation, autograd, backend dispatch.

OPS is the op table: the self-check, the tests' backend sweep and the benchmark suite iterate it,
so a new op is its own slice (docs/adding_an_op.md) plus its entry here.
"""

from clarep_fast.ops import cka, feature_align, feature_pool, project_out

OPS = (cka.SPEC, feature_pool.SPEC, project_out.SPEC, feature_align.SPEC)
