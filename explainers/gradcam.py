"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017) for ViT, Swin and CNN backbones.

The target activation is ``backbone.gradcam_layer``'s output (the last block's first norm for
transformers, the last conv stage for CNNs). A forward hook replaces that output by a detached
leaf that requires grad; with every parameter frozen, the autograd graph starts at the leaf, so
``torch.autograd.grad(score, leaf)`` is exactly the Grad-CAM gradient and the backward crosses
only what follows the layer (the last block and the head), never the whole network.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from focusvit.backbones import BackboneAdapter, UnsupportedMethodError

from .attention import image_size_of
from .base import Explainer, Target, register_explainer, resolve_targets


@dataclass
class LeafActivation:
    """The output of the hooked module in the latest forward, as a leaf requiring grad."""

    tensor: Tensor | None = None


@contextmanager
def leaf_output(module: nn.Module) -> Iterator[LeafActivation]:
    """Within the block, ``module``'s output is replaced by ``output.detach().requires_grad_()``.

    The forward values are unchanged; the graph is cut at the module's output, so gradients
    w.r.t. ``record.tensor`` need only a backward through the layers after it. The hook is
    removed on exit, also on error.
    """
    record = LeafActivation()

    def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor:
        if not isinstance(output, Tensor):
            raise UnsupportedMethodError(
                f"the Grad-CAM layer {type(_module).__name__} returns {type(output).__name__}, "
                "not a tensor; the backbone adapter must point gradcam_layer at a module with a "
                "tensor output"
            )
        record.tensor = output.detach().requires_grad_(True)
        return record.tensor

    handle = module.register_forward_hook(hook)
    try:
        yield record
    finally:
        handle.remove()


def gradient_or_zeros(score: Tensor, tensor: Tensor) -> Tensor:
    """``∂ Σ score / ∂ tensor``; zeros when the score does not depend on it."""
    if not score.requires_grad:
        return torch.zeros_like(tensor)
    (gradient,) = torch.autograd.grad(score.sum(), tensor, allow_unused=True)
    return torch.zeros_like(tensor) if gradient is None else gradient


def gradcam_map(activation: Tensor, gradient: Tensor, relu: bool = True) -> Tensor:
    """Grad-CAM of feature maps ``(B, C, h, w)`` and their gradients: ``(B, h, w)``.

    ``α_c = mean_{xy} ∂s/∂A_c(x, y)`` and ``map = ReLU(Σ_c α_c A_c)`` (the convention of the
    paper and of captum's ``LayerGradCam(relu_attributions=True)``).
    """
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = (weights * activation).sum(dim=1)
    return cam.clamp_min(0.0) if relu else cam


@register_explainer
class GradCAMExplainer(Explainer):
    """Grad-CAM at ``backbone.gradcam_layer`` (Selvaraju et al., ICCV 2017).

    ViT: the last block's first norm, patch tokens reshaped to the grid with
    ``backbone.tokens_to_grid`` (prefix tokens dropped); Swin: the same layer of the last stage;
    CNN: the last conv stage. One forward for the batch and a backward from the score to that
    layer only, with pretrained parameters not requiring grad.

    Args:
        relu: apply the final ReLU (default True, as in the paper).
    """

    name: ClassVar[str] = "gradcam"
    families: ClassVar[tuple[str, ...]] = ("vit", "swin", "cnn")
    needs_target: ClassVar[bool] = True

    def __init__(self, relu: bool = True):
        super().__init__(relu=bool(relu))

    def scores(
        self, backbone: BackboneAdapter, images: Tensor, target: Target
    ) -> tuple[Tensor, Tensor]:
        """``(scores (B, h, w), targets (B,))``."""
        size = image_size_of(images)
        with (
            backbone.evaluating(),
            torch.enable_grad(),
            backbone.frozen(),
            leaf_output(backbone.gradcam_layer) as leaf,
        ):
            logits = backbone.logits(images)
            score, classes = resolve_targets(logits, target)
            if leaf.tensor is None:
                raise UnsupportedMethodError(
                    f"the Grad-CAM layer of {backbone.name} was not run by the forward pass; "
                    "check the adapter's gradcam_layer"
                )
            gradient = gradient_or_zeros(score, leaf.tensor)
        activation = backbone.tokens_to_grid(leaf.tensor.detach(), size)
        gradient = backbone.tokens_to_grid(gradient, size)
        return gradcam_map(activation, gradient, relu=self.params["relu"]), classes
