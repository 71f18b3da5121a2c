"""Image loading and preprocessing: files, folders, PIL images and arrays -> normalised batches.

Decoding (:func:`read_image`) gives an 8-bit RGB PIL image for every mode Pillow reads, scaled
honestly rather than clipped:

- 8-bit modes (``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ...) convert to RGB;
  images with transparency (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa``/``La``, ``P`` with a
  transparent colour) are composited on white.
- 16-bit modes (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``: 16-bit PNG, TIFF) divide by 65535.
- 32-bit integer ``I`` (how Pillow opens 16-bit PGM and some 16-bit PNG/TIFF files): values
  within ``[0, 65535]`` are 16-bit data and divide by 65535; other values (signed or wider
  data, which has no fixed full scale) are stretched from their minimum and maximum onto
  ``[0, 1]``.
- float ``F`` (32-bit float TIFF): values within ``[0, 1]`` are used as they are (the float-image
  convention); any other range is stretched from its minimum and maximum onto ``[0, 1]`` (a
  constant image is clipped to ``[0, 1]``). NaN or Inf raises :class:`NonFiniteError`.
- The EXIF orientation tag is applied (``ImageOps.exif_transpose``) to files and to PIL images
  straight from ``Image.open``; images derived from them (``format`` unset) are taken as they are.

NumPy arrays ``(H, W)``, ``(H, W, 1|2|3|4)`` follow the same rules by dtype: ``uint8`` as is,
``bool`` as 0/255, ``uint16`` divides by 65535, other integer types hold 8-bit data when their
values lie in ``[0, 255]`` (NumPy's default integer type), 16-bit data within ``[0, 65535]``,
else are stretched. Float arrays follow the ``F`` rule, except that values within ``[0, 255]``
(beyond 1) are 8-bit pixels held as floats (``np.asarray(image, np.float32)``) and divide by 255,
as focusvit always read them; a float *file* has no such convention (a float TIFF of depths or
radiances in ``[0, 12]`` would turn black), so it is stretched.

Preprocessing (:func:`transform_image`, :func:`to_batch`) resizes to the model's input size
under a resize policy stored in the data config (``data_config["resize"]``, see
:data:`RESIZE_POLICIES`): ``"crop"`` (default; shorter side to ``size / crop_pct``, centre crop),
``"stretch"`` (resize to the input size, aspect ratio not kept, nothing cut) or ``"letterbox"``
(fit inside, pad with the mean colour, which normalises to 0). :func:`transform_mask` puts
object masks through the same geometry, so they stay aligned with the images.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from focusvit.checks import is_number, is_whole_number
from focusvit.errors import ConfigError, ImageReadError, InputSizeError, NonFiniteError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")

#: resize policies of :func:`transform_image` (``data_config["resize"]``)
RESIZE_POLICIES = ("crop", "stretch", "letterbox")

ImageLike = str | os.PathLike | Image.Image | np.ndarray

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


# ----------------------------------------------------------------------------- decoding
def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any 8-bit PIL mode to RGB; transparent pixels become white.

    High bit-depth modes (``I;16*``, ``I``, ``F``) go through :func:`decode_image`, which
    scales them before the conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F", *_SIXTEEN_BIT_MODES):
        return decode_image(image)
    bands = image.getbands()
    if "A" in bands or "a" in bands or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("LA").convert("RGBA") if image.mode == "La" else image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.clip(values, 0.0, 1.0)
    return (values - low) / (high - low)


def _check_finite(values: np.ndarray, what: str) -> None:
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise NonFiniteError(
            f"{what} holds {bad} NaN or Inf values; replace them (e.g. numpy.nan_to_num) "
            "before passing the image"
        )


def scale_to_unit(
    values: np.ndarray, what: str = "image", eight_bit_floats: bool = False
) -> np.ndarray:
    """Pixel values of any dtype -> float32 in ``[0, 1]`` by the rules of the module docstring.

    Args:
        values: ``(H, W)`` or ``(H, W, C)`` array.
        what: names the image in error messages.
        eight_bit_floats: float values within ``[0, 255]`` (beyond 1) divide by 255 (the array
            convention) instead of being stretched (the float-file rule).

    Raises:
        NonFiniteError: float values with NaN or Inf.
        ImageReadError: a dtype that holds no pixel values (complex, object, strings).
    """
    if values.dtype == np.bool_:
        return values.astype(np.float32)
    if values.dtype == np.uint8:
        return values.astype(np.float32) / 255.0
    if values.dtype == np.uint16 or values.dtype.str in (">u2", "<u2"):
        return values.astype(np.float32) / 65535.0
    if np.issubdtype(values.dtype, np.integer):
        data = values.astype(np.float32)
        low, high = float(data.min()), float(data.max())
        if low >= 0 and high <= 255:
            return data / 255.0
        if low >= 0 and high <= 65535:
            return data / 65535.0
        return _stretch(data)
    if np.issubdtype(values.dtype, np.floating):
        _check_finite(values, what)
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 1.0:
            return values.astype(np.float32)
        if eight_bit_floats and low >= 0.0 and high <= 255.0:
            return values.astype(np.float32) / 255.0
        return _stretch(values.astype(np.float64)).astype(np.float32)
    raise ImageReadError(
        f"{what} has dtype {values.dtype}, which holds no pixel values; pass uint8, uint16, "
        "integer, bool or float data"
    )


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def decode_image(image: Image.Image, what: str = "image") -> Image.Image:
    """A PIL image of any mode Pillow reads -> 8-bit RGB, scaled (not clipped) per mode.

    Args:
        image: the PIL image, ``(W, H)`` pixels in any mode.
        what: names the image in error messages.

    Returns:
        RGB image of the same size.
    """
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        unit = np.asarray(image).astype(np.float32) / 65535.0
    elif mode == "I":
        data = np.asarray(image).astype(np.float32)
        low, high = float(data.min()), float(data.max())
        unit = data / 65535.0 if low >= 0 and high <= 65535 else _stretch(data)
    elif mode == "F":
        unit = scale_to_unit(np.asarray(image), what)
    else:
        return to_rgb(image)
    return Image.fromarray(_to_uint8(unit), mode="L").convert("RGB")


def _oriented(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (a no-op copy when there is none)."""
    transposed = ImageOps.exif_transpose(image)
    return image if transposed is None else transposed


