"""Fused ops: torch.library custom ops with fake implementations, autograd and backend dispatch."""
