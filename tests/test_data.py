"""Synthetic scenes, few-shot datasets and the episode sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from focusvit.backbones import ImageReadError
from focusvit.data.datasets import ImageFolderDataset, TensorDataset
from focusvit.data.episodes import EpisodeError, sample_episode, sample_episodes
from focusvit.data.synthetic import (
    SceneConfig,
    SyntheticScenes,
    class_splits,
    distractor_bank,
    glyph_bank,
)


def test_class_splits_are_disjoint_and_cover_the_glyphs():
    splits = class_splits()
    assert list(splits) == ["base", "val", "novel"]
    sets = [set(v) for v in splits.values()]
    assert all(len(s) > 0 for s in sets)  # else the pairwise check below is vacuous
    assert all(len(a & b) == 0 for i, a in enumerate(sets) for b in sets[i + 1 :])
    assert sum(len(s) for s in sets) == len(glyph_bank()[0]) >= 300


def test_glyph_classes_are_distinct_and_never_distractors():
    _, glyphs = glyph_bank()
    thumbs = glyphs.reshape(len(glyphs), 16, 4, 16, 4).mean(axis=(2, 4)) > 0.4
    shapes = distractor_bank()
    shape_thumbs = shapes.reshape(len(shapes), 16, 4, 16, 4).mean(axis=(2, 4)) > 0.4
    flat, sflat = thumbs.reshape(len(thumbs), -1), shape_thumbs.reshape(len(shapes), -1)
    inter = flat.astype(int) @ np.concatenate([flat, sflat]).T.astype(int)
    union = flat.sum(1)[:, None] + np.concatenate([flat, sflat]).sum(1)[None] - inter
    iou = inter / np.maximum(union, 1)
    np.fill_diagonal(iou[:, : len(flat)], 0)
    assert iou.max() <= 0.8


def test_scenes_are_deterministic_with_a_mask_on_the_object():
    config = SceneConfig(image_size=64)
    a = SyntheticScenes("novel", images_per_class=3, config=config, seed=1, num_classes=4)
    b = SyntheticScenes("novel", images_per_class=3, config=config, seed=1, num_classes=4)
    image_a, label, mask = a[5]
    image_b, _, mask_b = b[5]
    assert np.array_equal(np.asarray(image_a), np.asarray(image_b)) and np.array_equal(mask, mask_b)
    assert image_a.size == (64, 64) and mask.shape == (64, 64) and label == 1
    assert len(a) == 12 and a.labels == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    # the object is drawn in one saturated colour: masked pixels are far more saturated
    hsv = np.asarray(image_a.convert("HSV"), np.float32)
    assert hsv[..., 1][mask].mean() > hsv[..., 1][~mask].mean() + 60
    assert 0.02 < mask.mean() < 0.4
    other_seed = SyntheticScenes("novel", images_per_class=3, config=config, seed=2, num_classes=4)
    assert not np.array_equal(np.asarray(other_seed[5][0]), np.asarray(image_a))


def test_episodes_are_reproducible_independent_and_well_formed():
    labels = [c for c in range(10) for _ in range(8)]
    first = sample_episodes(labels, n_way=5, k_shot=2, n_query=3, episodes=6, seed=3)
    again = sample_episodes(labels, n_way=5, k_shot=2, n_query=3, episodes=6, seed=3)
    assert first == again
    assert sample_episodes(labels, 5, 2, 3, episodes=6, seed=3, start=4) == first[4:]
    assert sample_episode(labels, 2, 5, 2, 3, seed=3) == first[2]
    assert first[0] != sample_episodes(labels, 5, 2, 3, episodes=1, seed=4)[0]
    for episode in first:
        assert len(set(episode.classes)) == 5
        assert len(set(episode.support) | set(episode.query)) == 5 * 5  # no overlap
        for i, label in enumerate(episode.support_labels.tolist()):
            assert labels[episode.support[i]] == episode.classes[label]
        for i, label in enumerate(episode.query_labels.tolist()):
            assert labels[episode.query[i]] == episode.classes[label]


def test_episode_errors_name_the_class_and_counts():
    labels = [0] * 10 + [1] * 3 + [2] * 10
    with pytest.raises(EpisodeError, match=r"'birds' has 3 images .* need 6"):
        sample_episodes(labels, n_way=2, k_shot=1, n_query=5, class_names=["cats", "birds", "dogs"])
    with pytest.raises(EpisodeError, match="has 3"):
        sample_episodes(labels, n_way=5, k_shot=1, n_query=1)


def test_image_folder_dataset_with_split_file(tmp_path):
    for cls in ("a", "b", "c"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "empty").mkdir()
    split = tmp_path.parent / "splits.txt"
    split.write_text("base a\nnovel b\nnovel c\n")
    data = ImageFolderDataset(tmp_path, split="novel", split_file=split)
    assert data.class_names == ["b", "c"] and data.labels == [0, 0, 1, 1]
    assert data.load(3).mode == "RGB"
    with pytest.raises(ImageReadError, match="not a directory"):
        ImageFolderDataset(tmp_path / "nope")
    with pytest.raises(ImageReadError, match="no images"):
        ImageFolderDataset(tmp_path / "empty")


def test_tensor_dataset_checks_shapes():
    data = TensorDataset(torch.zeros(4, 3, 8, 8), [0, 0, 1, 1])
    assert data.class_names == ["0", "1"] and data.load(2).shape == (3, 8, 8)
    with pytest.raises(ValueError, match="one label each"):
        TensorDataset(torch.zeros(4, 3, 8, 8), [0, 1])


def test_premise_scenes_add_large_class_independent_objects():
    import numpy as np

    from focusvit.data import SceneConfig, SyntheticScenes
    from focusvit.runs import dataset_settings

    shipped = SyntheticScenes("novel", images_per_class=2, num_classes=6)
    premise = SyntheticScenes(
        "novel", images_per_class=2, num_classes=6, config=SceneConfig(premise_objects=2)
    )
    again = SyntheticScenes(
        "novel", images_per_class=2, num_classes=6, config=SceneConfig(premise_objects=2)
    )
    assert np.array_equal(np.asarray(premise.load(3)), np.asarray(again.load(3)))  # seeded

    def saturated_outside_mask(scenes) -> float:
        shares = []
        for index in range(len(scenes)):
            image, _, mask = scenes[index]
            rgb = np.asarray(image, np.float32) / 255
            saturation = rgb.max(-1) - rgb.min(-1)
            shares.append(((saturation > 0.5) & ~mask).mean())
        return float(np.mean(shares))

    # the class-independent objects are as saturated as the class object, and large
    assert saturated_outside_mask(premise) > 2 * saturated_outside_mask(shipped)
    assert all(premise.mask(i).any() for i in range(len(premise)))  # the class object is there
    # another drawing config is another dataset in a settings record
    assert dataset_settings(premise) != dataset_settings(shipped)
