"""The attention-enhancement loss inside a training step, dispatched to the backbone family's
:class:`~focusvit.finetune.attention_loss.objectives.Objective` (Wang, Jie, Deng, NeurIPS 2023;
``docs/concepts/loss.md``). The sequential trainer (:func:`~focusvit.finetune.fit_task`) and
the batched one (:func:`~focusvit.finetune.fit_predict_batched`) both use these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from torch import Tensor

from focusvit.backbones import BackboneAdapter

from .checks import objective_for
from .config import FortConfig
from .functions import Targets
from .objectives import normalised_targets


def prompt_targets(
    backbone: BackboneAdapter,
    images: Tensor,
    labels: Tensor,
    fort: FortConfig,
    support_masks: Tensor | None = None,
) -> Targets:
    """Position prompts of the support set, computed once before fine-tuning (fixed afterwards).

    Args:
        images: ``(M, 3, H, W)`` preprocessed support images; labels ``(M,)``.
        fort: the resolved settings; ``fort.prompts`` picks the explainer or the object masks.
        support_masks: ``(M, H, W)`` object masks aligned with ``images``; needed by
            ``fort.prompts == "ground_truth"``, unused otherwise.

    Returns:
        columnar ViT: ``(M, N)`` targets over patch tokens; Swin: per stage ``(M, windows, n)``.

    Raises:
        AttentionLossUnsupportedError: a family without an objective.
        ConfigError: ``prompts="ground_truth"`` without (matching) masks.
    """
    return objective_for(backbone).targets(backbone, images, labels, fort, support_masks)


def loss_layers(backbone: BackboneAdapter, fort: FortConfig) -> list[int]:
    """Block indices whose attention logits the loss reads (columnar ViT: ``fort.layers``;
    Swin: the last block of every stage)."""
    return objective_for(backbone).layers(backbone, fort)


def loss_capture(
    backbone: BackboneAdapter, fort: FortConfig | None, layers: list[int] | None
) -> AbstractContextManager[Any]:
    """The capture the attention loss reads: pre-softmax logits of ``layers`` (per layer
    ``(B, heads, T, T)``, Swin ``(B, windows, heads, n, n)``; on Swin with the model's
    shifted-window mask unless ``fort.shift_mask`` is False). ``fort`` None: no capture
    (a null context)."""
    if fort is None:
        return nullcontext()
    return objective_for(backbone).capture(backbone, fort, layers)  # type: ignore[arg-type]


def compute_loss(
    backbone: BackboneAdapter, fort: FortConfig, logits: Sequence[Tensor], targets: Targets
) -> Tensor:
    """The scalar attention-enhancement loss of the captured ``logits`` (a record of
    :func:`loss_capture`, or its per-image slices) against the prompt ``targets`` of the same
    images, scaled as ``fort.target_sum`` says."""
    objective = objective_for(backbone)
    return objective.loss(backbone, fort, logits, normalised_targets(fort, targets))
