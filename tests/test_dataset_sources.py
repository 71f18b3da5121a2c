"""Dataset sources (issue 31): Hugging Face datasets, torchvision datasets and the standard
benchmarks with their shipped class splits, each read from a miniature copy in its layout and
giving episodes through the API and the CLI; missing data names the layout."""

from __future__ import annotations

import csv
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from PIL import Image

import focusvit
import focusvit.runconfig as rc
from focusvit import EpisodeSpec, cli
from focusvit.data import BENCHMARKS, CROSS_DOMAIN, benchmark_dataset, standard_splits
from focusvit.errors import ConfigError, ImageReadError

datasets = pytest.importorskip("datasets")

PUBLISHED = {
    "mini_imagenet": (64, 16, 20),
    "tiered_imagenet": (351, 97, 160),
    "cifar_fs": (64, 16, 20),
    "fc100": (60, 20, 20),
    "cub": (100, 50, 50),
}
SPEC = EpisodeSpec(n_way=2, k_shot=1, n_query=1, episodes=2)


@pytest.fixture(scope="module")
def backbone():
    return focusvit.load_backbone("tiny:timm-vit", num_classes=0)


def _image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _tree(folder: Path, classes, per_class: int = 3, ext: str = "jpg") -> Path:
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _image(100 * c + i).save(folder / name / f"{name}_{i}.{ext}")
    return folder


def _episodes_run(dataset, backbone):
    """Episodes through the API and a prototype evaluation on the tiny backbone."""
    episodes = focusvit.sample_episodes(
        dataset.labels, n_way=2, k_shot=1, n_query=1, episodes=2, class_names=dataset.class_names
    )
    assert len(episodes) == 2
    result = focusvit.evaluate(backbone, dataset, solver="prototype", episodes=SPEC, progress=False)
    assert 0.0 <= result.mean <= 100.0


