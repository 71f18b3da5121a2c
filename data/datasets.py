"""Few-shot datasets: a common interface over ImageFolder trees, in-memory tensors and the
synthetic scenes.

Every dataset exposes ``labels`` (one int per item), ``class_names`` and ``load(i)`` returning an
RGB PIL image (or a ``(3, H, W)`` tensor for in-memory data); ``mask(i)`` returns the
ground-truth object mask where one exists (bool ``(H, W)``, aligned with ``load(i)``), else
``None``. Image datasets are also indexable like :class:`~focusvit.data.SyntheticScenes`:
``dataset[i]`` is ``(image, label, mask or None)``. Put images and masks through the model's
preprocessing with ``backbone.preprocess(images)`` and ``backbone.preprocess_masks(masks)``
(the same resize and crop) for the localisation metrics (``prompt_precision``,
``pointing_game``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from focusvit.errors import ConfigError, ImageReadError, InputSizeError

from .images import IMAGE_EXTENSIONS, read_image, read_mask


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
        mask_root: a folder parallel to ``root`` holding one ground-truth object mask per image
            at the same relative path, with any image extension (``root/cls/a.jpg`` ->
            ``mask_root/cls/a.png``); nonzero pixels are object (see
            :func:`~focusvit.data.images.read_mask`). Each mask must have its image's size.
            ``None``: :meth:`mask` returns ``None``.

    Raises:
        ImageReadError: a missing root, class folder, or (with ``mask_root``) a missing mask,
            naming the expected path.
        ConfigError: ``split`` without ``split_file``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        split_file: str | os.PathLike | None = None,
        classes: list[str] | None = None,
        mask_root: str | os.PathLike | None = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ImageReadError(f"dataset root {self.root} is not a directory; check the path")
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if classes is None and split is not None:
            if not split_file:
                raise ConfigError(
                    f"split={split!r} needs split_file (a file of '<split> <class folder>' lines "
                    "or a folder of <split>.txt files); or pass classes=[...], or drop split to "
                    "use every class folder"
                )
            classes = read_split(split_file, split)
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
        self.mask_root = None if mask_root is None else Path(mask_root)
        self.mask_files: list[Path] | None = None
        if self.mask_root is not None:
            self.mask_files = self._find_masks(self.mask_root)

    def _find_masks(self, mask_root: Path) -> list[Path]:
        """The mask file of every image (same relative path, any image extension)."""
        if not mask_root.is_dir():
            raise ImageReadError(
                f"mask folder {mask_root} is not a directory; pass mask_root=<folder with one "
                "mask per image at the same relative path as under the dataset root>"
            )
        found: dict[Path, Path] = {}
        order = {ext: rank for rank, ext in enumerate(IMAGE_EXTENSIONS)}
        for path in sorted(mask_root.rglob("*"), key=lambda p: order.get(p.suffix.lower(), 99)):
            if path.suffix.lower() in order and path.is_file():
                found.setdefault(path.relative_to(mask_root).with_suffix(""), path)
        masks, missing = [], []
        for image in self.files:
            key = image.relative_to(self.root).with_suffix("")
            if key in found:
                masks.append(found[key])
            else:
                missing.append(image)
        if missing:
            expected = mask_root / missing[0].relative_to(self.root).with_suffix(".png")
            raise ImageReadError(
                f"no mask for {len(missing)} of {len(self.files)} images: image {missing[0]} "
                f"needs the mask {expected} (any image extension: "
                f"{', '.join(IMAGE_EXTENSIONS)}); add the masks, or pass classes=[...] to leave "
                "out classes without masks"
            )
        return masks

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Image.Image:
        """RGB image ``index`` (EXIF orientation applied), ``(W, H)`` pixels."""
        return read_image(self.files[index])

    def mask(self, index: int) -> np.ndarray | None:
        """Bool object mask ``(H, W)`` of image ``index`` at its resolution, or ``None`` without
        ``mask_root``.

        Raises:
            InputSizeError: a mask whose size differs from its image's.
        """
        if self.mask_files is None:
            return None
        mask = read_mask(self.mask_files[index])
        size = _oriented_size(self.files[index])
        if mask.shape != size:
            raise InputSizeError(
                f"mask {self.mask_files[index]} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its "
                f"image {self.files[index]} is {size[1]}x{size[0]}; save the mask at the image's "
                "size"
            )
        return mask

    def __getitem__(self, index: int) -> tuple[Image.Image, int, np.ndarray | None]:
        """``(RGB image, label, bool mask (H, W) or None)``, as :class:`SyntheticScenes` items."""
        return self.load(index), self.labels[index], self.mask(index)


def _oriented_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file after its EXIF orientation, read from the header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(
            f"cannot decode image file {path} ({error}); re-export it or remove it"
        ) from error
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


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
