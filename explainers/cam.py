"""Class activation maps (Zhou et al., "Learning Deep Features for Discriminative Localization",
CVPR 2016) for every family with a linear head over pooled features.

``CAM_c(x, y) = Σ_d w_{c,d} f_d(x, y)`` with ``f`` the final feature map (CNN), the last-stage
tokens (Swin) or the final patch tokens reshaped to the grid (ViT, ``backbone.tokens_to_grid``)
and ``w_c`` the head's row for class c. With average pooling (CNNs, Swin) the map is exact:
``mean_{xy} CAM_c + b_c`` equals the logit of class c. For ViTs pooled by the CLS token it is the
usual approximation (the head applied to every patch token); for heads over the concatenation
``[CLS, mean of patch tokens]`` (DINOv2 classifiers) the half of ``w_c`` acting on the patch mean
is used, which is exact for that half.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusvit.backbones import BackboneAdapter, UnsupportedMethodError

from .attention import image_size_of
from .base import Explainer, Target, register_explainer, resolve_targets
from .gradcam import gradient_or_zeros


def head_weights(
    backbone: BackboneAdapter, pooled: Tensor, classes: Tensor, target: Target
) -> Tensor:
    """Weights ``(B, F)`` of the explained score on the pooled features ``(B, F)``.

    Class targets: the head's rows ``W[classes]`` (one-hot rows when the model has no head, as
    its logits are then the features). Callable targets: ``∂s/∂pooled`` through the head alone
    (for a linear head and ``s = logit_c`` this is again ``W[c]``).
    """
    head = backbone.head
    if not isinstance(head, nn.Linear | nn.Identity):
        raise UnsupportedMethodError(
            f"'cam' needs a linear head over pooled features and {backbone.name} has a "
            f"{type(head).__name__}; use method='gradcam' instead"
        )
    if callable(target) and not isinstance(target, Tensor):
        with torch.enable_grad():
            leaf = pooled.detach().requires_grad_(True)
            score, _ = resolve_targets(head(leaf), target)
            return gradient_or_zeros(score, leaf)
    if isinstance(head, nn.Linear):
        return head.weight[classes].to(pooled.dtype)
    return F.one_hot(classes, pooled.shape[1]).to(pooled.dtype)


def patch_weights(
    weights: Tensor, pooled: Tensor, fmap: Tensor, backbone: BackboneAdapter
) -> Tensor:
    """Restrict head weights ``(B, F)`` to the channels ``D`` of the feature map ``(B, D, h, w)``.

    ``F == D``: unchanged. ``F == 2D`` where the second half of the pooled feature is the mean of
    the patch tokens (``[CLS, mean]`` heads): that half. Anything else cannot be mapped.
    """
    channels = fmap.shape[1]
    if weights.shape[1] == channels:
        return weights
    if weights.shape[1] == 2 * channels:
        patch_mean = fmap.flatten(2).mean(dim=2)
        if torch.allclose(pooled[:, channels:], patch_mean, atol=1e-4, rtol=1e-4):
            return weights[:, channels:]
    raise UnsupportedMethodError(
        f"'cam' cannot map the {weights.shape[1]}-dim head input of {backbone.name} onto its "
        f"{channels}-channel patch features (the pooled feature is not the patch mean or the "
        "CLS token); use method='gradcam' instead"
    )


@register_explainer
class CAMExplainer(Explainer):
    """Class activation map (Zhou et al., CVPR 2016): head weights of the target class applied to
    the final feature map, ``(B, h, w)``, without bias and without ReLU (so that the spatial
    mean plus the bias gives the logit under average pooling). One no-grad forward; a callable
    target additionally takes a gradient through the head alone."""

    name: ClassVar[str] = "cam"
    families: ClassVar[tuple[str, ...]] = ("vit", "swin", "cnn")

    def __init__(self) -> None:
        super().__init__()

    def scores(
        self, backbone: BackboneAdapter, images: Tensor, target: Target
    ) -> tuple[Tensor, Tensor]:
        """``(scores (B, h, w), targets (B,))``."""
        with backbone.evaluating(), torch.no_grad():
            tokens = backbone.tokens(images)
            logits = backbone.head_from_tokens(tokens)
            _, classes = resolve_targets(logits, target)
            pooled = backbone.pool(tokens)
            fmap = backbone.tokens_to_grid(tokens, image_size_of(images)).float()
            weights = head_weights(backbone, pooled, classes, target)
            weights = patch_weights(weights.float(), pooled.float(), fmap, backbone)
        return torch.einsum("bd,bdhw->bhw", weights, fmap), classes