def _quiet(function, *args, **kwargs):
    """Call ``function`` with the partial-copy warning of a miniature tree silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".* classes of .*missing")
        return function(*args, **kwargs)


# ----------------------------------------------------------------------------- shipped splits
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shipped_splits_have_the_published_counts_and_are_disjoint(name):
    splits = standard_splits(name)
    base, val, novel = (splits[s] for s in ("base", "val", "novel"))
    assert (len(base), len(val), len(novel)) == PUBLISHED[name]
    assert len(set(base) | set(val) | set(novel)) == sum(PUBLISHED[name])


def test_split_contents_follow_their_definitions():
    cub = standard_splits("cub")
    ordered = sorted(cub["all"])
    assert len(ordered) == 200 and ordered[0] == "001.Black_footed_Albatross"
    assert cub["base"] == ordered[0::2]
    assert cub["val"] == ordered[1::4] and cub["novel"] == ordered[3::4]
    cifar = standard_splits("cifar_fs")
    fc100 = standard_splits("fc100")
    every = {name for names in cifar.values() for name in names}
    assert every == {name for names in fc100.values() for name in names}  # CIFAR-100's 100
    assert {"baby", "man", "woman"} <= set(fc100["novel"])  # the people superclass is novel
    assert all(
        name.startswith("n") and len(name) == 9
        for name in standard_splits("tiered_imagenet")["base"]
    )
    with pytest.raises(ConfigError, match=r"no shipped class list.*class_names"):
        standard_splits("cars")
    with pytest.raises(ConfigError, match="unknown benchmark"):
        standard_splits("imagenet21k")
    assert standard_splits("miniImageNet") == standard_splits("mini-imagenet")


# ----------------------------------------------------------------------------- benchmark layouts
def test_cub_tree_with_the_closer_look_split(tmp_path, backbone):
    splits = standard_splits("cub")
    images = tmp_path / "CUB_200_2011" / "images"
    _tree(images, splits["base"][:2] + splits["val"][:2] + splits["novel"][:3])
    with pytest.warns(UserWarning, match="holds 3 of the 50 novel classes of cub"):
        novel = benchmark_dataset("cub", tmp_path, "novel")
    assert novel.split == "novel" and novel.class_names == splits["novel"][:3]
    _episodes_run(novel, backbone)
    with pytest.raises(ConfigError, match="dataset holds the 'novel' split"):
        EpisodeSpec(n_way=2, k_shot=1, n_query=1, episodes=1, split="val").check_dataset(novel)
    everything = _quiet(benchmark_dataset, "cub", tmp_path, "all")
    assert len(everything.class_names) == 7 and everything.split == "novel"


def test_mini_imagenet_csv_and_per_split_layouts(tmp_path, backbone):
    splits = standard_splits("mini_imagenet")
    csv_root = tmp_path / "csv"
    (csv_root / "images").mkdir(parents=True)
    for split, name in (("base", "train"), ("val", "val"), ("novel", "test")):
        with (csv_root / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "label"])
            for c, wnid in enumerate(splits[split][:2]):
                for i in range(3):
                    file = f"{wnid}{i:08d}.jpg"
                    _image(10 * c + i).save(csv_root / "images" / file)
                    writer.writerow([file, wnid])
    val = _quiet(benchmark_dataset, "mini_imagenet", csv_root, "val")
    assert val.split == "val" and val.class_names == sorted(splits["val"][:2]) and len(val) == 6
    _episodes_run(val, backbone)
    tree_root = tmp_path / "tree"
    _tree(tree_root / "test", splits["novel"][:2])
    _tree(tree_root / "train", splits["base"][:2])
    novel = _quiet(benchmark_dataset, "mini_imagenet", tree_root, "novel")
    assert novel.class_names == sorted(splits["novel"][:2])
    _episodes_run(novel, backbone)
    first = novel.content_fingerprint()
    assert (
        _quiet(benchmark_dataset, "mini_imagenet", tree_root, "base").content_fingerprint() != first
    )


def test_tiered_imagenet_and_cifar_folder_layouts(tmp_path, backbone):
    tiered = standard_splits("tiered_imagenet")
    _tree(tmp_path / "tiered" / "val", tiered["val"][:2])
    val = _quiet(benchmark_dataset, "tiered_imagenet", tmp_path / "tiered", "val")
    assert val.split == "val" and len(val.class_names) == 2
    _episodes_run(val, backbone)
    cifar = standard_splits("cifar_fs")
    fc100 = standard_splits("fc100")
    _tree(tmp_path / "cifar100" / "data", cifar["novel"][:3] + fc100["novel"][:2], ext="png")
    for name, expected in (("cifar_fs", cifar["novel"][:3]), ("fc100", fc100["novel"][:2])):
        data = _quiet(benchmark_dataset, name, tmp_path / "cifar100", "novel")
        assert set(data.class_names) <= set(standard_splits(name)["novel"])
        assert set(expected) <= set(data.class_names)
        _episodes_run(data, backbone)


def test_cross_domain_trees_use_every_class(tmp_path, backbone):
    _tree(tmp_path / "inat" / "Plantae", ["Acer_rubrum", "Quercus_alba"])
    plantae = benchmark_dataset("plantae", tmp_path / "inat")
    assert plantae.class_names == ["Acer_rubrum", "Quercus_alba"] and plantae.split == "novel"
    _episodes_run(plantae, backbone)
    _tree(tmp_path / "places", ["airfield", "bakery", "canyon"])
    assert len(benchmark_dataset("places", tmp_path / "places", "all").class_names) == 3
    with pytest.raises(ConfigError, match="cross-domain set: split must be 'all'"):
        benchmark_dataset("places", tmp_path / "places", "base")


def _aircraft_archive(root: Path) -> list[str]:
    """A miniature of FGVC-Aircraft as torchvision unpacks it; returns its variants."""
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    variants = ["707-320", "A320", "Cessna 172"]
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    for part, offset in (("trainval", 0), ("test", 50)):
        lines = []
        for c, variant in enumerate(variants):
            for i in range(2):
                name = f"{offset + 10 * c + i:07d}"
                _image(offset + 10 * c + i).save(data / "images" / f"{name}.jpg")
                lines.append(f"{name} {variant}")
        (data / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
    return variants


def test_aircraft_in_the_torchvision_layout(tmp_path, backbone):
    variants = _aircraft_archive(tmp_path)
    aircraft = benchmark_dataset("aircraft", tmp_path)
    assert aircraft.class_names == variants and len(aircraft) == 12
    _episodes_run(aircraft, backbone)


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_missing_data_names_the_layout(tmp_path, name):
    split = "all" if name in CROSS_DOMAIN else "novel"
    with pytest.raises(ImageReadError, match=rf"no {name} data found under .*expected .*root"):
        benchmark_dataset(name, tmp_path / "empty", split)


def test_benchmark_arguments_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="split must be one of base, val, novel"):
        benchmark_dataset("mini_imagenet", tmp_path, "test")
    with pytest.raises(ConfigError, match="unknown benchmark 'omniglott'"):
        benchmark_dataset("omniglott", tmp_path, "novel")


# ----------------------------------------------------------------------------- Hugging Face
def _hf_dataset(splits: bool = False):
    names = ["cat", "dog", "fox", "owl"]
    images = [_image(i) for i in range(12)]
    labels = [i % 4 for i in range(12)]
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "fine_label": datasets.ClassLabel(names=names),
            "group": datasets.Value("string"),
        }
    )
    group = ["val" if label < 2 else "novel" for label in labels]
    data = datasets.Dataset.from_dict(
        {"img": images, "fine_label": labels, "group": group}, features=features
    )
    return datasets.DatasetDict({"train": data, "test": data}) if splits else data


def test_hf_dataset_saved_to_disk_gives_episodes(tmp_path, backbone):
    folder = tmp_path / "hf"
    _hf_dataset().save_to_disk(str(folder))
    data = focusvit.HFImageDataset(folder)
    assert data.image_column == "img" and data.label_column == "fine_label"
    assert data.class_names == ["cat", "dog", "fox", "owl"] and len(data) == 12
    assert data.load(0).mode == "RGB" and data.load(0).size == (16, 16)
    _episodes_run(data, backbone)
    split_file = tmp_path / "split.txt"
    split_file.write_text("val cat\nval dog\nnovel fox\nnovel owl\n")
    novel = focusvit.HFImageDataset(folder, split="novel", split_file=split_file)
    assert novel.class_names == ["fox", "owl"] and set(novel.labels) == {0, 1}
    assert novel.content_fingerprint() != data.content_fingerprint()
    by_column = focusvit.HFImageDataset(folder, split="val", split_column="group")
    assert by_column.class_names == ["cat", "dog"] and by_column.split == "val"
    with pytest.raises(ConfigError, match="dataset holds the 'novel' split"):
        EpisodeSpec(n_way=2, k_shot=1, n_query=1, episodes=1, split="val").check_dataset(novel)


def test_hf_columns_and_dataset_dicts(tmp_path):
    data = _hf_dataset()
    features = datasets.Features({**data.features, "other": datasets.Image()})
    columns = {**data.to_dict(), "other": [_image(i) for i in range(12)]}
    two_images = datasets.Dataset.from_dict(columns, features=features)
    with pytest.raises(ConfigError, match=r"cannot infer the image column: 2 are .*img \(Image\)"):
        focusvit.HFImageDataset(two_images)
    assert focusvit.HFImageDataset(two_images, image_column="other").image_column == "other"
    with pytest.raises(ConfigError, match="label_column 'lbl' is not a column; the columns are"):
        focusvit.HFImageDataset(data, label_column="lbl")
    by_name = focusvit.HFImageDataset(data, label_column="group")  # a string column
    assert by_name.class_names == ["novel", "val"]
    folder = tmp_path / "dict"
    _hf_dataset(splits=True).save_to_disk(str(folder))
    with pytest.raises(ConfigError, match=r"holds the splits train, test; pick one with hf_split"):
        focusvit.HFImageDataset(folder)
    assert len(focusvit.HFImageDataset(folder, hf_split="test")) == 12
    with pytest.raises(ImageReadError, match="does not exist"):
        focusvit.HFImageDataset(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- torchvision
def test_torchvision_fake_data_gives_episodes(backbone):
    from torchvision.datasets import FakeData

    fake = FakeData(size=12, image_size=(3, 16, 16), num_classes=3)
    data = focusvit.TorchvisionDataset(fake, split="novel", class_names=["a", "b", "c"])
    assert len(data) == 12 and data.class_names == ["a", "b", "c"]
    assert data.load(0).mode == "RGB"
    _episodes_run(data, backbone)
    other = focusvit.TorchvisionDataset(FakeData(size=12, image_size=(3, 16, 16), num_classes=3))
    assert other.class_names == ["0", "1", "2"] and other.split is None
    assert other.content_fingerprint() != data.content_fingerprint()

    class Listed:  # labels from a `targets` attribute, without decoding
        def __init__(self):
            self.classes = ["x", "y"]
            self.targets = [0, 1, 0, 1]

        def __len__(self):
            return 4

        def __getitem__(self, index):
            raise AssertionError("labels must come from `targets`")

    assert focusvit.TorchvisionDataset(Listed()).labels == [0, 1, 0, 1]
    with pytest.raises(ConfigError, match="map-style dataset"):
        focusvit.TorchvisionDataset(42)


# ----------------------------------------------------------------------------- configs and CLI
def _compose(overrides):
    with initialize_config_module(rc.CONFIG_MODULE, version_base="1.3"):
        return compose("fewshot", overrides=overrides)


@pytest.mark.parametrize("option", ["hf", *sorted(BENCHMARKS)])
def test_every_data_group_composes_and_asks_for_its_root(option):
    cfg = _compose([f"data={option}"])
    key = "path" if option == "hf" else "root"
    assert cfg.data._target_ and OmegaConf.is_missing(cfg.data, key)
    if option != "hf":
        assert cfg.data.name == option
        with pytest.raises(ConfigError, match=r"data\.root is required"):
            rc.instantiate(cfg.data, "data")


def test_data_groups_instantiate_on_miniature_copies(tmp_path):
    folder = tmp_path / "hf"
    _hf_dataset().save_to_disk(str(folder))
    data = rc.instantiate(_compose(["data=hf", f"data.path={folder}"]).data, "data")
    assert isinstance(data, focusvit.HFImageDataset) and len(data.class_names) == 4
    _tree(tmp_path / "CUB_200_2011" / "images", standard_splits("cub")["novel"][:2])
    cfg = _compose(["data=cub", f"data.root={tmp_path}"])
    cub = _quiet(rc.instantiate, cfg.data, "data")
    assert cub.split == "novel" and len(cub.class_names) == 2


def test_fewshot_cli_runs_on_a_saved_hf_dataset(tmp_path, monkeypatch):
    folder = tmp_path / "hf"
    _hf_dataset().save_to_disk(str(folder))
    out = tmp_path / "run"
    argv = [
        "data=hf",
        f"data.path={folder}",
        "backbone=tiny_timm_vit",
        "trainer=smoke",
        "episodes.episodes=2",
        "episodes.n_way=2",
        "episodes.n_query=1",
        "methods=[prototype]",
        "fort=off",
        "report.focus_episodes=0",
        "progress=false",
        f"out={out}",
    ]
    monkeypatch.setattr(sys, "argv", ["focusvit-fewshot", *argv])
    cli.fewshot_main()
    assert (out / "results.json").exists()
    assert "HFImageDataset" in (out / "report.html").read_text()


# ----------------------------------------------------------------------------- torchvision layouts
def _pets_archive(root: Path) -> None:
    """A miniature of Oxford-IIIT Pets as torchvision unpacks it (3 breeds, 4 images each)."""
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations").mkdir()
    breeds = ["Abyssinian", "basset_hound", "Bengal"]
    for part, offset in (("trainval", 0), ("test", 5)):
        lines = []
        for c, breed in enumerate(breeds):
            for i in range(2):
                name = f"{breed}_{offset + i}"
                _image(100 * c + offset + i).save(base / "images" / f"{name}.jpg")
                lines.append(f"{name} {c + 1} {1 if c == 0 else 2} 1")
        (base / "annotations" / f"{part}.txt").write_text("\n".join(lines) + "\n")


def test_pets_in_the_torchvision_layout(tmp_path, backbone):
    _pets_archive(tmp_path)
    pets = benchmark_dataset("pets", tmp_path)
    assert pets.class_names == ["Abyssinian", "Basset Hound", "Bengal"]
    assert len(pets) == 12 and pets.split == "novel"
    assert sorted(pets.labels) == [0] * 4 + [1] * 4 + [2] * 4
    _episodes_run(pets, backbone)


def _pickle(path: Path, entry: dict) -> None:
    path.write_bytes(pickle.dumps(entry))


def test_cifar_fs_and_fc100_in_the_torchvision_cifar100_layout(tmp_path, backbone, monkeypatch):
    """CIFAR-100 as torchvision unpacks it (``cifar-100-python/{train,test,meta}``): each
    benchmark keeps the classes of its split, relabelled in the split's order, from both parts
    (the archive's checksums are switched off: the files are miniatures)."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    novel = standard_splits("cifar_fs")["novel"]
    names = sorted(name for names in standard_splits("cifar_fs").values() for name in names)
    assert len(names) == 100
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _pickle(folder / "meta", {"fine_label_names": names})
    rng = np.random.default_rng(0)
    for part in ("train", "test"):
        labels = list(range(len(names)))  # one image per class and part
        pixels = rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8)
        _pickle(folder / part, {"data": pixels, "fine_labels": labels})
    cifar_fs = benchmark_dataset("cifar_fs", tmp_path, "novel")
    assert cifar_fs.class_names == novel and cifar_fs.split == "novel"
    assert len(cifar_fs) == 40 and sorted(cifar_fs.labels) == sorted(list(range(20)) * 2)
    first = min(names.index(name) for name in novel)  # the first kept item of the train part
    assert cifar_fs.labels[0] == novel.index(names[first])  # relabelled in the split's order
    train = pickle.loads((folder / "train").read_bytes())["data"][first]
    assert np.array_equal(np.asarray(cifar_fs.load(0)), train.reshape(3, 32, 32).transpose(1, 2, 0))
    _episodes_run(cifar_fs, backbone)
    fc100 = benchmark_dataset("fc100", tmp_path, "base")
    assert fc100.class_names == standard_splits("fc100")["base"] and len(fc100) == 120
    assert fc100.content_fingerprint() != cifar_fs.content_fingerprint()
    (folder / "meta").unlink()
    _pickle(folder / "meta", {"fine_label_names": [f"class{i}" for i in range(100)]})
    with pytest.raises(ImageReadError, match=r"classes .* are not in the CIFAR-100 copy under"):
        benchmark_dataset("cifar_fs", tmp_path, "novel")


