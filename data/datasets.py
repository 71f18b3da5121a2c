"""Few-shot datasets: a common interface over ImageFolder trees, in-memory tensors and the
synthetic scenes.

Every dataset exposes ``labels`` (one int per item), ``class_names`` and ``load(i)`` returning an
RGB PIL image (or a ``(3, H, W)`` tensor for in-memory data); ``mask(i)`` returns the
ground-truth object mask where one exists, else ``None``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from focusvit.errors import ImageReadError

from .images import IMAGE_EXTENSIONS, read_image


@runtime_checkable
class FewShotDataset(Protocol):
    labels: list[int]
    class_names: list[str]

    def load(self, index: int) -> Image.Image | Tensor: ...

    def __len__(self) -> int: ...


class ImageFolderDataset:
    """``root/<class>/<image>`` trees (one folder per class), like torchvision's ImageFolder.

    Args:
        root: dataset directory.
        split: with ``split_file``, keep only the classes listed for this split.
        split_file: a text file of ``<split> <class folder>`` lines (e.g. ``novel 017.Cardinal``),
            or a directory holding ``<split>.txt`` files with one class folder per line.
        classes: explicit class folder names to keep (overrides ``split``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        split_file: str | os.PathLike | None = None,
        classes: list[str] | None = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ImageReadError(f"dataset root {self.root} is not a directory; check the path")
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if classes is None and split is not None:
            classes = read_split(split_file, split) if split_file else None
        if classes is not None:
            missing = sorted(set(classes) - set(folders))
            if missing:
                raise ImageReadError(
                    f"class folders {missing[:5]} listed for {self.root} do not exist"
                )
            folders = [f for f in folders if f in set(classes)]
        self.class_names: list[str] = []
        self.files: list[Path] = []
        self.labels: list[int] = []
        for folder in folders:
            images = sorted(
                p for p in (self.root / folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not images:
                continue
            label = len(self.class_names)
            self.class_names.append(folder)
            self.files.extend(images)
            self.labels.extend([label] * len(images))
        if not self.files:
            raise ImageReadError(
                f"no images found in class folders under {self.root}; expected root/<class>/<image> "
                f"with extensions {', '.join(IMAGE_EXTENSIONS)}"
            )

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Image.Image:
        return read_image(self.files[index])

    def mask(self, index: int) -> None:
        return None


def read_split(split_file: str | os.PathLike, split: str) -> list[str]:
    """Class folder names of ``split`` from a split file or a directory of ``<split>.txt``."""
    path = Path(split_file)
    if path.is_dir():
        path = path / f"{split}.txt"
        if not path.exists():
            raise ImageReadError(
                f"split file {path} does not exist; create it with one class per line"
            )
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    names = []
    for line in path.read_text().splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and parts[0] == split:
            names.append(parts[1].strip())
    if not names:
        raise ImageReadError(f"split file {path} lists no classes for split {split!r}")
    return names


class TensorDataset:
    """In-memory images ``(M, 3, H, W)`` (already preprocessed) with labels ``(M,)``."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | list[int],
        class_names: list[str] | None = None,
        masks: Tensor | None = None,
    ):
        labels = torch.as_tensor(labels).long()
        if images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images must be (M, 3, H, W) with one label each; got {tuple(images.shape)} and "
                f"{labels.shape[0]} labels"
            )
        self.images, self.masks = images, masks
        self.labels = labels.tolist()
        count = int(labels.max()) + 1 if len(labels) else 0
        self.class_names = class_names or [str(i) for i in range(count)]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Tensor:
        return self.images[index]

    def mask(self, index: int) -> np.ndarray | None:
        return None if self.masks is None else self.masks[index].numpy()
