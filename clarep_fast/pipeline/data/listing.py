"""Image files on disk: the class-folder layout root/<class name>/<image files> that image datasets,
ImageNet's validation set and the evaluation sets (ImageNet-9, -C, -A, -R) all use."""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def class_folders(root: str | Path) -> list[str]:
    """The sorted names of root's sub-folders; a missing root or one without sub-folders is refused."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not found:
        raise ValueError(f"{root} has no class sub-folders; expected root/<class name>/<images>")
    return found


def list_image_folder(root: str | Path, classes: list[str] | None = None) -> tuple[list[Path], torch.Tensor, list[str]]:
    """(image files, labels (N,), class names) of root/<class>/<image>; labels follow the sorted
    class names (or ``classes``, when given: a test folder must hold the train folder's classes)."""
    root = Path(root)
    found = class_folders(root)
    if classes is not None and found != classes:
        raise ValueError(f"{root} has class folders {found} but the training data has {classes}")
    files, labels = [], []
    for label, name in enumerate(found):
        members = image_files(root / name)
        if not members:
            raise ValueError(f"class folder {root / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += members
        labels += [label] * len(members)
    return files, torch.tensor(labels), found
