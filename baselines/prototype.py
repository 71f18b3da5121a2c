"""Nearest prototype on globally pooled encoder features: the reference an episodically trained
baseline must beat (for an untrained encoder, the chance-plus-texture floor)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from focusvit.finetune.heads import solve

from .common import EncoderConfig, EpisodeBatch, EpisodicModel, check_labels
from .encoders import SpatialEncoder

__all__ = ["PrototypeConfig", "PrototypeNetwork"]


@dataclass
class PrototypeConfig(EncoderConfig):
    """Only the encoder: nearest prototype has no parameters of its own."""

    def __post_init__(self) -> None:
        self._check_encoder()


class PrototypeNetwork(EpisodicModel):
    """Nearest class mean (Euclidean) of pooled maps ``(B, C)``, via ``finetune.heads.solve``."""

    method: ClassVar[str] = "prototype"

    def __init__(
        self, config: PrototypeConfig | None = None, encoder: SpatialEncoder | None = None
    ):
        super().__init__(config or PrototypeConfig(), encoder)

    @classmethod
    def config_class(cls) -> type:
        return PrototypeConfig

    def loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError(
            "the prototype baseline is not trained; train 'can' or 'ctx' and evaluate those"
        )

    def predict_maps(
        self,
        support_maps: Tensor,
        support_labels: Tensor,
        query_maps: Tensor,
        transductive: bool = False,
    ) -> Tensor:
        """Episode labels ``(Q,)`` of the nearest support-class mean of pooled features."""
        self._no_transduction(transductive)
        check_labels(support_labels)
        pooled_s = support_maps.mean(dim=(-2, -1))
        pooled_q = query_maps.mean(dim=(-2, -1))
        return solve("prototype", pooled_s, support_labels, pooled_q)
