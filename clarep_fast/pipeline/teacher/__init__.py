"""The diffusion teacher: model construction and loading, CFG, DDIM sampling and inversion, training."""
