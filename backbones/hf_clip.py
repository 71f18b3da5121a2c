"""Hugging Face CLIP vision towers (CLIPVisionModel, CLIPVisionModelWithProjection, the vision part of CLIPModel).

CLIP's vision tower (Radford et al., ICML 2021) is a columnar ViT with a CLS token, a LayerNorm
before the encoder (``pre_layrnorm``) and one after it (``post_layernorm``, which the model applies
to the CLS token only). What :meth:`HFCLIPAdapter.tokens` returns and :meth:`~HFCLIPAdapter.pool`
reads follows the model class, so that the pooled feature is the model's own image embedding:

============================== ============================================ ==================
model                          pooled feature ``(B, num_features)``         num_features
============================== ============================================ ==================
CLIPVisionModel                ``pooler_output``: post_layernorm(CLS)       hidden_size
CLIPVisionModelWithProjection  ``image_embeds``: visual_projection of that  projection_dim
CLIPModel                      ``image_embeds`` of its forward: the         projection_dim
                               projected CLS, L2-normalised
CLIPForImageClassification     mean of the patch tokens of                  hidden_size
                               ``last_hidden_state`` (no post_layernorm)
============================== ============================================ ==================

A CLIPModel keeps its text tower: :meth:`~HFCLIPAdapter.encode_text` embeds class prompts into
the same (normalised, projected) space, so a head whose rows are ``logit_scale.exp()`` times the
text embeddings gives the model's own zero-shot logits ``logit_scale.exp() · cos(image, text)``
(``focusvit.finetune.heads.text_head``, ``head_init="text"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusvit.errors import ConfigError, UnsupportedFamilyError, UnsupportedMethodError

from .base import (
    AttentionSite,
    BackboneAdapter,
    TokenLayout,
    parameter_device,
    submodule_names,
    to_tuple2,
)
from .hf_vit import HFHeadMixin, qk_site
from .registry import FamilyEntry, register_family
from .tiny import register_tiny

#: OpenAI CLIP's image normalisation (mean, std)
OPENAI_CLIP_MEAN_STD = (
    (0.48145466, 0.4578275, 0.40821073),
    (0.26862954, 0.26130258, 0.27577711),
)
CLIP_MODEL_TYPES = ("clip", "clip_vision_model")
# SSF sites inside one CLIPEncoderLayer, in execution order
CLIP_SSF_BLOCK_PARTS = ("layer_norm1", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
CLIP_SSF_BLOCK_PARTS += ("self_attn.out_proj", "layer_norm2", "mlp.fc1", "mlp.fc2")


def vision_tower(model: nn.Module) -> nn.Module | None:
    """The module holding ``embeddings``, ``pre_layrnorm``, ``encoder`` and ``post_layernorm``
    (``model.vision_model``, or the model itself for a transformers 5 ``CLIPVisionModel``), or
    ``None`` (text-only CLIP models)."""
    tower = getattr(model, "vision_model", model)
    return tower if hasattr(tower, "pre_layrnorm") and hasattr(tower, "encoder") else None


def is_hf_clip(model: nn.Module) -> bool:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return model_type in CLIP_MODEL_TYPES and vision_tower(model) is not None


def pool_mode(model: nn.Module) -> str:
    """How the model pools its image feature: ``"cls"`` (CLIPVisionModel), ``"projected"``
    (CLIPVisionModelWithProjection), ``"normalised"`` (CLIPModel, with its text tower) or
    ``"mean"`` (CLIPForImageClassification: mean of the patch tokens)."""
    from transformers import CLIPForImageClassification

    if isinstance(model, CLIPForImageClassification):
        return "mean"
    if hasattr(model, "visual_projection"):
        return "normalised" if hasattr(model, "text_model") else "projected"
    return "cls"


class HFCLIPAdapter(HFHeadMixin, BackboneAdapter):
    """HF CLIP vision towers. The pooled feature is the model's own image embedding (module
    docstring): ``pooler_output`` for CLIPVisionModel, the ``visual_projection`` of it for
    CLIPVisionModelWithProjection and CLIPModel (L2-normalised for CLIPModel, as its forward
    returns ``image_embeds``), the mean of the patch tokens for CLIPForImageClassification.

    :meth:`tokens` returns the tokens that feature is read from, all ``P + N`` of them:
    ``post_layernorm`` applied to every token, then ``visual_projection`` and the L2
    normalisation where the model has them (CLIPForImageClassification: ``last_hidden_state``
    as it is). So ``pool`` is the CLS token (the patch mean), and CAM applies the head to
    every patch token in the same space. Any input size that is a multiple of the patch size
    is accepted (``interpolate_pos_encoding=True``).

    Attributes:
        tokenizer: the text tokenizer :meth:`encode_text` uses (CLIPModel only); ``None``
            until set or loaded from the model's folder (``AutoTokenizer``).
    """

    family = "vit"
    default_mean_std = OPENAI_CLIP_MEAN_STD

    def __init__(self, model: nn.Module, name: str = "", data_config: dict | None = None):
        if not is_hf_clip(model):
            raise UnsupportedFamilyError(
                f"{type(model).__name__} is not an HF CLIP model with a vision tower"
            )
        super().__init__(model, name, data_config)
        self.tokenizer: Any = None

    @property
    def vision(self) -> nn.Module:
        """The vision transformer: embeddings, pre_layrnorm, encoder, post_layernorm."""
        return vision_tower(self.model)  # type: ignore[return-value]

    @property
    def vision_config(self):
        return self.vision.config

    @property
    def _mode(self) -> str:
        return pool_mode(self.model)

    # forward
    def tokens(self, x: Tensor) -> Tensor:
        """``(B, 1 + N, D)`` tokens in the space of the pooled feature (class docstring)."""
        self.check_input(x)
        hidden = self.vision(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
        mode = self._mode
        if mode == "mean":
            return hidden
        hidden = self.vision.post_layernorm(hidden)
        if mode in ("projected", "normalised"):
            hidden = self.model.visual_projection(hidden)
        return F.normalize(hidden, dim=-1) if mode == "normalised" else hidden

    def pool(self, tokens: Tensor) -> Tensor:
        """``(B, num_features)``: the CLS token, or the patch mean for CLIPForImageClassification."""
        return tokens[:, 1:].mean(dim=1) if self._mode == "mean" else tokens[:, 0]

    # structure
    @property
    def num_features(self) -> int:
        if self._mode in ("projected", "normalised"):
            return int(self.model.visual_projection.out_features)
        return self.embed_dim

    @property
    def embed_dim(self) -> int:
        return int(self.vision_config.hidden_size)

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.vision.encoder.layers)

    @property
    def input_module(self) -> nn.Module:
        return self.vision.embeddings

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.blocks[-1].layer_norm1

    @property
    def lora_targets(self) -> list[str]:
        return ["q_proj", "k_proj", "v_proj", "out_proj"]

    @property
    def ssf_targets(self) -> list[str]:
        # the patch embedding is a Conv2d ((B, D, h, w): SSF scales dim 1); post_layernorm only
        # where the pooled feature passes through it
        m, vision = self.model, self.vision
        final = [] if self._mode == "mean" else ["post_layernorm"]
        return (
            submodule_names(m, [vision], ["embeddings.patch_embedding", "pre_layrnorm"])
            + submodule_names(m, self.blocks, CLIP_SSF_BLOCK_PARTS)
            + submodule_names(m, [vision], final)
        )

    # geometry
    @property
    def patch_size(self) -> tuple[int, int]:
        return to_tuple2(self.vision_config.patch_size)

    def prefix_layout(self) -> TokenLayout:
        return TokenLayout(cls=1)

    @property
    def heads_per_block(self) -> list[int]:
        return [int(block.self_attn.num_heads) for block in self.blocks]

    # attention
    def attention_sites(self) -> list[AttentionSite]:
        # q kᵀ · scale from the q/k projections; the "sdpa" implementation makes one
        # F.scaled_dot_product_attention call inside ``self_attn``
        return [
            dataclasses.replace(
                qk_site(block.self_attn),
                scale=float(block.self_attn.scale),
                sdpa_owner=block.self_attn,
            )
            for block in self.blocks
        ]

    # text tower
    @property
    def has_text_tower(self) -> bool:
        return self._mode == "normalised"

    def encode_text(self, texts: Sequence[str], tokenizer: Any = None) -> Tensor:
        """L2-normalised text embeddings ``(K, num_features)``, detached: ``text_projection`` of
        the text tower's pooled (EOS) token, the space of :meth:`features` of a CLIPModel. A
        head ``weight = text_logit_scale · encode_text(prompts)`` over those features gives the
        model's own ``logits_per_image``.

        Args:
            texts: K strings (e.g. ``"a photo of a cat."``).
            tokenizer: a Hugging Face tokenizer; default :attr:`tokenizer`, else the one saved
                with the model (``AutoTokenizer.from_pretrained(model.name_or_path)``).

        Raises:
            UnsupportedMethodError: no text tower, or no tokenizer can be found.
            ConfigError: no texts.
        """
        if not self.has_text_tower:
            return super().encode_text(texts)
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ConfigError("encode_text got no texts; pass one prompt per class")
        tokenizer = tokenizer if tokenizer is not None else self._text_tokenizer()
        max_length = int(self.model.config.text_config.max_position_embeddings)
        batch = tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        device = parameter_device(self.model)
        mask = batch.get("attention_mask")
        with torch.no_grad(), self.evaluating():
            out = self.model.get_text_features(
                input_ids=batch["input_ids"].to(device),
                attention_mask=None if mask is None else mask.to(device),
            )
        embeddings = out if isinstance(out, Tensor) else out.pooler_output
        return F.normalize(embeddings, dim=-1)

    @property
    def text_logit_scale(self) -> float | None:
        """``logit_scale.exp()`` of a CLIPModel (``None`` without a text tower): its zero-shot
        logits are ``text_logit_scale · cos(features, encode_text) + text_logit_bias``."""
        return float(self.model.logit_scale.detach().exp()) if self.has_text_tower else None

    @property
    def text_logit_bias(self) -> float | None:
        """CLIP's image-text logits have no bias: ``0.0`` (``None`` without a text tower)."""
        return 0.0 if self.has_text_tower else None

    def _text_tokenizer(self) -> Any:
        if self.tokenizer is not None:
            return self.tokenizer
        source = getattr(self.model, "name_or_path", "") or ""
        fix = (
            "set adapter.tokenizer = transformers.AutoTokenizer.from_pretrained(<model folder or "
            "hub id>) or pass encode_text(texts, tokenizer=...)"
        )
        if not source:
            raise UnsupportedMethodError(
                f"{self.name} was not loaded from a model folder, so it has no tokenizer: {fix}"
            )
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        except (OSError, ValueError, TypeError) as error:
            raise UnsupportedMethodError(
                f"no tokenizer could be loaded from {source} ({type(error).__name__}): {fix}"
            ) from error
        return self.tokenizer


