"""Full fine-tuning: every parameter of the model is trained (a copy of the pretrained
parameters is kept and written back on removal)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from .base import TunedModel, TunerConfig, TunerSpec, register

__all__ = ["FullConfig", "FullTuned"]


@dataclass
class FullConfig(TunerConfig):
    """Full fine-tuning: every parameter of the model is trained."""

    name: ClassVar[str] = "full"


class FullTuned(TunedModel):
    """Every parameter."""

    config_class = FullConfig

    def _backbone_trainables(self) -> list[nn.Parameter]:
        return list(self.backbone.model.parameters())


SPEC = register(TunerSpec(FullConfig, FullTuned, label="full fine-tuning", merge="noop"))
