"""Hugging Face ``datasets`` image datasets as few-shot datasets.

:class:`HFImageDataset` takes a hub name, a folder written by ``Dataset.save_to_disk`` or a
``datasets.Dataset`` object, finds its image and label columns (named, or inferred from the
``Image`` and ``ClassLabel`` features), reads only the label column when it is built and decodes
one image at a time in :meth:`HFImageDataset.load`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from focusvit.checks import is_whole_number
from focusvit.errors import ConfigError, ImageReadError

from .datasets import _check_split, _digest, read_split
from .images import read_image

__all__ = ["HFImageDataset", "hf_dataset"]


def _require_datasets():
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - a dependency of focusvit
        raise ConfigError(
            "HFImageDataset needs the Hugging Face datasets package; pip install 'datasets>=3'"
        ) from error
    return datasets


class HFImageDataset:
    """A Hugging Face image classification dataset with the few-shot dataset interface
    (``labels``, ``class_names``, ``load(i)``, ``split``, ``content_fingerprint()``).

    Args:
        source: a hub name (``"uoft-cs/cifar100"``, read with ``datasets.load_dataset``), a
            folder written by ``save_to_disk`` (read with ``datasets.load_from_disk``) or a
            ``datasets.Dataset`` object.
        split: the class split these classes form (``"base"``, ``"val"``, ``"novel"``, ...):
            with ``split_file`` or ``split_column`` only its classes (rows) are kept; else it
            is only recorded (``None``: unknown), for ``EpisodeSpec(split=...)`` and
            ``select_alpha``.
        image_column: the column holding the images; ``None``: the one ``Image`` feature.
        label_column: the column holding the labels; ``None``: the one ``ClassLabel`` feature.
            A column of integers or strings works too (names: the sorted distinct values).
        split_file: ``<split> <class name>`` lines, or a folder of ``<split>.txt`` files, as for
            :class:`~focusvit.data.ImageFolderDataset` (class names as in the ``ClassLabel``).
        split_column: instead, a column naming each row's class split; rows whose value is
            ``split`` are kept.
        hf_split: which split of the source to read when it holds several (a hub dataset or a
            saved ``DatasetDict``): ``"train"``, ``"test"``, ... (the hub's own train/test
            split of images, not a class split).

    Rows with a missing or negative label (unlabelled test rows of hub datasets) are left out.
    Labels are renumbered ``0..N-1`` over the classes kept, in the ``ClassLabel`` order.

    Raises:
        ConfigError: a column that does not exist or cannot be inferred (listing the columns),
            a ``DatasetDict`` without ``hf_split``, ``split`` without its classes.
        ImageReadError: a missing folder, an unreadable image.
    """

    def __init__(
        self,
        source: Any,
        split: str | None = None,
        image_column: str | None = None,
        label_column: str | None = None,
        split_file: str | os.PathLike | None = None,
        split_column: str | None = None,
        hf_split: str | None = None,
    ):
        self.split = _check_split(split)
        data = _open_source(source, hf_split)
        features = data.features
        datasets = _require_datasets()
        self.image_column = _pick_column(
            features, image_column, datasets.Image, "image", "an Image feature"
        )
        self.label_column = _pick_column(
            features, label_column, datasets.ClassLabel, "label", "a ClassLabel feature"
        )
        if split_file is not None and split_column is not None:
            raise ConfigError(
                "give split_file or split_column, not both; split_file lists classes per split, "
                "split_column names each row's split"
            )
        values = list(data.select_columns([self.label_column])[self.label_column])
        feature = features[self.label_column]
        if isinstance(feature, datasets.ClassLabel):
            names = list(feature.names)
            codes = [None if v is None or int(v) < 0 else int(v) for v in values]
        else:
            names, codes = _plain_labels(values, self.label_column)
        keep_rows: set[int] | None = None
        keep_classes: list[str] | None = None
        if split_column is not None:
            if split is None:
                raise ConfigError(
                    f"split_column={split_column!r} needs split=<the split to keep>, e.g. "
                    "split='novel'"
                )
            if split_column not in features:
                raise ConfigError(
                    f"split_column {split_column!r} is not a column; the columns are "
                    f"{', '.join(features)}"
                )
            column = list(data.select_columns([split_column])[split_column])
            keep_rows = {i for i, value in enumerate(column) if str(value) == split}
            if not keep_rows:
                raise ConfigError(
                    f"no row has {split_column}={split!r}; its values are "
                    f"{sorted({str(v) for v in column})[:8]}"
                )
        elif split is not None:
            if split_file is None:
                raise ConfigError(
                    f"split={split!r} needs split_file (lines '<split> <class name>') or "
                    "split_column (a column naming each row's split); or drop split"
                )
            keep_classes = read_split(split_file, split)
            missing = sorted(set(keep_classes) - set(names))
            if missing:
                raise ConfigError(
                    f"classes {missing[:5]} of split {split!r} in {split_file} are not classes "
                    f"of this dataset (e.g. {names[:3]}); use the ClassLabel names"
                )
        used = sorted({c for i, c in enumerate(codes) if c is not None and _kept(i, keep_rows)})
        if keep_classes is not None:
            wanted = {names.index(name) for name in keep_classes}
            used = [c for c in used if c in wanted]
        renumber = {code: new for new, code in enumerate(used)}
        self.class_names: list[str] = [names[c] for c in used]
        self.rows: list[int] = []
        self.labels: list[int] = []
        for i, code in enumerate(codes):
            if code in renumber and _kept(i, keep_rows):
                self.rows.append(i)
                self.labels.append(renumber[code])
        if not self.rows:
            raise ConfigError(
                f"no labelled rows left in this dataset (split={split!r}); check the label "
                "column and the split"
            )
        self.data = data

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> Image.Image:
        """RGB image ``index`` (only this row is decoded)."""
        row = self.rows[index]
        try:
            value = self.data[row][self.image_column]
        except (OSError, ValueError) as error:
            raise ImageReadError(
                f"cannot decode image of row {row} in column {self.image_column!r} ({error}); "
                "check the dataset files"
            ) from error
        if isinstance(value, dict) and value.get("path"):
            return read_image(value["path"])
        return read_image(value)

    def mask(self, index: int) -> None:
        """No object masks (Hugging Face classification datasets have none)."""
        return None

    def __getitem__(self, index: int) -> tuple[Image.Image, int, None]:
        return self.load(index), self.labels[index], None

    def content_fingerprint(self) -> str:
        """A short hash of the dataset's own ``_fingerprint`` (which ``datasets`` derives from
        its files or the operations that built it), the columns, the rows kept, their labels,
        the class names and the split."""
        return _digest(
            [
                "HFImageDataset",
                getattr(self.data, "_fingerprint", None),
                self.image_column,
                self.label_column,
                self.split,
                self.class_names,
                self.rows,
                self.labels,
            ]
        )


def _kept(row: int, keep_rows: set[int] | None) -> bool:
    return keep_rows is None or row in keep_rows


def _open_source(source: Any, hf_split: str | None):
    """A ``datasets.Dataset`` from a Dataset, a ``save_to_disk`` folder or a hub name."""
    datasets = _require_datasets()
    if isinstance(source, datasets.DatasetDict):
        return _from_dict(source, hf_split, "the DatasetDict")
    if isinstance(source, datasets.Dataset):
        return source
    if not isinstance(source, str | os.PathLike) or not str(source).strip():
        raise ConfigError(
            f"source must be a hub name, a save_to_disk folder or a datasets.Dataset, got "
            f"{type(source).__name__}; e.g. HFImageDataset('data/my_hf_dataset', hf_split='train')"
        )
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise ImageReadError(
                f"{path} is a file; pass the folder written by Dataset.save_to_disk"
            )
        try:
            loaded = datasets.load_from_disk(str(path))
        except FileNotFoundError as error:
            raise ImageReadError(
                f"{path} is no save_to_disk folder ({error}); pass the folder that holds "
                "dataset_info.json (or dataset_dict.json)"
            ) from error
        if isinstance(loaded, datasets.DatasetDict):
            return _from_dict(loaded, hf_split, f"the DatasetDict in {path}")
        return loaded
    text = str(source)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:
        raise ImageReadError(
            f"dataset folder {path} does not exist; pass a save_to_disk folder or a hub name "
            "such as 'uoft-cs/cifar100'"
        )
    try:  # a hub name: needs the network (or the local datasets cache)
        loaded = datasets.load_dataset(str(source), split=hf_split)
    except Exception as error:
        raise ImageReadError(
            f"cannot load the hub dataset {source!r} ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); check the name and the "
            "network, or save it with save_to_disk and pass that folder"
        ) from error
    if isinstance(loaded, datasets.DatasetDict):
        return _from_dict(loaded, hf_split, f"the hub dataset {source!r}")
    return loaded


def _from_dict(data, hf_split: str | None, what: str):
    if hf_split is None or hf_split not in data:
        raise ConfigError(
            f"{what} holds the splits {', '.join(data)}; pick one with "
            f"hf_split=<{'|'.join(data)}>" + ("" if hf_split is None else f" (not {hf_split!r})")
        )
    return data[hf_split]


def _pick_column(features, name: str | None, kind: type, argument: str, wanted: str) -> str:
    columns = ", ".join(f"{key} ({type(value).__name__})" for key, value in features.items())
    if name is not None:
        if name not in features:
            raise ConfigError(
                f"{argument}_column {name!r} is not a column; the columns are {columns}"
            )
        return name
    found = [key for key, value in features.items() if isinstance(value, kind)]
    if len(found) != 1:
        how = "none is" if not found else f"{len(found)} are"
        raise ConfigError(
            f"cannot infer the {argument} column: {how} {wanted}; pass {argument}_column=<name> "
            f"(the columns are {columns})"
        )
    return found[0]


def _plain_labels(values: Iterable[Any], column: str) -> tuple[list[str], list[int | None]]:
    """Class names and codes of a label column that is no ``ClassLabel`` (ints or strings)."""
    values = list(values)
    present = [v for v in values if v is not None]
    if all(is_whole_number(v) for v in present):
        count = max(present, default=-1) + 1
        return [str(i) for i in range(count)], [
            None if v is None or v < 0 else int(v) for v in values
        ]
    if all(isinstance(v, str) for v in present):
        names = sorted(set(present))
        index = {name: i for i, name in enumerate(names)}
        return names, [None if v is None else index[v] for v in values]
    raise ConfigError(
        f"label column {column!r} must hold class indices or class names, got "
        f"{type(present[0]).__name__} values; pass label_column=<the class column>"
    )


def hf_dataset(
    path: str,
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    split_file: str | None = None,
    split_column: str | None = None,
    hf_split: str | None = None,
) -> HFImageDataset:
    """:class:`HFImageDataset` from a config (``data=hf data.path=<hub name or folder>``)."""
    return HFImageDataset(
        path,
        split=split,
        image_column=image_column,
        label_column=label_column,
        split_file=split_file,
        split_column=split_column,
        hf_split=hf_split,
    )
