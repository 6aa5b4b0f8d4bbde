"""clarep_fast: fused kernels for canonical latent representations (CLAReps) and CaDistill.

Importing this package imports torch only: no triton, no compiled extension, no CUDA initialization.
Those load on first use of an op that needs them.
"""

from clarep_fast.backends import BACKENDS, available_backends, use_backend
from clarep_fast.finite import finite_check
from clarep_fast.modules import CKA
from clarep_fast.ops.cka import cka, cka_pairs
from clarep_fast.ops.feature_align import feature_align
from clarep_fast.ops.feature_pool import feature_pool, split_packed
from clarep_fast.ops.project_out import project_out
from clarep_fast.taps import FeatureTap, TapOutput

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "CKA",
    "FeatureTap",
    "TapOutput",
    "available_backends",
    "cka",
    "cka_pairs",
    "feature_align",
    "feature_pool",
    "finite_check",
    "project_out",
    "split_packed",
    "use_backend",
]
