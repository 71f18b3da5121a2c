"""torchvision-style datasets (``dataset[i] -> (image, label)``) as few-shot datasets."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from focusvit.errors import ConfigError, ImageReadError

from .datasets import _check_split, _check_tensor_labels, _digest, _tensor_bytes
from .images import read_image

__all__ = ["TorchvisionDataset"]

#: attributes torchvision datasets keep their labels in, in the order they are tried
LABEL_ATTRIBUTES = ("targets", "_labels", "labels", "_targets")
#: attributes holding one image file per item (for the file stamps of the fingerprint)
FILE_ATTRIBUTES = ("_image_files", "_images", "imgs", "samples", "_samples")
#: items above which reading labels by iteration shows a progress bar
PROGRESS_FROM = 1000


class TorchvisionDataset:
    """Any torchvision-style dataset (``dataset[i]`` is ``(image, label)``) with the few-shot
    dataset interface.

    Args:
        dataset: e.g. ``torchvision.datasets.CIFAR100(root)``, ``Flowers102``, ``FakeData``, or
            any map-style dataset of ``(image, label)`` items. Labels come from its ``targets``,
            ``_labels`` or ``labels`` attribute; without one, every item is read once (decoding
            its image; a progress bar for large datasets).
        split: the class split it holds (``"base"``, ``"val"``, ``"novel"``; ``None``: unknown).
        class_names: one name per label; default the dataset's ``classes`` attribute, else
            ``"0"``, ``"1"``, ...

    Images are PIL images or arrays (made RGB with :func:`~focusvit.data.read_image`); a dataset
    whose ``transform`` returns tensors gives those tensors as they are (already preprocessed).

    Raises:
        ConfigError: an object that is not indexable, labels that are not class indices, or
            ``class_names`` of the wrong length.
    """

    def __init__(
        self,
        dataset: Any,
        split: str | None = None,
        class_names: Sequence[str] | None = None,
    ):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ConfigError(
                f"dataset must be a map-style dataset of (image, label) items, got a "
                f"{type(dataset).__name__}; pass e.g. torchvision.datasets.CIFAR100(root)"
            )
        self.dataset = dataset
        self.split = _check_split(split)
        self.labels: list[int] = _check_tensor_labels(read_labels(dataset))
        count = max(self.labels) + 1 if self.labels else 0
        names = class_names if class_names is not None else getattr(dataset, "classes", None)
        if names is None:
            names = [str(i) for i in range(count)]
        if isinstance(names, str | bytes) or not isinstance(names, Sequence | np.ndarray):
            raise ConfigError(f"class_names must be a list of names, got {names!r:.60}")
        names = [str(name) for name in names]
        if len(names) < count:
            raise ConfigError(
                f"{len(names)} class names for labels up to {count - 1}; pass one name per "
                "class with class_names=[...]"
            )
        self.class_names: list[str] = names

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Image.Image | Tensor:
        """Image ``index`` as RGB PIL (or the tensor the dataset's transform made)."""
        try:
            image = self.dataset[index][0]
        except OSError as error:
            raise ImageReadError(
                f"cannot read item {index} of {type(self.dataset).__name__} ({error}); check "
                "its files"
            ) from error
        return image if isinstance(image, Tensor) else read_image(image)

    def mask(self, index: int) -> None:
        """No object masks."""
        return None

    def __getitem__(self, index: int) -> tuple[Image.Image | Tensor, int, None]:
        return self.load(index), self.labels[index], None

    def content_fingerprint(self) -> str:
        """A short hash of the dataset type, length, labels, class names, split and, where
        the dataset has them, its ``root`` path, the size and modification time of each of its
        image files (``_image_files``, ``_images``, ``imgs``, ``samples``) and the bytes of an
        in-memory ``data`` array (CIFAR, MNIST).

        It cannot see what it is not shown: images kept in files it does not list (an archive,
        a database) or generated on the fly (``FakeData`` is told apart by its type, length,
        labels and ``random_offset`` only), or a change of ``transform``."""
        root = getattr(self.dataset, "root", None)
        parts: list[Any] = [
            "TorchvisionDataset",
            f"{type(self.dataset).__module__}.{type(self.dataset).__qualname__}",
            len(self.labels),
            self.labels,
            self.class_names,
            self.split,
            None if root is None else os.fspath(root),
            getattr(self.dataset, "random_offset", None),
            _file_stamps(self.dataset),
        ]
        data = getattr(self.dataset, "data", None)
        if isinstance(data, np.ndarray):
            parts += [[str(data.dtype), list(data.shape)], np.ascontiguousarray(data).tobytes()]
        elif isinstance(data, Tensor):
            parts += [[str(data.dtype), list(data.shape)], _tensor_bytes(data)]
        return _digest(parts)


def read_labels(dataset: Any) -> Any:
    """The labels from a label attribute (``targets``, ``_labels``, ...), else from its
    ``(path, label)`` sample list (``samples``, Stanford Cars' ``_samples``), else by reading
    every item once."""
    for name in LABEL_ATTRIBUTES:
        labels = getattr(dataset, name, None)
        if labels is not None and not callable(labels) and len(labels) == len(dataset):
            return labels
    for name in ("samples", "_samples"):
        pairs = getattr(dataset, name, None)
        if (
            isinstance(pairs, list)
            and len(pairs) == len(dataset)
            and all(isinstance(pair, tuple | list) and len(pair) == 2 for pair in pairs)
        ):
            return [label for _, label in pairs]
    items = range(len(dataset))
    if len(dataset) >= PROGRESS_FROM:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=f"reading {type(dataset).__name__} labels", unit="item")
    labels = []
    for index in items:
        item = dataset[index]
        if not isinstance(item, tuple | list) or len(item) < 2:
            raise ConfigError(
                f"item {index} of {type(dataset).__name__} is not an (image, label) pair; pass "
                "a dataset whose items are (image, label)"
            )
        label = item[1]
        labels.append(int(label.item()) if isinstance(label, Tensor | np.generic) else label)
    return labels


def listed_files(dataset: Any) -> list[Path] | None:
    """The image file of each item, where the dataset lists them (``_image_files``, ``_images``,
    ``imgs``, ``samples`` or ``_samples``; pairs give their path), else ``None``."""
    for name in FILE_ATTRIBUTES:
        files = getattr(dataset, name, None)
        if isinstance(files, list) and files:
            return [Path(entry[0] if isinstance(entry, tuple | list) else entry) for entry in files]
    return None


def _file_stamps(dataset: Any) -> list[Any] | None:
    """``[relative path, size, mtime ns]`` of each image file the dataset lists, if any."""
    files = listed_files(dataset)
    if files is None:
        return None
    root = getattr(dataset, "root", None)
    stamps = []
    for path in files:
        try:
            info = path.stat()
            stamp = [info.st_size, info.st_mtime_ns]
        except OSError:
            stamp = None
        name = path.as_posix()
        if root is not None:
            with contextlib.suppress(ValueError):
                name = path.relative_to(root).as_posix()
        stamps.append([name, stamp])
    return stamps
