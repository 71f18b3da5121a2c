"""Data identity (issue 32): every dataset kind has a content fingerprint and a split, the
feature cache is keyed by the content (never stale after an edit or rename), a damaged cache file
is rebuilt with a warning, the split checks hold for every kind, an empty class folder raises and
a split file with a UTF-8 byte-order mark keeps its first class."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_adapter
from PIL import Image

import focusvit
from focusvit.data import (
    EpisodeError,
    ImageFolderDataset,
    SyntheticScenes,
    TensorDataset,
    dataset_fingerprint,
    manifest_changes,
    read_split,
    sample_episodes,
)
from focusvit.errors import ConfigError, ImageReadError, SettingsMismatchError
from focusvit.finetune import select_alpha
from focusvit.finetune.features import FeatureCache
from focusvit.runs import EpisodeSpec

SPEC = EpisodeSpec(n_way=3, k_shot=1, n_query=2, episodes=6, seed=1)
COLOURS = {"a": (220, 30, 30), "b": (30, 200, 40), "c": (40, 60, 230)}


def _write(path: Path, colour: tuple[int, int, int], seed: int, size: int = 24) -> None:
    """A noisy image of ``colour`` (PNG: its byte size depends on the noise)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 40, (size, size, 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def _folder(root: Path, per_class: int = 4, offset: int = 0) -> Path:
    for k, (name, colour) in enumerate(COLOURS.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _write(root / name / f"{i}.png", colour, offset + 10 * k + i)
    return root


def _accuracies(backbone, data, **options) -> list[float]:
    result = focusvit.evaluate(
        backbone, data, solver="prototype", episodes=SPEC, progress=False, **options
    )
    return result.accuracies


# ----------------------------------------------------------------------------- fingerprints
def test_image_folder_fingerprint_follows_files_classes_and_split(tmp_path):
    root = _folder(tmp_path / "data")
    first = ImageFolderDataset(root).content_fingerprint()
    assert ImageFolderDataset(root).content_fingerprint() == first  # stable, no decoding
    _write(root / "a" / "1.png", COLOURS["a"], 99, size=26)  # edited in place
    edited = ImageFolderDataset(root).content_fingerprint()
    assert edited != first
    os.rename(root / "a", root / "x")
    os.rename(root / "b", root / "a")
    os.rename(root / "x", root / "b")  # two class folders swap names
    assert ImageFolderDataset(root).content_fingerprint() != edited
    split = tmp_path / "splits.txt"
    split.write_text("val a\nval b\nval c\n")
    with_split = ImageFolderDataset(root, split="val", split_file=split)
    assert with_split.split == "val" and with_split.content_fingerprint() not in (first, edited)
    copy = shutil.copytree(root, tmp_path / "copy", copy_function=shutil.copy2)
    assert (
        ImageFolderDataset(copy).content_fingerprint()
        == ImageFolderDataset(root).content_fingerprint()
    )


def test_image_folder_fingerprint_includes_masks(tmp_path):
    root = _folder(tmp_path / "data", per_class=1)
    masks = tmp_path / "masks"
    for name in COLOURS:
        (masks / name).mkdir(parents=True)
        Image.new("L", (24, 24), 255).save(masks / name / "0.png")
    before = ImageFolderDataset(root, mask_root=masks).content_fingerprint()
    assert before != ImageFolderDataset(root).content_fingerprint()
    Image.new("L", (24, 24), 0).save(masks / "a" / "0.png")
    os.utime(masks / "a" / "0.png", ns=(1, 1))
    assert ImageFolderDataset(root, mask_root=masks).content_fingerprint() != before


def test_tensor_and_synthetic_fingerprints_follow_their_content():
    images = torch.randn(6, 3, 8, 8)
    data = TensorDataset(images, [0, 0, 1, 1, 2, 2])
    first = data.content_fingerprint()
    assert TensorDataset(images.clone(), [0, 0, 1, 1, 2, 2]).content_fingerprint() == first
    data.images[2, 0, 0, 0] += 1  # edited in place: seen through the version counter
    assert data.content_fingerprint() != first
    assert TensorDataset(images, [0, 0, 1, 1, 2, 2], split="val").content_fingerprint() != first
    masked = TensorDataset(images, [0, 0, 1, 1, 2, 2], masks=torch.zeros(6, 8, 8, dtype=torch.bool))
    assert masked.content_fingerprint() != first
    scenes = {
        (split, seed): SyntheticScenes(split, images_per_class=2, seed=seed, num_classes=3)
        for split in ("val", "novel")
        for seed in (0, 1)
    }
    prints = {key: dataset_fingerprint(s) for key, s in scenes.items()}
    assert len(set(prints.values())) == 4
    again = SyntheticScenes("val", images_per_class=2, seed=0, num_classes=3)
    assert again.content_fingerprint() == prints[("val", 0)]
    assert dataset_fingerprint(object()) is None


# ----------------------------------------------------------------------------- feature cache
def test_cached_accuracies_follow_edited_images_and_renamed_classes(tmp_path):
    backbone = tiny_adapter("timm-vit", num_classes=0)
    root, cache_dir = _folder(tmp_path / "data"), tmp_path / "cache"
    data = ImageFolderDataset(root)
    before = _accuracies(backbone, data, feature_cache_dir=cache_dir)
    assert before == _accuracies(backbone, data, cache_features=False)
    for i in range(3):  # class a's images become class b's colour, in place
        _write(root / "a" / f"{i}.png", COLOURS["b"], 500 + i, size=25)
    uncached = _accuracies(backbone, ImageFolderDataset(root), cache_features=False)
    assert uncached != before  # the edit matters, so a stale cache would show
    assert _accuracies(backbone, ImageFolderDataset(root), feature_cache_dir=cache_dir) == uncached
    assert _accuracies(backbone, data, feature_cache_dir=cache_dir) == uncached  # same object
    os.rename(root / "b", root / "x")
    os.rename(root / "c", root / "b")
    os.rename(root / "x", root / "c")
    swapped = ImageFolderDataset(root)
    expected = _accuracies(backbone, swapped, cache_features=False)
    assert _accuracies(backbone, ImageFolderDataset(root), feature_cache_dir=cache_dir) == expected


def test_two_roots_sharing_a_cache_dir_keep_their_own_features(tmp_path):
    backbone = tiny_adapter("timm-vit", num_classes=0)
    cache_dir = tmp_path / "cache"
    one = ImageFolderDataset(_folder(tmp_path / "one"))
    two_root = _folder(tmp_path / "two", offset=1000)
    for i in range(4):  # the second root's class c looks like class a
        _write(two_root / "c" / f"{i}.png", COLOURS["a"], 2000 + i)
    two = ImageFolderDataset(two_root)
    _accuracies(backbone, one, feature_cache_dir=cache_dir)
    cached = _accuracies(backbone, two, feature_cache_dir=cache_dir)
    assert cached == _accuracies(backbone, two, cache_features=False)
    assert len(list(cache_dir.glob("features-*.safetensors"))) == 2


def test_tensor_dataset_edited_in_place_is_encoded_again():
    backbone = tiny_adapter("timm-vit", num_classes=0)
    data = TensorDataset(torch.randn(6, 3, 32, 32), [0, 0, 1, 1, 2, 2])
    cache = FeatureCache(backbone, data)
    old = cache([0, 1])
    data.images[0] = torch.randn(3, 32, 32)
    new = cache([0, 1])
    with torch.no_grad(), backbone.evaluating():
        reference = backbone.features(data.images[:2])
    torch.testing.assert_close(new, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(new[0], old[0])


def test_a_damaged_cache_file_is_rebuilt_with_a_warning(tmp_path):
    backbone = tiny_adapter("timm-vit", num_classes=0)
    data = TensorDataset(torch.randn(6, 3, 32, 32), [0, 0, 1, 1, 2, 2])
    cache = FeatureCache(backbone, data, directory=tmp_path)
    expected = cache([0, 3, 5])
    path = cache.save()
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.warns(UserWarning, match=f"feature cache {path}.* damaged"):
        rebuilt = FeatureCache(backbone, data, directory=tmp_path)
    assert len(rebuilt) == 0
    torch.testing.assert_close(rebuilt([0, 3, 5]), expected)
    assert rebuilt.save() == path
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(FeatureCache(backbone, data, directory=tmp_path)) == 3  # rewritten whole


def test_a_dataset_without_a_fingerprint_is_not_cached_on_disk(tmp_path):
    class Plain:
        def __init__(self):
            self.images, self.labels, self.class_names = (
                torch.randn(4, 3, 32, 32),
                [0, 0, 1, 1],
                ["x", "y"],
            )

        def __len__(self):
            return 4

        def load(self, index):
            return self.images[index]

    with pytest.warns(UserWarning, match="no content_fingerprint"):
        cache = FeatureCache(tiny_adapter("timm-vit", num_classes=0), Plain(), directory=tmp_path)
    cache([0, 1])
    assert cache.save() is None and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- splits
def _split_folder(tmp_path: Path) -> tuple[Path, Path]:
    root = _folder(tmp_path / "data", per_class=3)
    (root / "d").mkdir()
    for i in range(3):
        _write(root / "d" / f"{i}.png", (128, 128, 0), 70 + i)
    split = tmp_path / "splits.txt"
    split.write_text("val a\nval b\nval c\nnovel b\nnovel c\nnovel d\n")
    return root, split


def test_every_dataset_kind_reports_its_split(tmp_path):
    root, split = _split_folder(tmp_path)
    assert ImageFolderDataset(root, split="novel", split_file=split).split == "novel"
    assert ImageFolderDataset(root, split="val", classes=["a", "b"]).split == "val"
    assert ImageFolderDataset(root).split is None
    assert TensorDataset(torch.zeros(2, 3, 4, 4), [0, 1], split="base").split == "base"
    assert TensorDataset(torch.zeros(2, 3, 4, 4), [0, 1]).split is None
    assert SyntheticScenes("val", images_per_class=1, num_classes=2).split == "val"
    with pytest.raises(ConfigError, match="split must be a split name"):
        TensorDataset(torch.zeros(2, 3, 4, 4), [0, 1], split=3)
    with pytest.raises(ConfigError, match="unknown split"):
        SyntheticScenes("test")


def test_episode_spec_split_is_checked_for_image_folders_and_tensors(tmp_path):
    root, split = _split_folder(tmp_path)
    novel = ImageFolderDataset(root, split="novel", split_file=split)
    spec = EpisodeSpec(n_way=3, k_shot=1, n_query=1, episodes=1, split="val")
    with pytest.raises(ConfigError, match="dataset holds the 'novel' split"):
        spec.check_dataset(novel)
    spec.check_dataset(ImageFolderDataset(root, split="val", split_file=split))
    tensors = TensorDataset(torch.zeros(6, 3, 4, 4), [0, 0, 1, 1, 2, 2], split="base")
    with pytest.raises(ConfigError, match="dataset holds the 'base' split"):
        spec.check_dataset(tensors)


def test_select_alpha_refuses_a_novel_split_of_every_kind(tmp_path):
    backbone = tiny_adapter("timm-vit")
    root, split = _split_folder(tmp_path)
    spec = EpisodeSpec(n_way=3, k_shot=1, n_query=1, episodes=1)
    novel_sets = [
        ImageFolderDataset(root, split="novel", split_file=split),
        TensorDataset(torch.zeros(6, 3, 32, 32), [0, 0, 1, 1, 2, 2], split="novel"),
        SyntheticScenes("novel", images_per_class=2, num_classes=3),
    ]
    for data in novel_sets:
        with pytest.raises(ConfigError, match=r"'novel' split.*never on the test classes"):
            select_alpha(backbone, data, "lora", [0.5], spec, progress=False)
    unknown = TensorDataset(torch.zeros(6, 3, 32, 32), [0, 0, 1, 1, 2, 2])
    with pytest.raises(ConfigError, match="got episodes of the 'novel' split"):
        select_alpha(backbone, unknown, "lora", [0.5], EpisodeSpec(split="novel"), progress=False)
    val = ImageFolderDataset(root, split="val", split_file=split)
    with pytest.raises(ConfigError, match="dataset holds the 'val' split"):
        select_alpha(backbone, val, "lora", [0.5], EpisodeSpec(split="base"), progress=False)


# ----------------------------------------------------------------------------- folder files
def test_an_empty_class_folder_raises_naming_it(tmp_path):
    root = _folder(tmp_path / "data", per_class=2)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ImageReadError, match=r"class folder .*empty holds no images"):
        ImageFolderDataset(root)
    assert ImageFolderDataset(root, classes=["a", "b"]).class_names == ["a", "b"]
    (root / "empty" / "notes.txt").unlink()
    (root / "empty").rmdir()
    (root / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    assert ImageFolderDataset(root).class_names == ["a", "b", "c"]


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_split_file_with_a_byte_order_mark_keeps_its_first_class(tmp_path, kind):
    if kind == "file":
        path = written = tmp_path / "splits.txt"
        path.write_text("novel a\nnovel b\nval c\n", encoding="utf-8-sig")
    else:
        path = tmp_path / "splits"
        path.mkdir()
        written = path / "novel.txt"
        written.write_text("a\nb\n", encoding="utf-8-sig")
    assert written.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_split(path, "novel") == ["a", "b"]
    root = _folder(tmp_path / "data", per_class=2)
    assert ImageFolderDataset(root, split="novel", split_file=path).class_names == ["a", "b"]


def test_a_missing_or_undecodable_split_file_is_one_clear_error(tmp_path):
    with pytest.raises(ImageReadError, match=r"split file .* does not exist"):
        read_split(tmp_path / "nope.txt", "novel")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"novel \xff\xfe\n")
    with pytest.raises(ImageReadError, match="save it as UTF-8"):
        read_split(bad, "novel")


def test_episode_counts_must_be_whole_numbers():
    labels = [0, 0, 1, 1, 2, 2]
    for bad in ({"n_way": 2.5}, {"k_shot": True}, {"n_query": "1"}, {"episodes": 1.0}):
        with pytest.raises(EpisodeError, match=f"{next(iter(bad))} must be a whole number"):
            sample_episodes(labels, **{"n_way": 2, "k_shot": 1, "n_query": 1, **bad})
    with pytest.raises(EpisodeError, match="seed and start must be >= 0"):
        sample_episodes(labels, n_way=2, k_shot=1, n_query=1, episodes=2, seed=-1)
    assert len(sample_episodes(labels, n_way=2, k_shot=1, n_query=1, episodes=2)) == 2


# ----------------------------------------------------------------------------- resume


def test_resuming_on_changed_files_is_refused_naming_them(tmp_path):
    backbone = tiny_adapter("timm-vit", num_classes=0)
    root = _folder(tmp_path / "data")
    output = tmp_path / "out" / "proto.jsonl"
    first = _accuracies(backbone, ImageFolderDataset(root), output=output)
    manifest = output.with_name("proto.jsonl.files.json")
    assert manifest.is_file()
    # the same content resumes (nothing re-run, same accuracies)
    assert _accuracies(backbone, ImageFolderDataset(root), output=output) == first
    _write(root / "b" / "1.png", (0, 0, 0), 99, size=30)
    (root / "c" / "3.png").unlink()
    _write(root / "c" / "9.png", COLOURS["c"], 7)
    with pytest.raises(SettingsMismatchError) as caught:
        _accuracies(backbone, ImageFolderDataset(root), output=output)
    message = str(caught.value)
    assert "dataset.content" in message and "\n" not in message
    assert "changed b/1.png, removed c/3.png, added c/9.png" in message


def test_resuming_on_other_tensors_is_refused(tmp_path):
    backbone = tiny_adapter("timm-vit", num_classes=0)
    images = torch.rand(12, 3, 16, 16)
    labels = [0] * 4 + [1] * 4 + [2] * 4
    output = tmp_path / "proto.jsonl"
    _accuracies(backbone, TensorDataset(images, labels), output=output)
    assert not output.with_name("proto.jsonl.files.json").exists()  # nothing to name per file
    with pytest.raises(SettingsMismatchError, match=r"dataset\.content"):
        _accuracies(backbone, TensorDataset(images + 0.5, labels), output=output)


def test_a_stale_manifest_is_replaced_when_the_episode_file_starts_again(tmp_path):
    backbone = tiny_adapter("timm-vit", num_classes=0)
    root = _folder(tmp_path / "data")
    output = tmp_path / "proto.jsonl"
    _accuracies(backbone, ImageFolderDataset(root), output=output)
    _write(root / "a" / "0.png", (9, 9, 9), 5, size=30)
    output.unlink()  # start again: the manifest must describe the new content
    _accuracies(backbone, ImageFolderDataset(root), output=output)
    manifest = json.loads(output.with_name("proto.jsonl.files.json").read_text())
    assert manifest == ImageFolderDataset(root).content_manifest()
    assert manifest_changes(manifest, ImageFolderDataset(root).content_manifest()) == []


def test_opening_episode_files_stats_each_image_twice_whatever_the_runner_count(
    tmp_path, monkeypatch
):
    """One pass for the settings fingerprint and one for the manifest, shared by all runners
    (was two passes per runner: slow on a 60 000-image benchmark folder)."""
    from focusvit.finetune import make_runner
    from focusvit.runs import evaluate_many

    backbone = tiny_adapter("timm-vit", num_classes=0)
    data = ImageFolderDataset(_folder(tmp_path / "data"))
    runners = [
        make_runner(backbone, solver=solver, cache_features=False)
        for solver in ("prototype", "knn", "ridge")
    ]
    stamps = []
    original = ImageFolderDataset.file_stamp
    monkeypatch.setattr(
        ImageFolderDataset,
        "file_stamp",
        lambda self, index: stamps.append(index) or original(self, index),
    )
    outputs = {runner.name: tmp_path / "out" / f"{runner.name}.jsonl" for runner in runners}
    assert len(outputs) == 3
    evaluate_many(runners, data, SPEC, outputs=outputs, progress=False)
    assert all(path.with_name(path.name + ".files.json").is_file() for path in outputs.values())
    assert len(stamps) == 2 * len(data)
