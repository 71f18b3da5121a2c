"""One call shape for every explainer: ``explain(backbone, images, method=..., target=...)``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from focusvit.backbones import BackboneAdapter, InputSizeError, adapt
from focusvit.backbones.base import parameter_device
from focusvit.errors import ConfigError

from .base import EXPLAINERS, Explainer, Explanation, Target

Images = Tensor | Sequence[Any] | str | os.PathLike


def make_explainer(method: str, **params: Any) -> Explainer:
    """Instantiate the registered explainer ``method`` with its options ``params``.

    Raises:
        ConfigError: unknown method (the message lists the registered ones) or an option the
            method does not have (the message lists its options).
    """
    if not isinstance(method, str) or method not in EXPLAINERS:
        raise ConfigError(
            f"unknown explanation method {method!r}; available: {', '.join(sorted(EXPLAINERS))}"
        )
    cls = EXPLAINERS[method]
    options = [
        name
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and parameter.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    unknown = sorted(set(params) - set(options))
    if unknown:
        raise ConfigError(
            f"method {method!r} has no option(s) {', '.join(unknown)}; its options are: "
            f"{', '.join(options) or 'none'}"
        )
    return cls(**params)


def _stack_tensors(images: Sequence[Tensor]) -> Tensor:
    batch = [image[None] if image.ndim == 3 else image for image in images]
    sizes = sorted({tuple(image.shape[-2:]) for image in batch})
    if len(sizes) > 1:
        listed = ", ".join(f"{h}x{w}" for h, w in sizes)
        raise InputSizeError(
            f"images of different sizes ({listed}) cannot form one batch; resize them to one "
            "size, or pass PIL images / file paths so that backbone.preprocess resizes them"
        )
    if any(image.ndim != 4 for image in batch):
        raise InputSizeError(
            "each image tensor must be (3, H, W) or (1, 3, H, W); got shapes "
            f"{[tuple(image.shape) for image in images]}"
        )
    return torch.cat(batch)


def _numpy_batch(backbone: BackboneAdapter, array: np.ndarray) -> Tensor:
    """A numpy array: ``(B, C, H, W)`` / ``(C, H, W)`` float arrays are preprocessed tensors,
    ``(H, W)`` / ``(H, W, C)`` arrays are images (``backbone.preprocess``)."""
    channels_last = array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4))
    channels_first = array.ndim == 4 or (array.ndim == 3 and array.shape[0] == 3)
    if channels_first and channels_last:
        raise InputSizeError(
            f"numpy array of shape {array.shape} is ambiguous (channels first or last?); pass "
            "torch.from_numpy(array) for a normalised (3, H, W) tensor, or "
            "PIL.Image.fromarray(array) for an (H, W, 3) image"
        )
    if not channels_first:
        return backbone.preprocess([array])
    if not np.issubdtype(array.dtype, np.floating):
        raise InputSizeError(
            f"a {array.dtype} numpy array of shape {array.shape} is taken as a preprocessed "
            "batch, which must be float (normalised); pass raw images as (H, W, 3) uint8 arrays "
            "or PIL images so that backbone.preprocess normalises them"
        )
    return torch.from_numpy(np.ascontiguousarray(array))


def as_batch(backbone: BackboneAdapter, images: Images) -> Tensor:
    """Images -> one ``(B, 3, H, W)`` float batch on the backbone's device and in its dtype.

    Accepts a ``(B, 3, H, W)`` or ``(3, H, W)`` tensor (one image stays a batch of one), a list of
    same-size tensors, or PIL images / arrays / file paths (which go through
    ``backbone.preprocess``). Tensors are taken as already normalised.

    Conversion policy: floating tensors of another precision (float64, float16, bfloat16) are cast
    to the model's parameter dtype; float numpy arrays of shape ``(B, 3, H, W)`` or ``(3, H, W)``
    are such tensors; other numpy arrays (``(H, W[, C])``) are images. Integer tensors, empty
    batches and shapes that are not a batch of 3-channel images are refused
    (:class:`InputSizeError`).
    """
    if isinstance(images, Tensor):
        batch = images[None] if images.ndim == 3 else images
    elif isinstance(images, np.ndarray):
        batch = _numpy_batch(backbone, images)
        batch = batch[None] if batch.ndim == 3 else batch
    elif isinstance(images, str | os.PathLike | Image.Image):
        batch = backbone.preprocess([images])
    elif isinstance(images, Sequence | set | tuple) and not isinstance(images, bytes):
        items = list(images)
        if not items:
            raise InputSizeError("no images given; pass at least one image")
        tensors = [isinstance(item, Tensor) for item in items]
        if all(tensors):
            batch = _stack_tensors(items)
        elif not any(tensors):
            batch = backbone.preprocess(items)
        else:
            raise InputSizeError(
                "mix of tensors and PIL images / paths; pass either preprocessed tensors or raw "
                "images (which go through backbone.preprocess), not both"
            )
    else:
        raise InputSizeError(
            f"images must be a (B, 3, H, W) tensor, a list of tensors, or PIL images / arrays / "
            f"file paths, got {type(images).__name__}; for encoded bytes use "
            "PIL.Image.open(io.BytesIO(data))"
        )
    if not batch.is_floating_point():
        raise InputSizeError(
            f"image tensors must be float (normalised), got {batch.dtype}; use "
            "backbone.preprocess on raw images"
        )
    channels = int(backbone.data_config.get("input_size", (3,))[0])
    if batch.ndim != 4 or batch.shape[1] != channels:
        raise InputSizeError(
            f"image tensors must be ({channels}, H, W) or (B, {channels}, H, W), got shape "
            f"{tuple(images.shape) if hasattr(images, 'shape') else tuple(batch.shape)}; for raw "
            "images use backbone.preprocess"
        )
    if batch.shape[0] == 0:
        raise InputSizeError(
            f"the batch holds no images (shape {tuple(batch.shape)}); pass at least one image"
        )
    dtype = next((p.dtype for p in backbone.parameters() if p.is_floating_point()), batch.dtype)
    return batch.to(device=parameter_device(backbone), dtype=dtype)


def explain(
    backbone: BackboneAdapter | nn.Module,
    images: Images,
    method: str | Explainer = "rollout_svd",
    target: Target = None,
    **params: Any,
) -> Explanation:
    """Explain a batch of images with one registered method.

    Args:
        backbone: a :class:`BackboneAdapter` (``focusvit.load_backbone``), or a timm / HF model
            which is wrapped with ``focusvit.adapt``.
        images: ``(B, 3, H, W)`` tensor, list of same-size tensors, or PIL images / paths; see
            :func:`as_batch` for the numpy and dtype conversions.
        method: a name of :data:`EXPLAINERS` (``"cam"``, ``"gradcam"``, ``"attention"``,
            ``"rollout"``, ``"rollout_svd"``, ``"random"``: the chance-level baseline, option
            ``seed``) or an :class:`Explainer` instance.
        target: None (predicted class), an int, a ``(B,)`` tensor of classes, or a callable
            mapping logits ``(B, C)`` to scores ``(B,)`` (e.g. similarity to a prototype).
        **params: the method's options (see each explainer class).

    Returns:
        A frozen :class:`Explanation` with ``scores`` ``(B, h, w)`` on the patch grid,
        ``maps()`` at pixel resolution, the method name and its parameters.
    """
    if not isinstance(backbone, BackboneAdapter):
        backbone = adapt(backbone)
    if isinstance(method, Explainer):
        if params:
            raise ConfigError(
                "options were passed both to an Explainer instance and to explain(); pass them "
                "to the instance only, e.g. explain(b, x, method=GradCAM(layer=...))"
            )
        explainer = method
    else:
        explainer = make_explainer(method, **params)
    explainer.check(backbone)
    return explainer(backbone, as_batch(backbone, images), target)
