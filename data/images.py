"""Image loading and preprocessing: files, folders, PIL images and arrays -> normalised batches.

Grayscale, palette and RGBA images are converted to RGB (alpha composited on white); a file that
cannot be decoded raises :class:`ImageReadError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from focusvit.errors import ImageReadError, InputSizeError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")

ImageLike = str | os.PathLike | Image.Image | np.ndarray


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels become white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def read_image(source: ImageLike) -> Image.Image:
    """Open an image file (or pass through a PIL image / HxW[xC] uint8 array) as RGB."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    if isinstance(source, np.ndarray):
        array = source
        if array.dtype != np.uint8:
            array = np.clip(array * (255 if array.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
        return to_rgb(Image.fromarray(array))
    path = Path(source)
    if not path.is_file():
        raise ImageReadError(f"image file {path} does not exist; check the path")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(
            f"cannot decode image file {path} ({error}); the file is corrupt or not an image: "
            "re-export it or remove it from the folder"
        ) from error


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files of a folder (recursively, sorted)."""
    root = Path(folder)
    if not root.is_dir():
        raise ImageReadError(f"{root} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ImageReadError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}; check the folder"
        )
    return files


def _size_from_config(data_config: dict, size: tuple[int, int] | int | None) -> tuple[int, int]:
    if size is None:
        return int(data_config["input_size"][1]), int(data_config["input_size"][2])
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _interpolation(name: str) -> InterpolationMode:
    return {
        "bicubic": InterpolationMode.BICUBIC,
        "bilinear": InterpolationMode.BILINEAR,
        "nearest": InterpolationMode.NEAREST,
    }.get(name, InterpolationMode.BICUBIC)


def transform_image(
    image: Image.Image, data_config: dict, size: tuple[int, int] | int | None = None
) -> Tensor:
    """Resize the shorter side to ``size / crop_pct``, centre-crop ``size``, normalise.

    With the default ``crop_pct = 1/1.15`` this is the FORT protocol (resize to 1.15×, crop).

    Returns:
        ``(3, H, W)`` float tensor.
    """
    out_h, out_w = _size_from_config(data_config, size)
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    interp = _interpolation(str(data_config.get("interpolation", "bicubic")))
    if out_h == out_w:
        resized = TF.resize(image, round(out_h / crop_pct), interpolation=interp)
    else:
        scale = max(out_h / image.height, out_w / image.width) / crop_pct
        new = (max(out_h, round(image.height * scale)), max(out_w, round(image.width * scale)))
        resized = TF.resize(image, list(new), interpolation=interp)
    cropped = TF.center_crop(resized, [out_h, out_w])
    tensor = TF.to_tensor(cropped)
    return TF.normalize(tensor, list(data_config["mean"]), list(data_config["std"]))


def to_batch(
    images: Sequence[ImageLike] | ImageLike,
    data_config: dict,
    size: tuple[int, int] | int | None = None,
) -> Tensor:
    """Preprocess images into one ``(B, 3, H, W)`` batch at the model's input size."""
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    tensors = [transform_image(read_image(item), data_config, size) for item in images]
    if not tensors:
        raise InputSizeError("no images given; pass at least one image or path")
    return torch.stack(tensors)


def load_images(sources: Iterable[ImageLike] | str | os.PathLike) -> list[Image.Image]:
    """Read a folder, a file, or a list of files / PIL images / arrays as RGB PIL images."""
    if isinstance(sources, (str, os.PathLike)):
        path = Path(sources)
        sources = list_images(path) if path.is_dir() else [path]
    return [read_image(s) for s in sources]


def sample_photos(
    names: Sequence[str] = ("chelsea", "coffee", "astronaut", "rocket"),
) -> dict[str, Any]:
    """scikit-image sample photos by name as RGB PIL images (no download needed)."""
    from skimage import data as skdata

    out = {}
    for name in names:
        loader = getattr(skdata, name, None)
        if loader is None:
            raise ValueError(
                f"scikit-image has no sample image {name!r}; try chelsea, coffee, astronaut"
            )
        out[name] = read_image(loader())
    return out


def denormalise(batch: Tensor, data_config: dict) -> Tensor:
    """Undo normalisation: ``(B, 3, H, W)`` -> values in [0, 1] for display."""
    mean = torch.tensor(data_config["mean"], device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(data_config["std"], device=batch.device).view(1, 3, 1, 1)
    return (batch * std + mean).clamp(0, 1)
