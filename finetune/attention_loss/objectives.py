"""The attention-enhancement loss per backbone family: one :class:`Objective` each, in a
registry (:data:`OBJECTIVES`).

An objective says, for its family, which blocks the loss reads, how their attention logits
are captured, how the position prompts (the targets) are made, how the loss is computed from
both, and which settings it refuses. Columnar ViTs (Wang, Jie, Deng, NeurIPS 2023, sec. 3.2:
an explainer's patch scores -> top-P targets over the patch keys) and Swin (per-window top-P
of each stage's last block) are registered; ``docs/concepts/loss.md`` describes both.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

from focusvit.backbones import BackboneAdapter

from .config import FortConfig
from .functions import Targets, swin_attention_loss, unit_targets, vit_attention_loss
from .ground_truth import check_masks, ground_truth_targets, swin_ground_truth_targets


class Objective:
    """How the attention-enhancement loss acts on one backbone family (subclass it and
    :func:`register_objective` it for a new family).

    Attributes:
        family: the :attr:`~focusvit.backbones.BackboneAdapter.family` it serves.
        prompt_unit: what ``top_k`` counts, for messages (``"patches"``, ``"tokens per
            window"``).
    """

    family: str = ""
    prompt_unit: str = "patches"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(family={self.family!r})"

    def layers(self, backbone: BackboneAdapter, fort: FortConfig) -> list[int]:
        """Block indices whose attention logits the loss reads."""
        raise NotImplementedError

    def capture(
        self, backbone: BackboneAdapter, fort: FortConfig, layers: list[int]
    ) -> AbstractContextManager[Any]:
        """Capture of the pre-softmax attention logits of ``layers`` (in the autograd graph)."""
        return backbone.capture_attention(layers=layers, kind="logits")

    def targets(
        self,
        backbone: BackboneAdapter,
        images: Tensor,
        labels: Tensor,
        fort: FortConfig,
        masks: Tensor | None = None,
    ) -> Targets:
        """The position prompts of support images ``(M, 3, H, W)`` with labels ``(M,)`` (the
        task head in place), made once before fine-tuning; ``masks`` ``(M, H, W)`` for
        ``fort.prompts == "ground_truth"``."""
        raise NotImplementedError

    def loss(
        self, backbone: BackboneAdapter, fort: FortConfig, logits: Sequence[Tensor], targets
    ) -> Tensor:
        """The scalar loss from the captured ``logits`` and the (scaled) ``targets``."""
        raise NotImplementedError

    def check(
        self,
        backbone: BackboneAdapter,
        fort: FortConfig,
        image_size: tuple[int, int] | None = None,
        option: str = "",
        where: str | None = None,
    ) -> None:
        """Refuse settings this family cannot honour (before training): explicit ``layers``
        the model does not have and, with ``image_size``, a ``top_k`` larger than what there is
        to choose from (:meth:`prompt_capacity`). ``option`` prefixes option names in
        messages (``"fort."``); ``where`` names the model in them."""
        if image_size is None or fort.top_k is None:
            return
        from focusvit.prompting.prompts import check_prompt_size

        capacity, fix = self.prompt_capacity(backbone, image_size, option)
        size = f"{image_size[0]}x{image_size[1]}"
        check_prompt_size(
            fort.top_k, None, option=option, capacity=capacity, fix=fix,
            where=f"the {capacity} {self.prompt_unit} of {where or backbone.name} at {size}",
        )  # fmt: skip

    def prompt_capacity(
        self, backbone: BackboneAdapter, image_size: tuple[int, int], option: str = ""
    ) -> tuple[int, str | None]:
        """``(most tokens a prompt can hold at image_size, the fix named when top_k exceeds
        it, or None for the default)``."""
        h, w = backbone.grid_size(image_size)
        return h * w, None


class ColumnarObjective(Objective):
    """Columnar ViTs (ViT, DeiT, DINOv2, CLIP, SigLIP, BEiT, ...): the loss reads
    ``fort.layers`` and scores the CLS and patch query rows against targets over the patch keys
    (:func:`~focusvit.finetune.attention_loss.vit_attention_loss`)."""

    family = "vit"

    def layers(self, backbone: BackboneAdapter, fort: FortConfig) -> list[int]:
        return fort.layer_indices(backbone.num_layers)

    def targets(
        self,
        backbone: BackboneAdapter,
        images: Tensor,
        labels: Tensor,
        fort: FortConfig,
        masks: Tensor | None = None,
    ) -> Tensor:
        """``(M, N)`` targets over the N patch tokens."""
        if fort.prompts == "ground_truth":
            grid = backbone.grid_size(tuple(images.shape[-2:]))
            flat = ground_truth_targets(
                check_masks(masks, images), grid, fort.top_k, fort.top_fraction, fort.weighting
            )
            return flat.to(images.device)
        from focusvit.explainers import explain
        from focusvit.prompting import make_prompts

        explanation = explain(backbone, images, method=fort.explainer, target=labels)
        return make_prompts(
            explanation, top_k=fort.top_k, top_fraction=fort.top_fraction, weighting=fort.weighting
        ).target

    def loss(
        self, backbone: BackboneAdapter, fort: FortConfig, logits: Sequence[Tensor], targets
    ) -> Tensor:
        return vit_attention_loss(
            list(logits),
            targets,
            backbone.num_prefix_tokens,
            fort.tau,  # type: ignore[arg-type]
            fort.query_rows,  # type: ignore[arg-type]
            backbone.inserted_tokens,
            has_cls=backbone.has_cls_token,
        )

    def check(
        self,
        backbone: BackboneAdapter,
        fort: FortConfig,
        image_size: tuple[int, int] | None = None,
        option: str = "",
        where: str | None = None,
    ) -> None:
        if not isinstance(fort.layers, str):
            fort.layer_indices(backbone.num_layers)  # refuses blocks the model does not have
        super().check(backbone, fort, image_size, option, where)


class SwinObjective(Objective):
    """Swin (V1 / V2): the loss reads the last block of every stage, with the model's own
    shifted-window mask unless ``fort.shift_mask`` is False, and sums the per-window losses
    of the stages (:func:`~focusvit.finetune.attention_loss.swin_attention_loss`)."""

    family = "swin"
    prompt_unit = "tokens of a window"

    def layers(self, backbone: BackboneAdapter, fort: FortConfig) -> list[int]:
        from focusvit.prompting.swin import last_block_of_each_stage

        return last_block_of_each_stage(backbone)

    def capture(
        self, backbone: BackboneAdapter, fort: FortConfig, layers: list[int]
    ) -> AbstractContextManager[Any]:
        masked = {"shift_mask": True} if fort.shift_mask else {}
        return backbone.capture_attention(layers=layers, kind="logits", **masked)

    def targets(
        self,
        backbone: BackboneAdapter,
        images: Tensor,
        labels: Tensor,
        fort: FortConfig,
        masks: Tensor | None = None,
    ) -> list[Tensor]:
        """Per stage ``(M, windows, n)`` binary top-P per window."""
        from focusvit.prompting import swin_window_prompts

        if fort.prompts != "ground_truth":
            return swin_window_prompts(backbone, images, fort.top_k, fort.top_fraction).targets
        from focusvit.prompting.swin import partition_order

        masks = check_masks(masks, images)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        with torch.no_grad(), backbone.evaluating():
            backbone.logits(images[:1])  # Hugging Face models fix their window sizes in a forward
        geometries = backbone.window_geometry(size)
        stages = [geometries[block] for block in self.layers(backbone, fort)]
        targets = swin_ground_truth_targets(
            masks, stages, partition_order(backbone), fort.top_k, fort.top_fraction
        )
        return [t.to(images.device) for t in targets]

    def loss(
        self, backbone: BackboneAdapter, fort: FortConfig, logits: Sequence[Tensor], targets
    ) -> Tensor:
        return swin_attention_loss(list(logits), targets, tau=fort.tau)  # type: ignore[arg-type]

    def prompt_capacity(
        self, backbone: BackboneAdapter, image_size: tuple[int, int], option: str = ""
    ) -> tuple[int, str | None]:
        """The tokens of the smallest attention window at ``image_size`` (one forward of a
        blank image first: Hugging Face models clamp windows to small stage grids)."""
        with torch.no_grad(), backbone.evaluating():
            device = next(backbone.parameters()).device
            backbone.logits(torch.zeros(1, 3, *image_size, device=device))
        tokens = min(g.window[0] * g.window[1] for g in backbone.window_geometry(image_size))
        return tokens, "(Swin prompts are chosen per window; official FORT: 7 of 49)"


#: family -> its objective; :func:`register_objective` adds one
OBJECTIVES: dict[str, Objective] = {"vit": ColumnarObjective(), "swin": SwinObjective()}


def register_objective(objective: Objective) -> Objective:
    """Register ``objective`` for ``objective.family`` (replacing an earlier one); returns it."""
    OBJECTIVES[objective.family] = objective
    return objective


def normalised_targets(fort: FortConfig, targets: Targets) -> Targets:
    """``targets`` as the loss reads them: scaled to sum to 1 per image / window for
    ``fort.target_sum == "one"``, as they are otherwise."""
    return unit_targets(targets) if fort.target_sum == "one" else targets
