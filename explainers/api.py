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

from .base import EXPLAINERS, Explainer, Explanation, Target

Images = Tensor | Sequence[Any] | str | os.PathLike


def make_explainer(method: str, **params: Any) -> Explainer:
    """Instantiate the registered explainer ``method`` with its options ``params``.

    Raises:
        ValueError: unknown method (the message lists the registered ones) or an option the
            method does not have (the message lists its options).
    """
    if method not in EXPLAINERS:
        raise ValueError(
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
        raise ValueError(
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


def as_batch(backbone: BackboneAdapter, images: Images) -> Tensor:
    """Images -> one ``(B, 3, H, W)`` float batch on the backbone's device.

    Accepts a ``(B, 3, H, W)`` or ``(3, H, W)`` tensor (one image stays a batch of one), a list of
    same-size tensors, or PIL images / arrays / file paths (which go through
    ``backbone.preprocess``). Tensors are taken as already normalised.
    """
    if isinstance(images, Tensor):
        batch = images[None] if images.ndim == 3 else images
    elif isinstance(images, str | os.PathLike | Image.Image | np.ndarray):
        batch = backbone.preprocess([images])
    else:
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
    if not batch.is_floating_point():
        raise InputSizeError(
            f"image tensors must be float (normalised), got {batch.dtype}; use "
            "backbone.preprocess on raw images"
        )
    return batch.to(parameter_device(backbone))


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
        images: ``(B, 3, H, W)`` tensor, list of same-size tensors, or PIL images / paths.
        method: a name of :data:`EXPLAINERS` (``"cam"``, ``"gradcam"``, ``"attention"``,
            ``"rollout"``, ``"rollout_svd"``) or an :class:`Explainer` instance.
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
            raise ValueError("pass options either to the Explainer instance or to explain()")
        explainer = method
    else:
        explainer = make_explainer(method, **params)
    explainer.check(backbone)
    return explainer(backbone, as_batch(backbone, images), target)
