"""Spatial CNN encoders of the cross-attention baselines (docs/baselines.md).

Both baselines compare *feature maps*, so every encoder returns ``(B, C, H, W)`` with no final
pooling:

- ``conv4``: four blocks of 3×3 conv (64) + BN + ReLU + 2×2 max-pool (Vinyals et al., 2016);
  84×84 -> ``(B, 64, 5, 5)``.
- ``resnet12``: four residual blocks of three 3×3 conv + BN + LeakyReLU(0.1) with a 1×1 conv
  shortcut, each followed by 2×2 max-pool (the backbone of Hou et al., NeurIPS 2019); widths
  64-160-320-640 (``resnet12``) or 64-128-256-512 (``resnet12-narrow``), any widths through
  :class:`ResNet12Config`; 84×84 -> ``(B, C, 5, 5)``.
- any timm CNN through :class:`~focusvit.backbones.TimmCNNAdapter` (e.g.
  ``offline:efficientnet-lite0``): its last feature map before global pooling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from focusvit.backbones import BackboneAdapter, FocusVitError, default_data_config
from focusvit.errors import ConfigError

__all__ = [
    "AdapterEncoder",
    "Conv4",
    "NonSpatialBackboneError",
    "ResNet12",
    "SpatialEncoder",
    "build_encoder",
    "check_feature_map",
]


class NonSpatialBackboneError(FocusVitError, ValueError):
    """A backbone whose output is not a ``(B, C, H, W)`` feature map with more than one position."""


def check_feature_map(features: Tensor, name: str) -> None:
    """Raise :class:`NonSpatialBackboneError` unless ``features`` is ``(B, C, H, W)`` with H·W > 1."""
    if features.ndim != 4:
        raise NonSpatialBackboneError(
            f"backbone {name} returns features of shape {tuple(features.shape)}, not a (B, C, H, W) "
            "feature map; the cross-attention baselines need spatial maps: use 'conv4', "
            "'resnet12' or a timm CNN (e.g. 'offline:efficientnet-lite0', 'timm:resnet18')"
        )
    if features.shape[-2] * features.shape[-1] < 2:
        raise NonSpatialBackboneError(
            f"backbone {name} returns a {features.shape[-2]}x{features.shape[-1]} feature map: "
            "cross-attention needs several positions; feed larger images or use a backbone with "
            "less downsampling"
        )


class SpatialEncoder(nn.Module):
    """Base of the encoders: ``forward(x (B, 3, H, W)) -> (B, C, h, w)``.

    Attributes:
        out_channels: C.
        data_config: preprocessing (``input_size``, ``mean``, ``std``, ``crop_pct``, ...).
        name: a short description used in messages and checkpoints.
    """

    out_channels: int
    data_config: dict
    name: str

    def feature_size(self, image_size: int | None = None) -> tuple[int, int]:
        """``(h, w)`` of the feature map for square inputs of ``image_size`` (default: the config's)."""
        size = image_size or int(self.data_config["input_size"][-1])
        param = next(self.parameters())
        training = self.training
        self.eval()
        try:
            with torch.no_grad():
                out = self(torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype))
        finally:
            self.train(training)
        check_feature_map(out, self.name)
        return int(out.shape[-2]), int(out.shape[-1])


def _baseline_data_config(image_size: int) -> dict:
    """ImageNet normalisation at ``image_size`` with no extra crop (the synthetic scenes are
    rendered at that size)."""
    config = default_data_config(image_size)
    config["crop_pct"] = 1.0
    return config