def _array_image(array: np.ndarray) -> Image.Image:
    """``(H, W)`` or ``(H, W, C)`` array of any pixel dtype -> RGB PIL image."""
    what = f"array of shape {tuple(array.shape)}"
    if array.size == 0:
        raise InputSizeError(f"{what} is empty; pass an image with at least one pixel")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
        hint = ""
        if array.ndim == 3 and array.shape[0] in (1, 3, 4):
            hint = " (channels first? use array.transpose(1, 2, 0))"
        raise InputSizeError(
            f"{what} is not an image: expected (H, W) or (H, W, C) with C in 1, 2, 3, 4{hint}"
        )
    if array.dtype != np.uint8:
        array = _to_uint8(scale_to_unit(array, what, eight_bit_floats=True))
    mode = "L" if array.ndim == 2 else {2: "LA", 3: "RGB", 4: "RGBA"}[array.shape[-1]]
    return to_rgb(Image.fromarray(np.ascontiguousarray(array), mode=mode))


def _open(path: Path) -> Image.Image:
    """Open and fully load an image file, EXIF orientation applied."""
    if path.is_dir():
        raise ImageReadError(
            f"{path} is a directory, not an image file; pass a file, or load a whole folder "
            "with focusvit.data.load_images(folder)"
        )
    if not path.is_file():
        raise ImageReadError(f"image file {path} does not exist; check the path")
    try:
        with warnings.catch_warnings():
            # a huge image is refused before it is decoded (PIL warns above MAX_IMAGE_PIXELS and
            # raises above twice that): both as one error naming the file and the limit
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return _oriented(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(
            f"image file {path} is too large to decode safely ({error}); if it is a real image, "
            "raise PIL.Image.MAX_IMAGE_PIXELS before loading it, or downscale the file"
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(
            f"cannot decode image file {path} ({error}); the file is corrupt or not an image: "
            "re-export it or remove it from the folder"
        ) from error


def read_image(source: ImageLike) -> Image.Image:
    """Open an image file, or take a PIL image or an array, as 8-bit RGB.

    Every mode is scaled to the full 8-bit range by its bit depth (see the module docstring);
    EXIF orientation is applied to files and to images straight from ``Image.open``.

    Args:
        source: a path, a PIL image, or an ``(H, W)`` / ``(H, W, C)`` array.

    Returns:
        RGB PIL image, ``(W, H)`` pixels after EXIF orientation.

    Raises:
        ImageReadError: a missing, undecodable or directory path.
        InputSizeError: an empty array or one that is not ``(H, W[, C])``.
        NonFiniteError: float pixels with NaN or Inf.
    """
    if isinstance(source, Image.Image):
        image = _oriented(source) if source.format is not None else source
        return decode_image(image)
    if isinstance(source, np.ndarray):
        return _array_image(source)
    _check_source(source, "image")
    path = Path(source)
    return decode_image(_open(path), what=f"image file {path}")


def _check_source(source: Any, what: str) -> None:
    """Refuse a ``source`` that is no path (after PIL images and arrays were handled): a tensor
    (taken as preprocessed already), ``None``, bytes, numbers, ...; one line with the fix."""
    if isinstance(source, Tensor):
        raise InputSizeError(
            f"{what} sources are files, PIL images or arrays, got a tensor of shape "
            f"{tuple(source.shape)}; convert it first, e.g. source.permute(1, 2, 0).numpy() for a "
            "(3, H, W) tensor, or pass a preprocessed batch to the model directly"
        )
    if not isinstance(source, str | os.PathLike):
        hint = (
            "; for encoded bytes use PIL.Image.open(io.BytesIO(data))"
            if isinstance(source, bytes | bytearray)
            else "; pass e.g. 'cat.jpg' or PIL.Image.open('cat.jpg')"
        )
        raise InputSizeError(
            f"{what} sources must be file paths, PIL images or (H, W) / (H, W, C) arrays, got "
            f"{type(source).__name__} {source!r:.60}{hint}"
        )


def _check_sources(sources: Any, what: str) -> list[Any]:
    """``sources`` as a list, or a one-line error when it is no iterable of items."""
    if (
        sources is None
        or isinstance(sources, bytes | bytearray | str)
        or not isinstance(sources, Iterable)
    ):
        raise InputSizeError(
            f"expected a list of {what}s (file paths, PIL images or arrays), got "
            f"{type(sources).__name__} {sources!r:.60}; pass e.g. [path_a, path_b]"
        )
    return list(sources)


def read_mask(source: str | os.PathLike | Image.Image | np.ndarray) -> np.ndarray:
    """An object mask file (or PIL image / array) -> bool ``(H, W)``: nonzero pixels are object.

    A pixel is object when any colour band is nonzero (for palette images: a nonzero palette
    index) and, for images with an alpha band, its alpha is nonzero. EXIF orientation is applied
    to files, as for :func:`read_image`, so a mask stays aligned with its image.

    Raises:
        InputSizeError: an array that is not ``(H, W[, C])``, or a source that is no path, PIL
            image, array or tensor.
        ImageReadError: a missing or undecodable mask file.
    """
    if isinstance(source, Tensor):
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        array = np.asarray(source)
        if array.ndim == 3:
            array = array.any(axis=-1)
        if array.ndim != 2 or array.size == 0:
            raise InputSizeError(
                f"mask of shape {tuple(source.shape)} is not (H, W) or (H, W, C) with pixels"
            )
        return array != 0
    if isinstance(source, Image.Image):
        image = _oriented(source) if source.format is not None else source
    else:
        _check_source(source, "mask")
        image = _open(Path(source))
    bands = image.getbands()
    alpha = None
    if "A" in bands or "a" in bands:
        alpha = np.asarray(image.getchannel(bands.index("A") if "A" in bands else "a")) != 0
    colours = [i for i, band in enumerate(bands) if band not in ("A", "a")]
    data = np.asarray(image)
    mask = (data[..., colours] != 0).any(axis=-1) if data.ndim == 3 else data != 0
    return mask if alpha is None else mask & alpha


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


# ----------------------------------------------------------------------------- geometry
def parse_size(size: int | Sequence[int], what: str = "image_size") -> tuple[int, int]:
    """An int or ``(height, width)`` -> ``(height, width)`` of positive ints.

    Raises:
        ConfigError: naming ``what`` and the accepted forms.
    """
    if is_whole_number(size):
        pair: tuple[Any, ...] = (int(size), int(size))
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        pair = tuple(size)
    else:
        raise ConfigError(
            f"{what}={size!r} is not a size: pass an int (square) or (height, width) of ints"
        )
    if not all(is_whole_number(v) for v in pair):
        raise ConfigError(f"{what}={size!r} must hold whole pixel counts, e.g. 224 or (224, 160)")
    if min(pair) < 1:
        raise ConfigError(f"{what}={size!r} must be positive, e.g. 224 or (224, 160)")
    return int(pair[0]), int(pair[1])


def check_resize(resize: str) -> str:
    """``resize`` if it names a policy of :data:`RESIZE_POLICIES`, else :class:`ConfigError`."""
    if resize not in RESIZE_POLICIES:
        raise ConfigError(
            f"unknown resize policy {resize!r}; use one of {', '.join(map(repr, RESIZE_POLICIES))} "
            "('crop': centre crop, 'stretch': resize without crop, 'letterbox': fit inside and pad)"
        )
    return resize


def check_crop_pct(crop_pct: Any) -> float:
    """``crop_pct`` as a float if it is a real number in ``(0, 1]`` (the share of the resized
    image the centre crop keeps: 0.875 = resize to 256, crop 224), else :class:`ConfigError`."""
    if not is_number(crop_pct) or not 0 < float(crop_pct) <= 1:
        raise ConfigError(
            f"crop_pct must be a number in (0, 1] (the share of the resized image the centre "
            f"crop keeps), got {crop_pct!r}; e.g. crop_pct=0.875, or crop_pct=1 for no crop"
        )
    return float(crop_pct)


def _size_from_config(data_config: dict, size: tuple[int, int] | int | None) -> tuple[int, int]:
    if size is None:
        return int(data_config["input_size"][1]), int(data_config["input_size"][2])
    return parse_size(size, "size")


def _interpolation(name: str) -> InterpolationMode:
    return {
        "bicubic": InterpolationMode.BICUBIC,
        "bilinear": InterpolationMode.BILINEAR,
        "nearest": InterpolationMode.NEAREST,
    }.get(name, InterpolationMode.BICUBIC)


def _fit(
    image: Image.Image,
    data_config: dict,
    size: tuple[int, int] | int | None,
    resize: str | None,
    interpolation: InterpolationMode,
    fill: int | tuple[int, ...],
) -> Image.Image:
    """Resize ``image`` to the output size under the resize policy (shared by images, masks)."""
    out_h, out_w = _size_from_config(data_config, size)
    policy = check_resize(resize or str(data_config.get("resize") or "crop"))
    if policy == "stretch":
        return TF.resize(image, [out_h, out_w], interpolation=interpolation)
    if policy == "letterbox":
        scale = min(out_h / image.height, out_w / image.width)
        new_h = min(out_h, max(1, round(image.height * scale)))
        new_w = min(out_w, max(1, round(image.width * scale)))
        resized = TF.resize(image, [new_h, new_w], interpolation=interpolation)
        top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
        padding = [left, top, out_w - new_w - left, out_h - new_h - top]
        return TF.pad(resized, padding, fill=fill)
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    if out_h == out_w:
        resized = TF.resize(image, round(out_h / crop_pct), interpolation=interpolation)
    else:
        scale = max(out_h / image.height, out_w / image.width) / crop_pct
        new = (max(out_h, round(image.height * scale)), max(out_w, round(image.width * scale)))
        resized = TF.resize(image, list(new), interpolation=interpolation)
    return TF.center_crop(resized, [out_h, out_w])


def transform_image(
    image: Image.Image,
    data_config: dict,
    size: tuple[int, int] | int | None = None,
    resize: str | None = None,
) -> Tensor:
    """Resize to the input size under the resize policy, normalise.

    Policies (``resize``, else ``data_config["resize"]``, else ``"crop"``):

    - ``"crop"``: resize the shorter side to ``size / crop_pct``, centre-crop ``size``. With the
      default ``crop_pct = 1/1.15`` this is the FORT protocol (resize to 1.15×, crop).
    - ``"stretch"``: resize to ``size`` directly (``crop_pct`` unused; aspect ratio not kept).
    - ``"letterbox"``: resize so the whole image fits, keeping its aspect ratio, and pad the
      borders with the mean colour (0 after normalisation).

    Args:
        image: RGB PIL image of any size.
        data_config: ``input_size (3, H, W)``, ``mean``, ``std``, optional ``crop_pct``,
            ``interpolation``, ``resize``.
        size: output ``(H, W)`` or a square side; ``None`` takes ``input_size``.
        resize: policy overriding ``data_config["resize"]``.

    Returns:
        ``(3, H, W)`` float tensor.
    """
    interp = _interpolation(str(data_config.get("interpolation", "bicubic")))
    fill = tuple(round(255 * float(m)) for m in data_config["mean"])
    fitted = _fit(image, data_config, size, resize, interp, fill)
    tensor = TF.to_tensor(fitted)
    return TF.normalize(tensor, list(data_config["mean"]), list(data_config["std"]))


def transform_mask(
    mask: np.ndarray | Tensor | Image.Image,
    data_config: dict,
    size: tuple[int, int] | int | None = None,
    resize: str | None = None,
) -> Tensor:
    """An object mask through the same resize, crop or padding as :func:`transform_image`.

    Args:
        mask: ``(H, W)`` bool (or nonzero = object) mask at the resolution of its image.
        data_config, size, resize: as for :func:`transform_image`.

    Returns:
        ``(H', W')`` bool tensor at the model's input size (padding is background).
    """
    if isinstance(mask, Tensor):
        mask = mask.detach().cpu().numpy()
    binary = read_mask(mask)
    image = Image.fromarray(binary.astype(np.uint8) * 255, mode="L")
    fitted = _fit(image, data_config, size, resize, InterpolationMode.NEAREST, 0)
    return torch.from_numpy(np.asarray(fitted) > 127)


def to_batch(
    images: Sequence[ImageLike] | ImageLike,
    data_config: dict,
    size: tuple[int, int] | int | None = None,
    resize: str | None = None,
) -> Tensor:
    """Preprocess images into one ``(B, 3, H, W)`` batch at the model's input size.

    ``resize`` overrides ``data_config["resize"]`` (see :func:`transform_image`).
    """
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    tensors = [transform_image(read_image(item), data_config, size, resize) for item in images]
    if not tensors:
        raise InputSizeError("no images given; pass at least one image or path")
    return torch.stack(tensors)


def masks_to_batch(
    masks: Sequence[np.ndarray | Tensor | Image.Image] | np.ndarray | Tensor,
    data_config: dict,
    size: tuple[int, int] | int | None = None,
    resize: str | None = None,
) -> Tensor:
    """Object masks (each ``(H_i, W_i)``, aligned with its image) -> ``(B, H, W)`` bool batch
    aligned with :func:`to_batch` of the images, for the localisation metrics
    (``prompt_precision``, ``pointing_game``)."""
    single = isinstance(masks, str | os.PathLike | Image.Image)
    if single or (isinstance(masks, (np.ndarray, Tensor)) and masks.ndim == 2):
        masks = [masks]
    masks = _check_sources(masks, "mask")
    out = [transform_mask(m, data_config, size, resize) for m in masks]
    if not out:
        raise InputSizeError("no masks given; pass at least one (H, W) mask")
    return torch.stack(out)


def load_images(sources: Iterable[ImageLike] | str | os.PathLike) -> list[Image.Image]:
    """Read a folder, a file, or a list of files / PIL images / arrays as RGB PIL images.

    Raises:
        InputSizeError: ``sources`` is no path or list, or an item is no path, PIL image or
            array (e.g. ``None`` or a tensor).
        ImageReadError: a missing or undecodable file, or a folder without images.
    """
    if isinstance(sources, (str, os.PathLike)):
        path = Path(sources)
        sources = list_images(path) if path.is_dir() else [path]
    elif isinstance(sources, Image.Image) or (
        isinstance(sources, np.ndarray) and sources.ndim <= 3
    ):
        sources = [sources]  # one image (a 4-d array is a stack of images)
    return [read_image(s) for s in _check_sources(sources, "image")]


def sample_photos(
    names: Sequence[str] = ("chelsea", "coffee", "astronaut", "rocket"),
) -> dict[str, Any]:
    """scikit-image sample photos by name as RGB PIL images (no download needed)."""
    from skimage import data as skdata

    out = {}
    for name in names:
        loader = getattr(skdata, name, None)
        if loader is None:
            raise ConfigError(
                f"scikit-image has no sample image {name!r}; try chelsea, coffee, astronaut"
            )
        out[name] = read_image(loader())
    return out


def denormalise(batch: Tensor, data_config: dict) -> Tensor:
    """Undo normalisation: ``(B, 3, H, W)`` -> values in [0, 1] for display."""
    mean = torch.tensor(data_config["mean"], device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(data_config["std"], device=batch.device).view(1, 3, 1, 1)
    return (batch * std + mean).clamp(0, 1)
