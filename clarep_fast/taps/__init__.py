"""Multi-layer feature extraction: staged forwards with early exit, and the fused pooling tap."""

from clarep_fast.taps.tap import FeatureTap, TapOutput

__all__ = ["FeatureTap", "TapOutput"]