# ----------------------------------------------------------------------------- tiny models
_TINY_LAYERS = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)
_TINY_VISION = dict(image_size=32, patch_size=8, **_TINY_LAYERS)
_TINY_TEXT = dict(vocab_size=100, max_position_embeddings=16, **_TINY_LAYERS)
_TINY_TEXT |= dict(pad_token_id=0, bos_token_id=1, eos_token_id=3)  # the EOS token pools
#: projection width of the tiny CLIPModel (differs from the token width on purpose)
TINY_PROJECTION_DIM = 24


@register_tiny("hf-clip-vision")
def _tiny_clip_vision(num_classes: int) -> nn.Module:
    """CLIPVisionModel; with classes, CLIPForImageClassification (what
    ``load_backbone(hf:..., num_classes=K)`` builds for a CLIP checkpoint)."""
    from transformers import (
        CLIPConfig,
        CLIPForImageClassification,
        CLIPVisionConfig,
        CLIPVisionModel,
    )

    if not num_classes:
        return CLIPVisionModel(CLIPVisionConfig(**_TINY_VISION))
    config = CLIPConfig(vision_config=_TINY_VISION, text_config=_TINY_TEXT, num_labels=num_classes)
    return CLIPForImageClassification(config)


@register_tiny("hf-clip")
def _tiny_clip(num_classes: int) -> nn.Module:
    """CLIPModel with a tiny text tower (vocabulary 100, EOS id 3); with classes, a linear
    ``classifier`` over the normalised image embeddings is added (the adapter's head slot)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        vision_config=_TINY_VISION, text_config=_TINY_TEXT, projection_dim=TINY_PROJECTION_DIM
    )
    model = CLIPModel(config)
    if num_classes:
        model.add_module("classifier", nn.Linear(TINY_PROJECTION_DIM, num_classes))
    return model


register_family(
    FamilyEntry(
        "HF CLIP vision",
        is_hf_clip,
        HFCLIPAdapter,
        examples=("hf:openai/clip-vit-base-patch16", "hf:openai/clip-vit-large-patch14"),
        tiny=("hf-clip-vision", "hf-clip"),
        cls_row="cls token",
        priority=30,
    )
)
