"""Few-shot datasets: a common interface over ImageFolder trees, in-memory tensors and the
synthetic scenes.

Every dataset exposes ``labels`` (one int per item), ``class_names`` and ``load(i)`` returning an
RGB PIL image (or a ``(3, H, W)`` tensor for in-memory data); ``mask(i)`` returns the
ground-truth object mask where one exists (bool ``(H, W)``, aligned with ``load(i)``), else
``None``; ``split`` names the class split it holds (``"base"``, ``"val"``, ``"novel"``, a
split-file name, or ``None`` when unknown) and ``content_fingerprint()`` is a short hash of what
its images are (file stats, tensor bytes or generator parameters), so caches and settings
records never mix datasets. Image datasets are also indexable like
:class:`~focusvit.data.SyntheticScenes`:
``dataset[i]`` is ``(image, label, mask or None)``. Put images and masks through the model's
preprocessing with ``backbone.preprocess(images)`` and ``backbone.preprocess_masks(masks)``
(the same resize and crop) for the localisation metrics (``prompt_precision``,
``pointing_game``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from focusvit.errors import ArgumentError, ConfigError, ImageReadError, InputSizeError

from .images import IMAGE_EXTENSIONS, read_image, read_mask


@runtime_checkable
class FewShotDataset(Protocol):
    labels: list[int]
    class_names: list[str]

    def load(self, index: int) -> Image.Image | Tensor: ...

    def __len__(self) -> int: ...


def check_dataset_kind(dataset: Any, argument: str = "dataset") -> None:
    """Refuse an object that is no few-shot dataset (the :class:`FewShotDataset` protocol:
    ``labels``, ``class_names`` and ``load(index)``), naming the dataset classes to build one.

    Raises:
        ArgumentError: naming what is missing and the classes that exist.
    """
    missing = [name for name in ("labels", "class_names", "load") if not hasattr(dataset, name)]
    if missing:
        raise ArgumentError(
            f"{argument} must be a few-shot dataset (the FewShotDataset protocol: labels, "
            f"class_names, load(index)), got a {type(dataset).__name__} without "
            f"{', '.join(missing)}; build one with focusvit.data.ImageFolderDataset(root), "
            "TensorDataset(images, labels, class_names) or SyntheticScenes(...)"
        )


def _digest(parts: Iterable[Any]) -> str:
    """A short sha256 hex digest (16 chars) of JSON-encodable ``parts`` and raw ``bytes``."""
    digest = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else json.dumps(part, default=str).encode()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:16]


def dataset_fingerprint(dataset: Any) -> str | None:
    """``dataset.content_fingerprint()`` (a short hash of its content), or ``None`` for a
    dataset kind that does not define one (its content cannot be told apart from another's)."""
    method = getattr(dataset, "content_fingerprint", None)
    return method() if callable(method) else None


class ContentWatch:
    """What changed in a dataset since it was last looked at, for caches of per-item results
    (feature caches): per item for datasets with ``file_stamp`` (a file's size and modification
    time, stamped for every item when the watch starts), else the whole content when its
    :func:`dataset_fingerprint` changed.

    Attributes:
        content: the dataset's fingerprint as last seen (``None`` for a kind without one).
    """

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self._stamp = getattr(dataset, "file_stamp", None)
        self._stamps = (
            {} if self._stamp is None else {i: self._stamp(i) for i in range(len(dataset))}
        )
        self.content = dataset_fingerprint(dataset)

    def changed(self, indices: Sequence[int]) -> list[int] | None:
        """The items among ``indices`` that changed since the last look (``[]``: none), or
        ``None`` when any item may have changed (a dataset without per-item stamps whose
        fingerprint changed); :attr:`content` is brought up to date when anything changed."""
        if self._stamp is None:
            content = dataset_fingerprint(self.dataset)
            if content == self.content:
                return []
            self.content = content
            return None
        changed = []
        for index in indices:
            stamp = self._stamp(index)
            if stamp != self._stamps.get(index):
                self._stamps[index] = stamp
                changed.append(index)
        if changed:
            self.content = dataset_fingerprint(self.dataset)
        return changed


def file_stamp(path: Path) -> tuple[int, int]:
    """``(size in bytes, modification time in ns)`` of the image file ``path`` now (one stat);
    a file edited or replaced since gives another stamp."""
    try:
        info = path.stat()
    except OSError as error:
        raise ImageReadError(
            f"cannot read image file {path} ({error}); was the dataset moved? "
            "build the dataset again"
        ) from error
    return info.st_size, info.st_mtime_ns


def dataset_manifest(dataset: Any) -> dict[str, list[int]] | None:
    """``dataset.content_manifest()`` (``{file: [size, mtime ns]}``) for datasets read from
    files, else ``None`` (tensor and generated datasets: their fingerprint is all there is)."""
    method = getattr(dataset, "content_manifest", None)
    return method() if callable(method) else None


def manifest_changes(
    old: Mapping[str, Sequence[int]], new: Mapping[str, Sequence[int]]
) -> list[str]:
    """The files that differ between two :func:`dataset_manifest` results, each as
    ``"changed <path>"``, ``"added <path>"`` or ``"removed <path>"``, sorted by path."""
    lines = []
    for path in sorted(set(old) | set(new)):
        if path not in old:
            lines.append(f"added {path}")
        elif path not in new:
            lines.append(f"removed {path}")
        elif list(old[path]) != list(new[path]):
            lines.append(f"changed {path}")
    return lines


def _check_split(split: Any) -> str | None:
    """``split`` itself when it is ``None`` or a non-empty string; else :class:`ConfigError`."""
    if split is None or (isinstance(split, str) and split.strip()):
        return split
    raise ConfigError(
        f"split must be a split name such as 'base', 'val' or 'novel' (or None), got {split!r}"
    )


class ImageFolderDataset:
    """``root/<class>/<image>`` trees (one folder per class), like torchvision's ImageFolder.

    Args:
        root: dataset directory.
        split: with ``split_file``, keep only the classes listed for this split; kept as
            ``self.split`` (also with ``classes``), so ``EpisodeSpec(split=...)`` and
            ``select_alpha`` can check it. ``None``: the split is unknown.
        split_file: a text file of ``<split> <class folder>`` lines (e.g. ``novel 017.Cardinal``),
            or a directory holding ``<split>.txt`` files with one class folder per line.
        classes: explicit class folder names to keep (overrides ``split``).
        mask_root: a folder parallel to ``root`` holding one ground-truth object mask per image
            at the same relative path, with any image extension (``root/cls/a.jpg`` ->
            ``mask_root/cls/a.png``); nonzero pixels are object (see
            :func:`~focusvit.data.images.read_mask`). Each mask must have its image's size.
            ``None``: :meth:`mask` returns ``None``.

    Raises:
        ImageReadError: a missing root, class folder, a class folder without images, or (with
            ``mask_root``) a missing mask, naming the expected path.
        ConfigError: ``split`` without ``split_file``.

    Hidden folders (``.ipynb_checkpoints``, ``.git``) are not classes.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        split_file: str | os.PathLike | None = None,
        classes: list[str] | None = None,
        mask_root: str | os.PathLike | None = None,
    ):
        if not isinstance(root, str | os.PathLike) or not str(root).strip():
            raise ConfigError(
                f"dataset root must be a folder path, got {root!r}; pass e.g. "
                "ImageFolderDataset('data/my_dataset') (a folder of class folders)"
            )
        if classes is not None:
            names = (
                None
                if isinstance(classes, str | bytes) or not isinstance(classes, Iterable)
                else list(classes)
            )
            if names is None or not all(isinstance(name, str) for name in names):
                raise ConfigError(
                    f"classes must be a list of class folder names, got {classes!r:.80}; pass "
                    "e.g. classes=['cat', 'dog']"
                )
            classes = names
        self.root = Path(root)
        if not self.root.is_dir():
            raise ImageReadError(f"dataset root {self.root} is not a directory; check the path")
        self.split = _check_split(split)
        folders = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
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
        self.class_names: list[str] = list(folders)
        self.files: list[Path] = []
        self.labels: list[int] = []
        for label, folder in enumerate(folders):
            images = self._class_images(folder)
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

    def _class_images(self, folder: str) -> list[Path]:
        """The image files of class folder ``folder``, sorted; an empty folder raises."""
        images = sorted(
            p for p in (self.root / folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not images:
            raise ImageReadError(
                f"class folder {self.root / folder} holds no images (extensions "
                f"{', '.join(IMAGE_EXTENSIONS)}); add images, remove the folder, or pass "
                "classes=[...] without it"
            )
        return images

    def file_stamp(self, index: int) -> tuple[int, int]:
        """``(size in bytes, modification time in ns)`` of image file ``index`` now (one stat);
        a file edited or replaced since gives another stamp."""
        return file_stamp(self.files[index])

    def content_fingerprint(self) -> str:
        """A short hash of what this dataset is: its split, class names and every image (and
        mask) file's path relative to its root with its size and modification time (one stat a
        file, no decoding). Editing, replacing or renaming a file, or renaming a class, changes
        it; copying the dataset elsewhere with its modification times (``cp -p``, ``rsync -a``)
        does not."""
        files, masks = self._stamps()
        return _digest(
            ["ImageFolderDataset", self.split, self.class_names, self.labels, files, masks]
        )

    def _stamps(self) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]] | None]:
        """``(path, size, mtime ns)`` of every image file (relative to the root) and, with
        masks, of every mask file (relative to ``mask_root``; ``None`` without masks)."""
        files = [
            (path.relative_to(self.root).as_posix(), *self.file_stamp(i))
            for i, path in enumerate(self.files)
        ]
        masks = None
        if self.mask_files is not None and self.mask_root is not None:
            masks = [_mask_stamp(path, self.mask_root) for path in self.mask_files]
        return files, masks

    def content_manifest(self) -> dict[str, list[int]]:
        """``{path: [size, modification time ns]}`` of every image file (relative to the root)
        and mask file (``"mask:<path relative to mask_root>"``): what
        :meth:`content_fingerprint` hashes, kept beside an episode file so that a refused
        resume can name the files that changed (:func:`manifest_changes`)."""
        files, masks = self._stamps()
        manifest = {name: [size, mtime] for name, size, mtime in files}
        manifest.update({f"mask:{name}": [size, mtime] for name, size, mtime in masks or []})
        return manifest

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


def _mask_stamp(path: Path, mask_root: Path) -> tuple[str, int, int]:
    """``(path relative to mask_root, size, modification time ns)`` of a mask file."""
    try:
        info = path.stat()
    except OSError as error:
        raise ImageReadError(f"cannot read mask file {path} ({error}); check mask_root") from error
    return path.relative_to(mask_root).as_posix(), info.st_size, info.st_mtime_ns


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
        return [line.strip() for line in _split_lines(path) if line.strip()]
    names = []
    for line in _split_lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and parts[0] == split:
            names.append(parts[1].strip())
    if not names:
        raise ImageReadError(f"split file {path} lists no classes for split {split!r}")
    return names


def _split_lines(path: Path) -> list[str]:
    """The lines of a split file, read as UTF-8 with or without a byte-order mark."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise ImageReadError(f"split file {path} does not exist; check split_file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ImageReadError(
            f"cannot read split file {path} ({error}); save it as UTF-8 text"
        ) from error