def _cars_archive(root: Path) -> list[str]:
    """A miniature of Stanford Cars as torchvision reads it (``.mat`` annotations); returns the
    class names."""
    sio = pytest.importorskip("scipy.io")
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    models = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"]
    sio.savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(models, dtype=object)})
    for part, annotation_file in (
        ("train", base / "devkit" / "cars_train_annos.mat"),
        ("test", base / "cars_test_annos_withlabels.mat"),
    ):
        (base / f"cars_{part}").mkdir()
        records = np.zeros((6,), dtype=[("fname", "O"), ("class", "O")])
        for i in range(6):
            name = f"{part}_{i:05d}.jpg"
            _image(i + (50 if part == "test" else 0)).save(base / f"cars_{part}" / name)
            records[i] = (name, np.uint8(i % 3 + 1))
        sio.savemat(annotation_file, {"annotations": records})
    return models


def test_cars_in_the_torchvision_layout(tmp_path, backbone):
    models = _cars_archive(tmp_path)
    cars = benchmark_dataset("cars", tmp_path)
    assert cars.class_names == models and len(cars) == 12
    assert sorted(cars.labels) == [0] * 4 + [1] * 4 + [2] * 4
    _episodes_run(cars, backbone)


@pytest.mark.parametrize(
    ("name", "torchvision_class"),
    [("cifar_fs", "CIFAR100"), ("aircraft", "FGVCAircraft"), ("pets", "OxfordIIITPet")],
)
def test_download_is_passed_to_torchvision_and_its_failure_is_one_error(
    tmp_path, monkeypatch, name, torchvision_class
):
    """``download=True`` reaches torchvision's class (network-free: the class is replaced by
    one that records its arguments and fails as an unreachable server does)."""
    import torchvision.datasets

    calls = []

    class Offline:
        def __init__(self, root, *args, download=False, **kwargs):
            calls.append((root, download))
            raise RuntimeError("cannot reach the download server")

    monkeypatch.setattr(torchvision.datasets, torchvision_class, Offline)
    split = "novel" if name == "cifar_fs" else "all"
    with pytest.raises(ImageReadError, match=r"cannot read .* under .*cannot reach"):
        benchmark_dataset(name, tmp_path / "data", split, download=True)
    assert calls and calls[0] == (str(tmp_path / "data"), True)
    with pytest.raises(ImageReadError, match="or pass download=True"):
        benchmark_dataset(name, tmp_path / "data", split)


