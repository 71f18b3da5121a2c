"""Tiny randomly initialised models of every supported family, built from configs.

For tests, examples and smoke runs without downloads: ``load_backbone("tiny:timm-vit")``.
Each builder takes ``num_classes`` and returns a model in eval mode with a fixed seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from focusvit.errors import ConfigError

TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


def _timm_vit(num_classes: int) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=32, patch_size=8, num_classes=num_classes, dynamic_img_size=True, **TINY_VIT
    )


def _timm_vit_registers(num_classes: int) -> nn.Module:
    """DINOv2 layout: layer scale, 2 register tokens, no position embedding on prefix tokens."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=28,
        patch_size=7,
        num_classes=num_classes,
        dynamic_img_size=True,
        reg_tokens=2,
        no_embed_class=True,
        init_values=1e-1,
        **TINY_VIT,
    )


def _timm_deit_distilled(num_classes: int) -> nn.Module:
    from timm.models.deit import VisionTransformerDistilled

    return VisionTransformerDistilled(
        img_size=32, patch_size=8, num_classes=num_classes, dynamic_img_size=True, **TINY_VIT
    )


def _timm_swin(num_classes: int) -> nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(
        img_size=64,
        patch_size=4,
        window_size=4,
        embed_dim=16,
        depths=(2, 2),
        num_heads=(2, 4),
        num_classes=num_classes,
        strict_img_size=False,
    )


def _hf_vit(num_classes: int) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=max(num_classes, 1),
        layer_norm_eps=1e-6,
    )
    return (
        ViTForImageClassification(config)
        if num_classes
        else ViTModel(config, add_pooling_layer=False)
    )


def _hf_dinov2(num_classes: int) -> nn.Module:
    from transformers import Dinov2Config, Dinov2ForImageClassification, Dinov2Model

    config = Dinov2Config(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        num_labels=max(num_classes, 1),
    )
    return Dinov2ForImageClassification(config) if num_classes else Dinov2Model(config)


def _hf_swin(num_classes: int) -> nn.Module:
    from transformers import SwinConfig, SwinForImageClassification, SwinModel

    config = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=4,
        num_labels=max(num_classes, 1),
    )
    return SwinForImageClassification(config) if num_classes else SwinModel(config)


def _timm_cnn(num_classes: int) -> nn.Module:
    import timm

    return timm.create_model("resnet10t", pretrained=False, num_classes=num_classes)


TinyBuilder = Callable[[int], nn.Module]

TINY_MODELS: dict[str, TinyBuilder] = {
    "timm-vit": _timm_vit,
    "timm-vit-reg": _timm_vit_registers,
    "timm-deit-distilled": _timm_deit_distilled,
    "timm-swin": _timm_swin,
    "hf-vit": _hf_vit,
    "hf-dinov2": _hf_dinov2,
    "hf-swin": _hf_swin,
    "timm-cnn": _timm_cnn,
}


def register_tiny(name: str) -> Callable[[TinyBuilder], TinyBuilder]:
    """Decorator a family file uses to add its tiny model(s) as ``tiny:NAME``: the builder
    takes ``num_classes`` (0: no head) and returns the model; :func:`build_tiny` seeds it and
    puts it in eval mode. The conformance tests run over every registered tiny model."""

    def add(builder: TinyBuilder) -> TinyBuilder:
        if name in TINY_MODELS:
            raise ConfigError(f"tiny model {name!r} is registered already")
        TINY_MODELS[name] = builder
        return builder

    return add


def build_tiny(name: str, num_classes: int = 5, seed: int = 0) -> nn.Module:
    """Build the tiny model ``name`` (one of :data:`TINY_MODELS`) with a fixed seed, eval mode."""
    if name not in TINY_MODELS:
        raise ConfigError(f"unknown tiny model {name!r}; available: {', '.join(TINY_MODELS)}")
    torch.manual_seed(seed)
    return TINY_MODELS[name](num_classes).eval()
