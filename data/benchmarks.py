"""The standard few-shot benchmarks with their published class splits.

:func:`standard_splits` returns a benchmark's class split, shipped as a text file under
``focusvit/data/splits/`` (``<split> <class>`` lines, the format of
:func:`~focusvit.data.read_split`); :func:`benchmark_dataset` reads a local copy of a
benchmark in the layout its archive unpacks to and keeps the classes of one split.

==================  ===================  ==================================================
benchmark           split (classes)      defined by
==================  ===================  ==================================================
``mini_imagenet``   64 / 16 / 20         Ravi & Larochelle, ICLR 2017
``tiered_imagenet`` 351 / 97 / 160       Ren et al., ICLR 2018
``cifar_fs``        64 / 16 / 20         Bertinetto et al., ICLR 2019
``fc100``           60 / 20 / 20         Oreshkin et al., NeurIPS 2018 (12 / 4 / 4 superclasses)
``cub``             100 / 50 / 50        Chen et al., ICLR 2019 (A Closer Look); or all 200
``cars``            all (196)            cross-domain (Tseng et al., ICLR 2020)
``places``          all                  cross-domain (Tseng et al., ICLR 2020)
``plantae``         all                  cross-domain (Tseng et al., ICLR 2020)
``aircraft``        all (100 variants)   cross-domain, as FORT (Wang et al., NeurIPS 2023)
``pets``            all (37 breeds)      cross-domain, as FORT (Wang et al., NeurIPS 2023)
==================  ===================  ==================================================
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from focusvit.errors import ConfigError, ImageReadError

from .datasets import ImageFolderDataset, _check_split, _digest, file_stamp, read_split
from .images import read_image
from .torchvision_ds import TorchvisionDataset, listed_files, read_labels

__all__ = [
    "BENCHMARKS",
    "CROSS_DOMAIN",
    "SPLIT_NAMES",
    "ImageListDataset",
    "benchmark_dataset",
    "standard_splits",
]

SPLIT_NAMES = ("base", "val", "novel")
#: benchmark name -> shipped split file (None: classes read from the local root)
BENCHMARKS: dict[str, str | None] = {
    "mini_imagenet": "mini_imagenet.txt",
    "tiered_imagenet": "tiered_imagenet.txt",
    "cifar_fs": "cifar_fs.txt",
    "fc100": "fc100.txt",
    "cub": "cub.txt",
    "cars": None,
    "places": None,
    "plantae": None,
    "aircraft": None,
    "pets": None,
}
#: the cross-domain evaluation sets (every class is a test class)
CROSS_DOMAIN = ("cub", "cars", "places", "plantae", "aircraft", "pets")
_ALIASES = {
    "miniimagenet": "mini_imagenet",
    "tieredimagenet": "tiered_imagenet",
    "cifarfs": "cifar_fs",
    "cub200": "cub",
    "cub_200_2011": "cub",
    "stanford_cars": "cars",
    "fgvc_aircraft": "aircraft",
    "oxford_pets": "pets",
    "oxford_iiit_pet": "pets",
    "places365": "places",
}
#: the benchmark's own names of the three splits, for per-split folders and csv files
_FOLDER = {"base": "train", "val": "val", "novel": "test"}


def _name(name: Any) -> str:
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return key


def standard_splits(name: str) -> dict[str, list[str]]:
    """The published class split of benchmark ``name``: ``{"base"|"val"|"novel": [class]}``
    (WordNet ids for the ImageNet subsets, CIFAR-100 class names, CUB class folder names); for
    ``cub`` also ``"all"`` (the 200 classes of the cross-domain evaluation).

    Raises:
        ConfigError: an unknown benchmark, or a cross-domain set whose class list is not
            shipped (Cars, Places, Plantae, Aircraft, Pets: its classes are those of the local
            copy, ``benchmark_dataset(name, root).class_names``).
    """
    key = _name(name)
    file = BENCHMARKS[key]
    if file is None:
        raise ConfigError(
            f"{key} has no shipped class list: every class of the local copy is used; read them "
            f"with focusvit.benchmark_dataset({key!r}, root).class_names"
        )
    path = resources.files("focusvit.data").joinpath("splits", file)
    with resources.as_file(path) as local:
        splits = {split: read_split(local, split) for split in SPLIT_NAMES}
    if key == "cub":
        splits["all"] = sorted(name for names in splits.values() for name in names)
    return splits


class ImageListDataset:
    """Image files with their labels (the miniImageNet csv layout: one ``images/`` folder and a
    ``filename,label`` csv per split); the interface of :class:`ImageFolderDataset`."""

    def __init__(
        self,
        root: Path,
        files: Sequence[Path],
        labels: Sequence[int],
        class_names: Sequence[str],
        split: str | None = None,
    ):
        self.root = Path(root)
        self.files = list(files)
        self.labels = list(labels)
        self.class_names = list(class_names)
        self.split = _check_split(split)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Image.Image:
        return read_image(self.files[index])

    def mask(self, index: int) -> None:
        return None

    def __getitem__(self, index: int) -> tuple[Image.Image, int, None]:
        return self.load(index), self.labels[index], None

    def file_stamp(self, index: int) -> tuple[int, int]:
        """``(size, modification time ns)`` of image file ``index`` now."""
        return file_stamp(self.files[index])

    def content_manifest(self) -> dict[str, list[int]]:
        return {
            path.relative_to(self.root).as_posix(): list(self.file_stamp(i))
            for i, path in enumerate(self.files)
        }

    def content_fingerprint(self) -> str:
        """A short hash of the split, class names, labels and every file's relative path, size
        and modification time (as :meth:`ImageFolderDataset.content_fingerprint`)."""
        files = [[name, *stamp] for name, stamp in self.content_manifest().items()]
        return _digest(["ImageListDataset", self.split, self.class_names, self.labels, files])


def benchmark_dataset(
    name: str,
    root: str | os.PathLike,
    split: str | None = None,
    download: bool = False,
):
    """The classes of ``split`` of benchmark ``name`` from a local copy under ``root``.

    Args:
        name: ``mini_imagenet``, ``tiered_imagenet``, ``cifar_fs``, ``fc100``, ``cub``,
            ``cars``, ``places``, ``plantae``, ``aircraft`` or ``pets``.
        root: the folder the benchmark's archive was unpacked into (layouts: see
            ``docs/concepts/data.md``).
        split: ``"base"``, ``"val"`` or ``"novel"`` (the published class split); for the
            cross-domain sets ``None``/``"all"`` (every class; the dataset's ``split`` is then
            ``"novel"``: all its classes are test classes). ``cub`` takes both.
        download: fetch the data into ``root`` where torchvision hosts it (CIFAR-100 for
            ``cifar_fs`` / ``fc100``, ``aircraft``, ``pets``); elsewhere ignored.

    Raises:
        ConfigError: an unknown benchmark or split.
        ImageReadError: the data is not under ``root`` in a supported layout (naming the layout
            and where the files go).
    """
    key = _name(name)
    if root is None or not str(root).strip():
        raise ConfigError(f"{key} needs root=<the folder its archive was unpacked into>")
    root = Path(os.path.expanduser(str(root)))
    if split == "all":
        split = None
    if key in CROSS_DOMAIN and split is None:
        classes = None
    elif key == "cub" or key not in CROSS_DOMAIN:
        if split not in SPLIT_NAMES:
            raise ConfigError(
                f"{key} split must be one of {', '.join(SPLIT_NAMES)}"
                + (" or 'all'" if key == "cub" else "")
                + f", got {split!r}"
            )
        classes = standard_splits(key)[split]
    else:
        raise ConfigError(
            f"{key} is a cross-domain set: split must be 'all' (or None), got {split!r}"
        )
    kept = split or "novel"
    reader = {
        "mini_imagenet": _imagenet_subset,
        "tiered_imagenet": _imagenet_subset,
        "cifar_fs": _cifar,
        "fc100": _cifar,
        "cub": _cub,
        "cars": _cars,
        "places": _places,
        "plantae": _plantae,
        "aircraft": _aircraft,
        "pets": _pets,
    }[key]
    return reader(key, root, split, kept, classes, download)


# ----------------------------------------------------------------------------- layouts
LAYOUTS = {
    "mini_imagenet": (
        "root/images/<file>.jpg with root/{train,val,test}.csv (Ravi & Larochelle's "
        "filename,label files), or root/{train,val,test}/<wnid>/<image>, or root/<wnid>/<image>"
    ),
    "tiered_imagenet": (
        "root/{train,val,test}/<wnid>/<image> (the class-folder release), or root/<wnid>/<image> "
        "(e.g. ILSVRC-2012 train); the pickled release (train_images_png.pkl) is not read: "
        "unpack it to folders"
    ),
    "cifar_fs": (
        "root/cifar-100-python/ (torchvision CIFAR100; download=True fetches it), or "
        "root/data/<class>/<image> (Bertinetto et al.'s cifar100 release), or root/<class>/<image>"
    ),
    "cub": (
        "root/CUB_200_2011/images/<class folder>/<image>.jpg (CUB_200_2011.tgz from "
        "https://www.vision.caltech.edu/datasets/cub_200_2011/ unpacked into root)"
    ),
    "cars": (
        "root/stanford_cars/{devkit,cars_train,cars_test,cars_test_annos_withlabels.mat} "
        "(torchvision StanfordCars; its download link is gone: get the files by hand), or "
        "root/<class>/<image>"
    ),
    "places": "root/<class>/<image> (e.g. places365_standard/train or val from Places365)",
    "plantae": "root/Plantae/<species>/<image> (the iNaturalist 2017 Plantae folder), or root/<species>/<image>",
    "aircraft": "root/fgvc-aircraft-2013b/data/... (torchvision FGVCAircraft; download=True fetches it)",
    "pets": "root/oxford-iiit-pet/{images,annotations} (torchvision OxfordIIITPet; download=True fetches it)",
}
LAYOUTS["fc100"] = LAYOUTS["cifar_fs"]


def _missing(key: str, root: Path, download: bool) -> ImageReadError:
    fetch = (
        "; or pass download=True"
        if key in ("cifar_fs", "fc100", "aircraft", "pets") and not download
        else ""
    )
    return ImageReadError(
        f"no {key} data found under {root}; expected {LAYOUTS[key]}; put the files there{fetch}"
    )


def _class_folders(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}


def _tree(
    key: str, folder: Path, split: str, classes: list[str] | None, what: str | None = None
) -> ImageFolderDataset:
    """The class folders of ``classes`` (of ``what``, default ``split``) under ``folder``
    (``None``: every class folder)."""
    if classes is not None:
        classes = _present(key, what or split, classes, _class_folders(folder), folder)
    return ImageFolderDataset(folder, split=split, classes=classes)


def _present(key: str, split: str, classes: list[str], found: set[str], where: Path) -> list[str]:
    """The classes of ``split`` that are in ``found``, with a warning when some are missing (a
    partial copy: episodes then come from fewer classes than the published split)."""
    present = [name for name in classes if name in found]
    if len(present) < len(classes):
        missing = [name for name in classes if name not in found]
        warnings.warn(
            f"{where} holds {len(present)} of the {len(classes)} {split} classes of {key}; "
            f"missing e.g. {missing[:3]} (results on a partial copy are not comparable to "
            "published ones)",
            stacklevel=4,
        )
    return present


def _imagenet_subset(key, root, split, kept, classes, download):
    wanted = set(classes)
    name = _FOLDER[kept]
    table = root / f"{name}.csv"
    if (root / "images").is_dir() and table.is_file():
        return _csv_list(key, root, table, classes, kept)
    for folder in (root / name, root):
        if wanted & _class_folders(folder):
            return _tree(key, folder, kept, classes)
    raise _missing(key, root, download)


def _csv_list(
    key: str, root: Path, table: Path, classes: list[str], split: str
) -> ImageListDataset:
    """The miniImageNet csv layout: ``filename,label`` rows, images in ``root/images``."""
    with table.open(newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("label") in set(classes)]
    names = _present(key, split, sorted(classes), {row["label"] for row in rows}, table)
    if not names:
        raise ImageReadError(
            f"{table} lists none of the {split} classes of {key} (filename,label rows with "
            "WordNet ids); use the Ravi & Larochelle csv files"
        )
    index = {name: i for i, name in enumerate(names)}
    files, labels = [], []
    for row in rows:
        path = root / "images" / row["filename"]
        if not path.is_file():
            raise ImageReadError(
                f"{table} lists {row['filename']} but {path} does not exist; unpack every "
                "miniImageNet image into root/images"
            )
        files.append(path)
        labels.append(index[row["label"]])
    return ImageListDataset(root, files, labels, names, split)


def _cifar(key, root, split, kept, classes, download):
    if download or (root / "cifar-100-python").is_dir():
        from torchvision.datasets import CIFAR100

        try:
            parts = [CIFAR100(str(root), train=t, download=download) for t in (True, False)]
        except RuntimeError as error:
            raise ImageReadError(f"cannot read CIFAR-100 under {root} ({error})") from error
        return TorchvisionDataset(_ClassSubset(parts, classes), split=kept)
    for folder in (root / "data", root):
        if set(classes) & _class_folders(folder):
            return _tree(key, folder, kept, classes)
    raise _missing(key, root, download)


def _cub(key, root, split, kept, classes, download):
    names = standard_splits("cub")["all"]
    for folder in (root / "CUB_200_2011" / "images", root / "images", root):
        if set(names) & _class_folders(folder):
            return _tree(key, folder, kept, classes or names, None if classes else "all")
    raise _missing(key, root, download)


def _any_tree(key, folders: list[Path], kept, download, root) -> ImageFolderDataset:
    for folder in folders:
        found = sorted(_class_folders(folder))
        if found:
            return _tree(key, folder, kept, found)
    raise _missing(key, root, download)


def _cars(key, root, split, kept, classes, download):
    if (root / "stanford_cars").is_dir():
        from torchvision.datasets import StanfordCars

        try:
            parts = [StanfordCars(str(root), split=s) for s in ("train", "test")]
        except (RuntimeError, OSError, ImportError) as error:
            raise ImageReadError(
                f"cannot read Stanford Cars under {root} ({error}); expected {LAYOUTS['cars']}"
            ) from error
        return TorchvisionDataset(_ClassSubset(parts, None), split=kept)
    return _any_tree(key, [root], kept, download, root)


def _places(key, root, split, kept, classes, download):
    return _any_tree(key, [root], kept, download, root)


def _plantae(key, root, split, kept, classes, download):
    return _any_tree(key, [root / "Plantae", root], kept, download, root)


def _aircraft(key, root, split, kept, classes, download):
    return _archive(key, root, kept, download, "fgvc-aircraft-2013b", "FGVCAircraft", "trainval")


def _pets(key, root, split, kept, classes, download):
    return _archive(key, root, kept, download, "oxford-iiit-pet", "OxfordIIITPet", "trainval")


def _archive(key, root, kept, download, folder, class_name, first_part):
    """Every class of a torchvision dataset whose parts are ``first_part`` and ``"test"``, read
    from ``root/folder`` (or downloaded there with ``download``)."""
    if not download and not (root / folder).is_dir():
        raise _missing(key, root, download)
    import torchvision.datasets

    make = getattr(torchvision.datasets, class_name)
    try:
        parts = [make(str(root), split=s, download=download) for s in (first_part, "test")]
    except (RuntimeError, OSError) as error:
        raise ImageReadError(
            f"cannot read {_ARCHIVES[class_name]} under {root} ({error}); expected {LAYOUTS[key]}"
        ) from error
    return TorchvisionDataset(_ClassSubset(parts, None), split=kept)


_ARCHIVES = {
    "CIFAR100": "CIFAR-100",
    "FGVCAircraft": "FGVC-Aircraft",
    "OxfordIIITPet": "Oxford-IIIT Pets",
}


class _ClassSubset:
    """The items of torchvision datasets with the same ``classes`` (e.g. the train and test
    parts of CIFAR-100) whose class is in ``keep`` (``None``: all), relabelled ``0..N-1`` in
    the order of ``keep``; exposes ``targets``, ``classes`` and ``root``, and ``data`` where
    the parts hold their images in memory."""

    def __init__(self, parts: list[Any], keep: list[str] | None):
        names = list(parts[0].classes)
        keep = list(keep) if keep is not None else names
        missing = sorted(set(keep) - set(names))
        if missing:
            raise ImageReadError(
                f"{len(missing)} classes of the split ({', '.join(missing[:5])}"
                f"{', ...' if len(missing) > 5 else ''}) are not in the "
                f"{_ARCHIVES.get(type(parts[0]).__name__, type(parts[0]).__name__)} copy under "
                f"{parts[0].root}; unpack the complete archive there (or pass download=True)"
            )
        code = {names.index(name): new for new, name in enumerate(keep)}
        self.parts = parts
        self.classes = keep
        self.root = parts[0].root
        self.items: list[tuple[int, int]] = []
        self.targets: list[int] = []
        for p, part in enumerate(parts):
            labels = read_labels(part)
            for i, label in enumerate(labels):
                if int(label) in code:
                    self.items.append((p, i))
                    self.targets.append(code[int(label)])
        files = [listed_files(part) for part in parts]
        if all(isinstance(f, list) for f in files):
            self._image_files = [files[p][i] for p, i in self.items]
        arrays = [getattr(part, "data", None) for part in parts]
        if all(a is not None and hasattr(a, "shape") for a in arrays):
            import numpy as np

            self.data = np.stack([arrays[p][i] for p, i in self.items]) if self.items else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        p, i = self.items[index]
        image, _ = self.parts[p][i]
        return image, self.targets[index]
