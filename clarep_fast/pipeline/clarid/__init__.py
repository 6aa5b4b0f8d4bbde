"""CLARID: canonical latent representations by removing a feature Jacobian's top singular directions."""

from clarep_fast.pipeline.clarid.bank import Bank, load_bank
from clarep_fast.pipeline.clarid.jacobian import TopK, principal_angle, topk_right_singular
from clarep_fast.pipeline.clarid.search import SearchConfig, run_search

__all__ = ["Bank", "SearchConfig", "TopK", "load_bank", "principal_angle", "run_search", "topk_right_singular"]
