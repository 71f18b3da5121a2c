"""Adapter for timm convolutional networks (ResNet, EfficientNet, ConvNeXt, ...): used by CAM,
Grad-CAM and the CNN baselines. CNNs have no attention: ``capture_attention`` raises."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from focusvit.errors import UnsupportedFamilyError

from .base import BackboneAdapter
from .registry import FamilyEntry, register_family
from .timm_vit import TimmHeadMixin


def has_attention_layers(model: nn.Module) -> bool:
    """True when the model holds self-attention modules (a transformer whose family is not
    registered must be refused, not taken for a CNN with its attention ignored)."""
    return any(
        "attention" in type(m).__name__.lower() and not isinstance(m, nn.Conv2d)
        for m in model.modules()
    )


def is_timm_cnn(model: nn.Module) -> bool:
    """A timm model with ``forward_features``/``forward_head`` built from convolutions and
    without attention layers."""
    return (
        hasattr(model, "forward_features")
        and hasattr(model, "forward_head")
        and any(isinstance(m, nn.Conv2d) for m in model.modules())
        and not has_attention_layers(model)
    )


class TimmCNNAdapter(TimmHeadMixin, BackboneAdapter):
    """timm CNN. ``tokens`` is the last feature map ``(B, C, h, w)`` before global pooling."""

    family = "cnn"

    def __init__(self, model: nn.Module, name: str = "", data_config: dict | None = None):
        if not is_timm_cnn(model):
            raise UnsupportedFamilyError(f"{type(model).__name__} is not a timm CNN")
        super().__init__(model, name, data_config)
        self._gradcam_layer_name: str | None = None

    def tokens(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.model.forward_features(x)

    def pool(self, tokens: Tensor) -> Tensor:
        return self.model.forward_head(tokens, pre_logits=True)

    def head_from_tokens(self, tokens: Tensor) -> Tensor:
        return self.model.forward_head(tokens)

    @property
    def head_name(self) -> str:
        classifier = self.model.get_classifier()
        if not isinstance(classifier, nn.Linear):
            return ""
        for name, module in self.model.named_modules():
            if module is classifier:
                return name
        return ""

    @property
    def num_features(self) -> int:
        return int(self.model.num_features)

    @property
    def blocks(self) -> list[nn.Module]:
        stages = getattr(self.model, "blocks", None) or getattr(self.model, "stages", None)
        return list(stages) if stages is not None else []

    @property
    def gradcam_layer(self) -> nn.Module:
        """The module whose output is the final feature map (found once by tracing a forward)."""
        if self._gradcam_layer_name is None:
            self._gradcam_layer_name = self._trace_feature_layer()
        return self.model.get_submodule(self._gradcam_layer_name)

    def _trace_feature_layer(self) -> str:
        outputs: list[tuple[str, Tensor]] = []
        handles = [
            m.register_forward_hook(lambda _m, _i, o, n=name: outputs.append((n, o)))
            for name, m in self.model.named_modules()
            if name
        ]
        try:
            size = self.data_config["input_size"][-2:]
            with torch.no_grad(), self.evaluating():
                reference = self.model.forward_features(torch.zeros(1, 3, *size))
        finally:
            for h in handles:
                h.remove()
        for name, output in reversed(outputs):
            same_shape = isinstance(output, Tensor) and output.shape == reference.shape
            if same_shape and torch.equal(output, reference):
                return name
        raise UnsupportedFamilyError(f"could not locate the feature layer of {self.name}")

    @property
    def lora_targets(self) -> list[str]:
        return []

    @property
    def ssf_targets(self) -> list[str]:
        """SSF is defined for transformer blocks; CNNs have no SSF sites."""
        return []

    @property
    def patch_size(self) -> tuple[int, int]:
        info = getattr(self.model, "feature_info", None)
        reduction = info[-1]["reduction"] if info else 32
        return reduction, reduction

    @property
    def size_multiple(self) -> tuple[int, int]:
        return (1, 1)

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        ph, pw = self.patch_size
        return math.ceil(image_size[0] / ph), math.ceil(image_size[1] / pw)

    def tokens_to_grid(self, tokens: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Feature maps are already grids: ``(B, C, h, w)`` is returned as is."""
        return tokens


register_family(
    FamilyEntry(
        "timm CNN",
        is_timm_cnn,
        TimmCNNAdapter,
        examples=("timm:resnet50.a1_in1k", "offline:efficientnet-lite0"),
        tiny=("timm-cnn",),
        cls_row="-",
        priority=-100,
    )
)
