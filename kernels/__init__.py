"""Triton kernels, one file per op; installed as ``clarep_fast.kernels`` (imports triton)."""