# ----------------------------------------------------------------------------- Hugging Face hub
def test_a_hub_name_is_read_with_load_dataset(monkeypatch, backbone):
    """A hub name goes to ``datasets.load_dataset`` with ``hf_split`` (network-free: the loader is
    replaced); a DatasetDict from the hub asks for ``hf_split``; a loader failure is one error
    naming the dataset and the save_to_disk alternative."""
    calls = []

    def load_dataset(name, split=None):
        calls.append((name, split))
        if name == "nobody/missing":
            raise FileNotFoundError("Dataset 'nobody/missing' doesn't exist on the Hub")
        return _hf_dataset(splits=split is None) if split is None else _hf_dataset()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    data = focusvit.HFImageDataset("someone/pets", hf_split="train")
    assert calls[-1] == ("someone/pets", "train")
    assert data.class_names == ["cat", "dog", "fox", "owl"] and len(data) == 12
    _episodes_run(data, backbone)
    with pytest.raises(ConfigError, match="pick one with hf_split"):
        focusvit.HFImageDataset("someone/pets")
    with pytest.raises(ImageReadError, match=r"cannot load the hub dataset 'nobody/missing' .*"):
        focusvit.HFImageDataset("nobody/missing")


def _miniature(name: str, root: Path) -> str:
    """A miniature copy of benchmark ``name`` under ``root`` in one of its layouts (two classes
    of the split where the benchmark has one); returns the split to ask for."""
    if name in PUBLISHED:
        split = "val"
        folder = {"mini_imagenet": root / "val", "tiered_imagenet": root / "val"}.get(name)
        folder = folder or (root / "CUB_200_2011" / "images" if name == "cub" else root / "data")
        _tree(folder, standard_splits(name)[split][:2])
        return split
    {"aircraft": _aircraft_archive, "pets": _pets_archive, "cars": _cars_archive}.get(
        name, lambda r: _tree(r / ("Plantae" if name == "plantae" else ""), ["c1", "c2", "c3"])
    )(root)
    return "all"


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_group_reads_its_miniature_like_the_api(tmp_path, name, backbone):
    """``data=<name> data.root=...`` builds the same dataset as ``benchmark_dataset`` (same
    classes, images and fingerprint), and it gives episodes."""
    split = _miniature(name, tmp_path)
    cfg = _compose([f"data={name}", f"data.root={tmp_path}", f"data.split={split}"])
    from_cli = _quiet(rc.instantiate, cfg.data, "data")
    from_api = _quiet(benchmark_dataset, name, tmp_path, split)
    assert from_cli.class_names == from_api.class_names and len(from_cli.class_names) >= 2
    assert from_cli.content_fingerprint() == from_api.content_fingerprint()
    assert from_cli.split == ("novel" if split == "all" else split)
    _episodes_run(from_cli, backbone)
