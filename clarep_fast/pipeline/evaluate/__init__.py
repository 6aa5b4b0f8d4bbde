"""Evaluation: clustering quality of features (NMI) and background statistics of images."""
