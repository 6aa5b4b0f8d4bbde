"""Pure-PyTorch references: the oracle for tests, the eager baseline for benchmarks, the fallback backend."""

from clarep_fast.reference.cka import cka_from_grams_reference, cka_reference, cka_stats_reference
from clarep_fast.reference.feature_align import feature_align_reference
from clarep_fast.reference.feature_pool import feature_pool_reference
from clarep_fast.reference.project_out import project_out_reference

__all__ = [
    "cka_from_grams_reference",
    "cka_reference",
    "cka_stats_reference",
    "feature_align_reference",
    "feature_pool_reference",
    "project_out_reference",
]