class Conv4(SpatialEncoder):
    """Conv-4: ``(B, 3, 84, 84) -> (B, width, 5, 5)``."""

    def __init__(self, width: int = 64, image_size: int = 84):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for _ in range(4):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.layers = nn.Sequential(*layers)
        self.out_channels = width
        self.data_config = _baseline_data_config(image_size)
        self.name = f"conv4-{width}"

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class _ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        convs: list[nn.Module] = []
        channels = in_channels
        for i in range(3):
            convs += [nn.Conv2d(channels, out_channels, 3, padding=1, bias=False)]
            convs += [nn.BatchNorm2d(out_channels)]
            if i < 2:
                convs += [nn.LeakyReLU(0.1, inplace=True)]
            channels = out_channels
        self.body = nn.Sequential(*convs)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.out = nn.Sequential(nn.LeakyReLU(0.1, inplace=True), nn.MaxPool2d(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(SpatialEncoder):
    """ResNet-12: ``(B, 3, 84, 84) -> (B, widths[-1], 5, 5)``."""

    def __init__(self, widths: Sequence[int] = (64, 160, 320, 640), image_size: int = 84):
        super().__init__()
        if len(widths) != 4 or any(int(w) < 1 for w in widths):
            raise ConfigError(f"ResNet-12 needs four positive widths, got {list(widths)}")
        blocks, channels = [], 3
        for width in widths:
            blocks.append(_ResBlock(channels, int(width)))
            channels = int(width)
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = channels
        self.data_config = _baseline_data_config(image_size)
        self.name = "resnet12-" + "-".join(str(int(w)) for w in widths)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class AdapterEncoder(SpatialEncoder):
    """A focusvit CNN adapter as an encoder: ``adapter.tokens(x)`` is its last feature map."""

    def __init__(self, adapter: BackboneAdapter, image_size: int | None = None):
        super().__init__()
        if adapter.family != "cnn":
            raise NonSpatialBackboneError(
                f"backbone {adapter.name} is a {adapter.family} model whose tokens are not a "
                "(B, C, H, W) feature map; the cross-attention baselines need a CNN: use 'conv4', "
                "'resnet12' or a timm CNN (e.g. 'offline:efficientnet-lite0', 'timm:resnet18')"
            )
        self.adapter = adapter
        self.data_config = dict(adapter.data_config)
        if image_size:
            self.data_config["input_size"] = (3, image_size, image_size)
        self.name = adapter.name
        self.out_channels = int(adapter.num_features)
        size = int(self.data_config["input_size"][-1])
        param = next(adapter.parameters())
        with torch.no_grad(), adapter.evaluating():
            probe = adapter.tokens(torch.zeros(1, 3, size, size, device=param.device))
        check_feature_map(probe, self.name)
        self.out_channels = int(probe.shape[1])

    def forward(self, x: Tensor) -> Tensor:
        return self.adapter.tokens(x)


@dataclass(frozen=True)
class _Named:
    kind: str
    widths: tuple[int, ...]


_NAMED = {
    "conv4": _Named("conv4", (64,)),
    "resnet12": _Named("resnet12", (64, 160, 320, 640)),
    "resnet12-narrow": _Named("resnet12", (64, 128, 256, 512)),
}


def build_encoder(
    spec: str | BackboneAdapter | nn.Module,
    image_size: int = 84,
    widths: Sequence[int] | None = None,
) -> SpatialEncoder:
    """An encoder from a name (``conv4``, ``resnet12``, ``resnet12-narrow``), a focusvit CNN
    adapter, a ``load_backbone`` spec of a CNN (``offline:efficientnet-lite0``, ``timm:...``,
    ``tiny:timm-cnn``) or an existing :class:`SpatialEncoder`.

    Args:
        widths: channel widths (one for ``conv4``, four for ``resnet12``), overriding the name's.
        image_size: square input side; 84 for the named encoders by default.
    """
    if isinstance(spec, SpatialEncoder):
        return spec
    if isinstance(spec, BackboneAdapter):
        return AdapterEncoder(spec, image_size)
    if isinstance(spec, nn.Module):
        raise NonSpatialBackboneError(
            f"{type(spec).__name__} is neither a SpatialEncoder nor a focusvit backbone adapter; "
            "wrap it with focusvit.backbones.adapt(model) or subclass SpatialEncoder"
        )
    if spec in _NAMED:
        named = _NAMED[spec]
        chosen = tuple(widths) if widths else named.widths
        if named.kind == "conv4":
            return Conv4(chosen[0], image_size)
        return ResNet12(chosen, image_size)
    if ":" not in spec:
        raise ConfigError(
            f"unknown encoder {spec!r}; use one of {', '.join(_NAMED)} or a load_backbone spec of "
            "a CNN such as 'offline:efficientnet-lite0'"
        )
    from focusvit.backbones import load_backbone

    return AdapterEncoder(load_backbone(spec), image_size)
