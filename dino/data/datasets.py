"""Folder datasets: class subfolders (ImageFolder layout) and flat/recursive folders of images."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from dino.data.io import IMAGE_EXTENSIONS, list_images, open_image

__all__ = ["ImageFileDataset", "ImageFolderDataset"]

Transform = Callable[[Image.Image], Any]


class ImageFileDataset(Dataset):
    """A list of image files (or a folder searched for them); items are ``(transform(image), index)``.

    Args:
        paths: Image paths, or folders to search.
        transform: Applied to the RGB PIL image; the PIL image itself is returned when None.
        recursive: Search folders recursively.
        extensions: File extensions to keep when searching folders.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        transform: Transform | None = None,
        recursive: bool = True,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        self.paths = list_images(paths, recursive=recursive, extensions=extensions)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = open_image(self.paths[index])
        return (self.transform(image) if self.transform else image), index


class ImageFolderDataset(Dataset):
    """Images in class subfolders ``root/<class>/**/<image>``; items are ``(transform(image), label)``.

    Classes are the sorted subfolder names, as in torchvision's ImageFolder.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Transform | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder")
        self.root = root
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise ValueError(f"{root}: no class subfolders found (expected root/<class>/<image>)")
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = [
            (path, self.class_to_idx[name])
            for name in self.classes
            for path in list_images(root / name, extensions=extensions)
        ]
        if not self.samples:
            raise ValueError(f"{root}: class subfolders contain no images with extensions {list(extensions)}")
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    @property
    def paths(self) -> list[Path]:
        return [path for path, _ in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = open_image(path)
        return (self.transform(image) if self.transform else image), label
