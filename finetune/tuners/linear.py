"""Linear probe: only the classification head is trained, on the backbone's frozen features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from focusvit.backbones.base import BackboneAdapter

from .base import TunedModel, TunerConfig, TunerSpec, register

__all__ = ["LinearConfig", "LinearTuned"]


@dataclass
class LinearConfig(TunerConfig):
    """Linear probe: only the classification head is trained."""

    name: ClassVar[str] = "linear"


class LinearTuned(TunedModel):
    """Head only (needs a head: load with ``num_classes`` or ``replace_head`` first)."""

    config_class = LinearConfig

    @classmethod
    def not_applicable(cls, backbone: BackboneAdapter, config: TunerConfig) -> str:
        if not backbone.head_name:
            return (
                "the model has no classification head; load it with "
                "load_backbone(spec, num_classes=K) or call backbone.set_head(nn.Linear(...)) first"
            )
        return ""


SPEC = register(
    TunerSpec(
        LinearConfig,
        LinearTuned,
        label="linear probe",
        trains_backbone=False,
        supports_attention_loss=False,
        merge="noop",
    )
)
