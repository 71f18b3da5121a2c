"""Image loading: every mode decoded with its own scaling (16-bit, float, EXIF orientation),
corrupt files named, the resize policies (FORT resize-then-crop, stretch, letterbox), masks
aligned with their images, and load_backbone's image_size / resize options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import focusvit
from focusvit.backbones import ImageReadError, default_data_config
from focusvit.data.images import (
    RESIZE_POLICIES,
    denormalise,
    list_images,
    masks_to_batch,
    read_image,
    to_batch,
)
from focusvit.errors import ConfigError, InputSizeError, NonFiniteError


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


# ----------------------------------------------------------------------------- honest decoding
def _gradient16(width: int = 256, height: int = 4) -> np.ndarray:
    """Full-range 16-bit horizontal gradient ``(height, width)`` uint16."""
    return np.tile(np.linspace(0, 65535, width).round().astype(np.uint16), (height, 1))


def _write_sixteen_bit(path, gradient: np.ndarray, kind: str) -> str:
    """Write ``gradient`` so Pillow opens it in the mode ``kind`` names; returns that mode."""
    height, width = gradient.shape
    if kind == "png":  # Pillow: I;16
        Image.fromarray(gradient).save(path)
    elif kind == "tiff_big_endian":  # Pillow: I;16B
        Image.frombytes("I;16B", (width, height), gradient.astype(">u2").tobytes()).save(path)
    else:  # 16-bit PGM, which Pillow opens as 32-bit I
        header = f"P5\n{width} {height}\n65535\n".encode()
        path.write_bytes(header + gradient.astype(">u2").tobytes())
    with Image.open(path) as image:
        return image.mode


@pytest.mark.parametrize(
    ("kind", "suffix", "mode"),
    [("png", ".png", "I;16"), ("tiff_big_endian", ".tif", "I;16B"), ("pgm", ".pgm", "I")],
)
def test_sixteen_bit_images_keep_their_gradient(tmp_path, kind, suffix, mode):
    gradient = _gradient16()
    path = tmp_path / f"gradient{suffix}"
    assert _write_sixteen_bit(path, gradient, kind) == mode
    pixels = np.asarray(read_image(path)).astype(int)
    row = pixels[0, :, 0]
    assert (pixels == pixels[..., :1]).all()  # grey stays grey
    assert (np.diff(row) >= 0).all() and row[0] == 0 and row[-1] == 255
    assert (row == 255).mean() < 0.05  # the old decoding clipped 98% of it to white
    expected = np.round(gradient[0] / 65535 * 255)
    assert np.abs(row - expected).max() <= 1


def test_sixteen_bit_pil_image_and_array_are_scaled_too():
    gradient = _gradient16()
    from_pil = np.asarray(read_image(Image.fromarray(gradient)))[0, :, 0]
    from_array = np.asarray(read_image(gradient))[0, :, 0]
    expected = np.round(gradient[0] / 65535 * 255)
    assert np.abs(from_pil - expected).max() <= 1 and np.abs(from_array - expected).max() <= 1
    # an int64 array holding 8-bit values (NumPy's default integer type) stays 8-bit
    eight_bit = np.tile(np.arange(256), (4, 1))
    assert (np.asarray(read_image(eight_bit))[..., 0] == eight_bit).all()


def test_float_tiff_in_unit_range_is_not_black(tmp_path):
    values = np.tile(np.linspace(0.0, 1.0, 128, dtype=np.float32), (4, 1))
    Image.fromarray(values, mode="F").save(tmp_path / "unit.tif")
    pixels = np.asarray(read_image(tmp_path / "unit.tif")).astype(int)
    assert pixels.max() == 255  # the old decoding gave an all-black image
    assert np.abs(pixels[..., 1] - np.round(values * 255)).max() <= 1


def test_float_tiff_outside_unit_range_is_stretched_and_nan_refused(tmp_path):
    values = np.tile(np.linspace(-2.0, 6.0, 128, dtype=np.float32), (4, 1))
    Image.fromarray(values, mode="F").save(tmp_path / "wide.tif")
    row = np.asarray(read_image(tmp_path / "wide.tif"))[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and (np.diff(row) >= 0).all()
    assert np.abs(row - np.round((values[0] + 2) / 8 * 255)).max() <= 1
    # float arrays within [0, 255] are 8-bit pixels held as floats: a dark one stays dark
    dark = np.tile(np.linspace(0.0, 60.0, 128), (4, 1))
    assert np.abs(np.asarray(read_image(dark))[..., 0] - np.round(dark)).max() <= 1
    values[1, 3] = np.nan
    Image.fromarray(values, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(NonFiniteError, match=r"nan\.tif.*NaN or Inf.*nan_to_num"):
        read_image(tmp_path / "nan.tif")
    with pytest.raises(NonFiniteError, match="nan_to_num"):
        read_image(values)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    # stored 60 wide x 30 high, a red block at the stored top-left corner; orientation 6 means
    # "rotate 90 degrees clockwise to display": the block shows at the top-right of a 30x60 image
    stored = np.zeros((30, 60, 3), np.uint8)
    stored[:10, :10] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"rotated{suffix}"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    for image in (read_image(path), read_image(Image.open(path))):
        assert image.size == (30, 60)  # (W, H): the old decoding kept (60, 30)
        pixels = np.asarray(image).astype(int)
        assert pixels[:10, -10:, 0].mean() > 200 and pixels[:10, -10:, 1].mean() < 60
        assert pixels[:10, :10, 0].mean() < 60
    expected = np.rot90(stored, k=-1)
    assert np.abs(np.asarray(read_image(path)).astype(int) - expected).mean() < 8
    # derived images (format unset) are taken as they are
    assert read_image(Image.open(path).copy()).size == (60, 30)


def test_arrays_of_the_wrong_shape_name_the_fix():
    with pytest.raises(InputSizeError, match=r"transpose\(1, 2, 0\)"):
        read_image(np.zeros((3, 20, 30), np.uint8))
    with pytest.raises(InputSizeError, match="empty"):
        read_image(np.zeros((0, 5, 3), np.uint8))


def test_directory_is_not_reported_missing(tmp_path):
    with pytest.raises(ImageReadError, match=r"is a directory.*load_images"):
        read_image(tmp_path)


# ----------------------------------------------------------------------------- resize policies
def _tall_image_with_top_marker(width: int = 60, height: int = 300) -> Image.Image:
    pixels = np.full((height, width, 3), 128, np.uint8)
    pixels[:30] = (255, 0, 0)  # a red band at the very top
    return Image.fromarray(pixels)


def _has_red(batch: torch.Tensor, config: dict) -> bool:
    image = denormalise(batch, config)[0]
    return bool(((image[0] > 0.8) & (image[1] < 0.2) & (image[2] < 0.2)).any())


@pytest.mark.parametrize("size", [32, (24, 40), (40, 24)])
@pytest.mark.parametrize("resize", RESIZE_POLICIES)
def test_every_resize_policy_gives_the_input_size(size, resize):
    config = default_data_config(32)
    for image in (_tall_image_with_top_marker(), Image.new("RGB", (300, 50), (9, 9, 9))):
        batch = to_batch(image, config, size=size, resize=resize)
        expected = (size, size) if isinstance(size, int) else size
        assert batch.shape == (1, 3, *expected)


def test_letterbox_and_stretch_keep_the_top_of_a_tall_image():
    config = default_data_config(32)
    image = _tall_image_with_top_marker()
    assert not _has_red(to_batch(image, config), config)  # the default centre crop cuts it off
    assert _has_red(to_batch(image, config, resize="stretch"), config)
    letterbox = {**config, "resize": "letterbox"}
    batch = to_batch(image, letterbox)
    assert _has_red(batch, letterbox)
    # 60x300 fits as 6x32 (rounded) in the middle columns; the borders are the mean colour (0)
    assert batch[0, :, :, :10].abs().max() < 0.05 and batch[0, :, :, -10:].abs().max() < 0.05
    assert batch[0, :, :, 14:18].abs().max() > 0.5


def test_unknown_resize_policy_names_the_choices():
    config = default_data_config(32)
    image = Image.new("RGB", (40, 40))
    with pytest.raises(ConfigError, match="'crop', 'stretch', 'letterbox'"):
        to_batch(image, config, resize="pad")
    with pytest.raises(ConfigError, match="unknown resize policy 'zoom'"):
        to_batch(image, {**config, "resize": "zoom"})
    with pytest.raises(ConfigError, match="'crop', 'stretch', 'letterbox'"):
        focusvit.load_backbone("tiny:timm-vit", resize="fit")


@pytest.mark.parametrize("resize", RESIZE_POLICIES)
def test_masks_stay_aligned_with_images(resize):
    config = default_data_config(32)
    pixels = np.zeros((120, 80, 3), np.uint8)
    mask = np.zeros((120, 80), bool)
    mask[20:70, 30:75] = True
    pixels[mask] = (255, 255, 255)
    for size in (None, (24, 40)):
        image = denormalise(to_batch(pixels, config, size=size, resize=resize), config)[0]
        bright = image.mean(dim=0) > 0.5
        aligned = masks_to_batch([mask], config, size=size, resize=resize)[0]
        assert aligned.dtype == torch.bool and aligned.shape == bright.shape
        iou = (bright & aligned).sum() / (bright | aligned).sum()
        assert iou > 0.85


def test_load_backbone_image_size_and_resize():
    backbone = focusvit.load_backbone("tiny:timm-vit", image_size=(24, 40), resize="letterbox")
    assert backbone.data_config["input_size"] == (3, 24, 40)
    assert backbone.data_config["resize"] == "letterbox"
    batch = backbone.preprocess([_tall_image_with_top_marker()])
    assert batch.shape == (1, 3, 24, 40) and _has_red(batch, backbone.data_config)
    assert backbone.logits(batch).shape == (1, 5)
    masks = backbone.preprocess_masks([np.ones((300, 60), bool)])
    assert masks.shape == (1, 24, 40) and masks[0, :, 20].all() and not masks[0, :, 0].any()
    square = focusvit.load_backbone("tiny:timm-vit", image_size=48)
    assert square.data_config["input_size"] == (3, 48, 48)
    assert square.data_config.get("resize", "crop") == "crop"
    assert square.preprocess([Image.new("RGB", (70, 50))]).shape == (1, 3, 48, 48)
    with pytest.raises(InputSizeError, match=r"multiples of 8x8.*image_size=\(32, 40\)"):
        focusvit.load_backbone("tiny:timm-vit", image_size=(30, 41))
    for bad in (0, -8, "224", (32,), 32.0, True):
        with pytest.raises(ConfigError, match="image_size"):
            focusvit.load_backbone("tiny:timm-vit", image_size=bad)