class TensorDataset:
    """In-memory images ``(M, 3, H, W)`` (already preprocessed) with labels ``(M,)``.

    Args:
        images: ``(M, 3, H, W)`` preprocessed images.
        labels: ``(M,)`` class index of each image.
        class_names: one name per class (default ``"0"``, ``"1"``, ...).
        masks: optional ``(M, H, W)`` bool object masks.
        split: the class split these images come from (``"base"``, ``"val"``, ``"novel"``, ...;
            ``None``: unknown), checked by ``EpisodeSpec(split=...)`` and ``select_alpha``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | list[int],
        class_names: list[str] | None = None,
        masks: Tensor | None = None,
        split: str | None = None,
    ):
        if not isinstance(images, Tensor):
            raise ConfigError(
                f"TensorDataset images must be a tensor (M, 3, H, W), got "
                f"{type(images).__name__}; stack a list first, e.g. torch.stack(images), or "
                "preprocess files with backbone.preprocess(paths)"
            )
        label_list = _check_tensor_labels(labels)
        if images.ndim != 4 or images.shape[0] != len(label_list):
            raise ConfigError(
                f"images must be (M, 3, H, W) with one label each; got {tuple(images.shape)} and "
                f"{len(label_list)} labels"
            )
        count = max(label_list) + 1 if label_list else 0
        if class_names is not None:
            if isinstance(class_names, str | bytes) or not isinstance(class_names, Sequence):
                raise ConfigError(
                    f"class_names must be a list of names, got {class_names!r}; pass e.g. "
                    "['cat', 'dog'] (one per class)"
                )
            class_names = [str(name) for name in class_names]
            if len(class_names) != count:
                raise ConfigError(
                    f"class_names has {len(class_names)} names for {count} classes (labels "
                    f"0..{count - 1}); pass one name per class, or leave class_names unset"
                )
        self.images, self.masks = images, masks
        self.labels = label_list
        self.split = _check_split(split)
        self.class_names = class_names or [str(i) for i in range(count)]
        self._fingerprint: tuple[tuple, str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Tensor:
        return self.images[index]

    def mask(self, index: int) -> np.ndarray | None:
        return None if self.masks is None else self.masks[index].numpy()

    def content_fingerprint(self) -> str:
        """A short hash of the image (and mask) tensors' bytes, shapes and dtypes, the labels,
        class names and split; recomputed only after a tensor changes (in place or replaced)."""
        tensors = [t for t in (self.images, self.masks) if t is not None]
        state = (
            tuple(_tensor_state(t) for t in tensors),
            self.split,
            tuple(self.labels),
            tuple(self.class_names),
        )
        if self._fingerprint is None or self._fingerprint[0] != state:
            parts: list[Any] = ["TensorDataset", self.split, self.labels, list(self.class_names)]
            for tensor in tensors:
                parts += [[str(tensor.dtype), list(tensor.shape)], _tensor_bytes(tensor)]
            self._fingerprint = (state, _digest(parts))
        return self._fingerprint[1]


def _check_tensor_labels(labels: Any) -> list[int]:
    """``labels`` (an integer tensor, array or list) as a list of ints >= 0; a float, bool or
    string label (which would be truncated or misread) or a negative one is refused."""
    fix = "pass class indices 0..N-1, e.g. [0, 0, 1, 1] or torch.tensor([0, 1]).long()"
    if isinstance(labels, Tensor | np.ndarray):
        if isinstance(labels, Tensor):
            integer = not (
                labels.dtype.is_floating_point
                or labels.dtype.is_complex
                or labels.dtype is torch.bool
            )
        else:
            integer = bool(np.issubdtype(labels.dtype, np.integer))
        if labels.ndim != 1 or not integer:
            raise ConfigError(
                f"labels must be a 1-d integer tensor or list, got a {labels.dtype} "
                f"{type(labels).__name__} of shape {tuple(labels.shape)}; {fix}"
            )
        values = [int(v) for v in labels.tolist()]
    elif isinstance(labels, str | bytes) or not isinstance(labels, Iterable):
        raise ConfigError(f"labels must be a list of class indices, got {labels!r:.60}; {fix}")
    else:
        values = list(labels)
        wrong = [
            v
            for v in values
            if isinstance(v, bool | np.bool_) or not isinstance(v, int | np.integer)
        ]
        if wrong:
            raise ConfigError(
                f"labels must be whole numbers, got {wrong[0]!r} ({type(wrong[0]).__name__}); {fix}"
            )
        values = [int(v) for v in values]
    negative = [v for v in values if v < 0]
    if negative:
        raise ConfigError(f"labels must be >= 0, got {negative[0]}; {fix}")
    return values


def _tensor_state(tensor: Tensor) -> tuple:
    """What changes when ``tensor`` is edited in place or replaced (a fresh object for an
    inference tensor, which keeps no version counter: it is hashed every time)."""
    try:
        version: Any = tensor._version
    except RuntimeError:
        version = object()
    return tensor.data_ptr(), version, tuple(tensor.shape), str(tensor.dtype)


def _tensor_bytes(tensor: Tensor) -> bytes:
    """The raw bytes of ``tensor`` (on the CPU, contiguous)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
