"""Image loading: modes converted to RGB, corrupt files named, FORT resize-then-crop protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import focusvit
from focusvit.backbones import ImageReadError, default_data_config
from focusvit.data.images import denormalise, list_images, read_image, to_batch


@pytest.fixture
def photo_dir(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    rgba = np.concatenate([rgb, np.zeros((40, 60, 1), np.uint8)], axis=-1)  # fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    return tmp_path


def test_grayscale_and_rgba_become_rgb(photo_dir):
    gray = read_image(photo_dir / "gray.png")
    rgba = read_image(photo_dir / "rgba.png")
    assert gray.mode == rgba.mode == "RGB"
    g = np.asarray(gray)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    assert (np.asarray(rgba) == 255).all()  # transparent pixels composited on white


def test_corrupt_file_is_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageReadError, match=r"broken\.jpg"):
        read_image(bad)
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "missing.png")


def test_folder_listing_and_empty_folder(photo_dir, tmp_path_factory):
    assert [p.name for p in list_images(photo_dir)] == ["gray.png", "rgb.png", "rgba.png"]
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(ImageReadError, match="no images"):
        list_images(empty)


def test_batch_shape_normalisation_and_crop_protocol(photo_dir):
    config = default_data_config(32)
    batch = to_batch(list_images(photo_dir), config)
    assert batch.shape == (3, 3, 32, 32)
    # a constant image maps to (value - mean) / std in every pixel
    const = Image.new("RGB", (50, 70), (128, 64, 255))
    x = to_batch(const, config)[0]
    expected = (torch.tensor([128, 64, 255]) / 255 - torch.tensor(config["mean"])) / torch.tensor(
        config["std"]
    )
    torch.testing.assert_close(x.mean(dim=(1, 2)), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        denormalise(x[None], config)[0, :, 0, 0],
        torch.tensor([128, 64, 255]) / 255,
        atol=1e-4,
        rtol=1e-4,
    )
    # resize to 1.15x then centre-crop: a thin white frame at the border is cropped away
    canvas = np.zeros((230, 230, 3), np.uint8)
    canvas[:5], canvas[-5:], canvas[:, :5], canvas[:, -5:] = 255, 255, 255, 255
    assert denormalise(to_batch(canvas, config), config).max() < 0.05
    no_crop = {**config, "crop_pct": 1.0}
    assert denormalise(to_batch(canvas, no_crop), no_crop).max() > 0.5


def test_non_square_batch_for_a_backbone():
    backbone = focusvit.load_backbone("tiny:timm-vit")
    image = Image.new("RGB", (90, 50), (10, 200, 30))
    batch = backbone.preprocess([image], size=(24, 40))
    assert batch.shape == (1, 3, 24, 40)
    assert backbone.logits(batch).shape == (1, 5)
