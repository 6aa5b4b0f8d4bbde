"""Data: the training sources of --data (data/sources/: the default digits on class-correlated
backgrounds, image folders, CIFAR-10), the image sets they yield, and the splits."""

from clarep_fast.pipeline.data.images import FolderImages, ImageSet, TensorImages
from clarep_fast.pipeline.data.source import DataConfig, load_splits, resolve
from clarep_fast.pipeline.data.sources.cifar10 import load_cifar10
from clarep_fast.pipeline.data.sources.folder import load_image_folder

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
