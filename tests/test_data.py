"""Synthetic scenes, few-shot datasets (ground-truth masks of ImageFolder datasets included) and
the episode sampler."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

import focusvit
from focusvit.backbones import ImageReadError
from focusvit.data.datasets import ImageFolderDataset, TensorDataset
from focusvit.data.episodes import EpisodeError, sample_episode, sample_episodes
from focusvit.data.images import denormalise, read_mask
from focusvit.data.synthetic import (
    SceneConfig,
    SyntheticScenes,
    class_splits,
    distractor_bank,
    glyph_bank,
)
from focusvit.errors import ConfigError, InputSizeError


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


def _folder_with_masks(tmp_path, mask_suffix: str = ".png"):
    """root/<class>/<i>.jpg with a white square object per image, masks/<class>/<i><suffix>."""
    root, masks = tmp_path / "images", tmp_path / "masks"
    boxes = {}
    for c, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        (masks / cls).mkdir(parents=True)
        for i in range(2):
            height, width = 90 + 30 * i, 60
            top, left = 10 + 20 * c, 5 + 10 * i
            pixels = np.full((height, width, 3), 40, np.uint8)
            pixels[top : top + 30, left : left + 25] = 255
            Image.fromarray(pixels).save(root / cls / f"{i}.jpg", quality=95)
            mask = np.zeros((height, width), np.uint8)
            mask[top : top + 30, left : left + 25] = 1  # nonzero = object
            Image.fromarray(mask).save(masks / cls / f"{i}{mask_suffix}")
            boxes[(cls, i)] = (top, left)
    return root, masks, boxes


def test_image_folder_masks_from_a_parallel_folder(tmp_path):
    root, masks, boxes = _folder_with_masks(tmp_path)
    data = ImageFolderDataset(root, mask_root=masks)
    assert data.class_names == ["cat", "dog"] and len(data) == 4
    for index in range(len(data)):
        image, label, mask = data[index]
        assert label == data.labels[index] and mask.dtype == bool
        assert mask.shape == (image.height, image.width)
        top, left = boxes[(data.class_names[label], index % 2)]
        assert mask[top : top + 30, left : left + 25].all() and mask.sum() == 30 * 25
        assert np.asarray(image)[mask].mean() > 200 and np.asarray(image)[~mask].mean() < 60
    # without mask_root there are no masks, as before
    assert ImageFolderDataset(root).mask(0) is None and ImageFolderDataset(root)[0][2] is None


def test_image_folder_masks_align_through_preprocessing_and_metrics(tmp_path):
    from focusvit.explainers.metrics import pointing_game, prompt_precision

    root, masks, _ = _folder_with_masks(tmp_path)
    data = ImageFolderDataset(root, mask_root=masks)
    backbone = focusvit.load_backbone("tiny:timm-vit", image_size=64)
    for resize in ("crop", "stretch", "letterbox"):
        items = [data[i] for i in range(len(data))]
        batch = backbone.preprocess([item[0] for item in items], resize=resize)
        gt = backbone.preprocess_masks([item[2] for item in items], resize=resize)
        assert gt.shape == (4, 64, 64) and gt.dtype == torch.bool
        bright = denormalise(batch, backbone.data_config).mean(dim=1) > 0.5
        iou = (bright & gt).flatten(1).sum(1) / (bright | gt).flatten(1).sum(1)
        assert (iou > 0.85).all(), (resize, iou)
        # patch scores equal to the object's coverage point at it: the metrics run on own data
        scores = torch.nn.functional.avg_pool2d(gt.float()[:, None], 8)[:, 0]
        assert pointing_game(scores, gt).eq(1).all()
        assert prompt_precision(scores > 0.9, gt).eq(1).all()


def test_image_folder_mask_errors_name_the_expected_path(tmp_path):
    root, masks, _ = _folder_with_masks(tmp_path, mask_suffix=".bmp")
    assert ImageFolderDataset(root, mask_root=masks).mask(3).any()  # any image extension
    (masks / "dog" / "1.bmp").unlink()
    expected = str(masks / "dog" / "1.png")
    with pytest.raises(ImageReadError, match=f"1 of 4 images.*{re.escape(expected)}"):
        ImageFolderDataset(root, mask_root=masks)
    with pytest.raises(ImageReadError, match=r"mask folder .* is not a directory"):
        ImageFolderDataset(root, mask_root=tmp_path / "nope")
    Image.new("L", (10, 10), 1).save(masks / "dog" / "1.png")
    data = ImageFolderDataset(root, mask_root=masks)
    with pytest.raises(InputSizeError, match=r"10x10 \(WxH\).*60x120.*image's size"):
        data.mask(3)


def test_mask_pixels_nonzero_in_any_band_and_opaque(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (0, 0, 7)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_mask(tmp_path / "rgb.png").sum() == 1
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, :2] = (255, 255, 255, 255)
    rgba[1, :2] = (255, 255, 255, 0)  # transparent: background
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert read_mask(tmp_path / "rgba.png").sum() == 2
    palette = Image.new("P", (4, 4), 0)
    palette.putpixel((1, 1), 3)
    palette.save(tmp_path / "palette.png")
    assert (
        read_mask(tmp_path / "palette.png")[1, 1] and read_mask(tmp_path / "palette.png").sum() == 1
    )


def test_split_without_split_file_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "0.png")
    with pytest.raises(ConfigError, match="split='novel' needs split_file"):
        ImageFolderDataset(tmp_path, split="novel")
