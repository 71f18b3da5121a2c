"""Hugging Face SigLIP / SigLIP2 vision towers (no CLS token, attention-pool head).

Models: ``SiglipVisionModel``, ``SiglipModel`` (vision tower, text tower for ``encode_text``),
``SiglipForImageClassification`` and the SigLIP2 equivalents. Facts of the family:

- no CLS token (``TokenLayout(cls=0)``): the "CLS row" of rollout, raw attention and the
  attention loss is the mean of the patch query rows;
- pooling follows the model: the attention-pool ("MAP") head ``vision_model.head`` where the
  tower uses it (``vision_use_head``), the mean of the tokens for ``*ForImageClassification``
  and for towers without a head;
- SigLIP2 takes patchified inputs; :meth:`HFSiglipAdapter.tokens` takes images
  ``(B, 3, H, W)`` and patchifies them as ``Siglip2ImageProcessor`` does, so any H, W that are
  multiples of the patch size work (SigLIP v1 interpolates its position embeddings);
- zero-shot logits (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023):
  ``text_logit_scale · cos(image, text) + text_logit_bias``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusvit.errors import ConfigError, UnsupportedMethodError

from .base import (
    AttentionSite,
    BackboneAdapter,
    TokenLayout,
    split_heads,
    submodule_names,
    to_tuple2,
)
from .hf_vit import HFHeadMixin
from .registry import FamilyEntry, register_family
from .tiny import register_tiny

MODEL_TYPES = ("siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model")

# SSF sites inside one encoder layer, in execution order
SSF_BLOCK_PARTS = (
    "layer_norm1",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "layer_norm2",
    "mlp.fc1",
    "mlp.fc2",
)


def vision_tower(model: nn.Module) -> nn.Module | None:
    """The module holding ``embeddings``, ``encoder``, ``post_layernorm`` (and the MAP
    ``head``): ``model.vision_model`` of ``SiglipModel`` / ``*ForImageClassification`` (and of a
    transformers 4.x ``SiglipVisionModel``), the model itself for a 5.x ``SiglipVisionModel``."""
    tower = getattr(model, "vision_model", model)
    has_parts = hasattr(tower, "embeddings") and hasattr(tower, "encoder")
    return tower if has_parts and hasattr(tower, "post_layernorm") else None


def is_hf_siglip(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) in MODEL_TYPES and vision_tower(model) is not None


def patchify(images: Tensor, patch: int) -> Tensor:
    """Images ``(B, C, H, W)`` -> patches ``(B, (H/p)·(W/p), p·p·C)`` in
    ``Siglip2ImageProcessor``'s order: patches row-major, inside a patch ``(row, col, channel)``
    with the channel fastest."""
    b, c, h, w = images.shape
    grid = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return grid.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class HFSiglipAdapter(HFHeadMixin, BackboneAdapter):
    """HF SigLIP / SigLIP2 (vision tower, full model or ``*ForImageClassification``).

    Attributes:
        tokenizer: what :meth:`encode_text` tokenizes with; ``None`` until set, or loaded with
            ``AutoTokenizer`` from the model folder / hub id on first use.
    """

    family = "vit"
    default_mean_std = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def __init__(self, model: nn.Module, name: str = "", data_config: dict | None = None):
        super().__init__(model, name, data_config)
        self.tokenizer: Any = None

    @property
    def tower(self) -> nn.Module:
        return vision_tower(self.model)

    @property
    def _patchified(self) -> bool:
        """True for SigLIP2: a linear patch embedding over pre-cut patches."""
        return isinstance(self.tower.embeddings.patch_embedding, nn.Linear)

    # forward
    def tokens(self, x: Tensor) -> Tensor:
        """Final tokens ``(B, N, D)`` (N = patches, no prefix) after ``post_layernorm``."""
        self.check_input(x)
        if not self._patchified:
            return self.tower(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
        p = self.patch_size[0]
        b, _, h, w = x.shape
        shapes = torch.tensor([[h // p, w // p]], device=x.device).expand(b, 2)
        patches = patchify(x, p)
        mask = torch.ones(patches.shape[:2], dtype=torch.int32, device=x.device)
        # positional: the mask is ``pixel_attention_mask`` in transformers 5, ``attention_mask``
        # in the 4.x vision transformer
        return self.tower(patches, mask, shapes).last_hidden_state

    @property
    def _pool_mode(self) -> str:
        """``"mean"`` (``*ForImageClassification``, towers without a head) or ``"map"``."""
        if type(self.model).__name__.endswith("ForImageClassification"):
            return "mean"
        tower = self.tower
        return "map" if getattr(tower, "use_head", False) and hasattr(tower, "head") else "mean"

    def pool(self, tokens: Tensor) -> Tensor:
        """``(B, N, D)`` -> ``(B, D)``: the MAP head's output, or the mean of the tokens; for a
        full SiglipModel (with its text tower) L2-normalised, as the ``image_embeds`` its
        forward returns, so that a text head gives the model's own image-text logits."""
        if self._pool_mode == "mean":
            return tokens.mean(dim=1)
        if self._patchified:  # SigLIP2's head takes the (all-ones) patch mask
            pooled = self.tower.head(tokens, torch.ones(tokens.shape[:2], device=tokens.device))
        else:
            pooled = self.tower.head(tokens)
        return F.normalize(pooled, dim=-1) if self.has_text_tower else pooled

    # structure
    @property
    def num_features(self) -> int:
        return int(self.tower.config.hidden_size)

    @property
    def embed_dim(self) -> int:
        return int(self.tower.config.hidden_size)

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.tower.encoder.layers)

    @property
    def input_module(self) -> nn.Module:
        return self.tower.embeddings

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.blocks[-1].layer_norm1

    @property
    def lora_targets(self) -> list[str]:
        # matched inside the encoder layers only (finetune.tuners.lora): the MAP head's
        # nn.MultiheadAttention.out_proj and the text tower are outside them
        return ["q_proj", "k_proj", "v_proj", "out_proj"]

    @property
    def ssf_targets(self) -> list[str]:
        m, tower = self.model, self.tower
        return (
            submodule_names(m, [tower], ["embeddings.patch_embedding"])
            + submodule_names(m, self.blocks, SSF_BLOCK_PARTS)
            + submodule_names(m, [tower], ["post_layernorm"])
        )

    # geometry
    @property
    def patch_size(self) -> tuple[int, int]:
        return to_tuple2(self.tower.config.patch_size)

    def prefix_layout(self) -> TokenLayout:
        return TokenLayout(cls=0)

    @property
    def heads_per_block(self) -> list[int]:
        return [int(block.self_attn.num_heads) for block in self.blocks]

    # attention
    def attention_sites(self) -> list[AttentionSite]:
        return [_qk_site(block.self_attn) for block in self.blocks]

    # text tower
    @property
    def has_text_tower(self) -> bool:
        return hasattr(self.model, "text_model") and hasattr(self.model, "logit_bias")

    @property
    def text_logit_scale(self) -> float | None:
        """``exp(logit_scale)`` of the full model (``None`` without a text tower): zero-shot
        logits are ``text_logit_scale · cos(features, encode_text) + text_logit_bias``."""
        return float(self.model.logit_scale.detach().exp()) if self.has_text_tower else None

    @property
    def text_logit_bias(self) -> float | None:
        """The learned ``logit_bias`` of SigLIP's sigmoid loss (``None`` without a text tower)."""
        return float(self.model.logit_bias.detach()) if self.has_text_tower else None

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """L2-normalised text embeddings ``(K, num_features)``, detached, in the space of
        :meth:`features` (SigLIP projects only the text, with ``text_model.head``, into the
        pooled image space). Texts are padded to ``max_length`` as the models were trained. A head from
        them: ``weight = text_logit_scale · encode_text(names)``, ``bias = text_logit_bias``
        over L2-normalised features reproduces the model's ``logits_per_image``.

        Raises:
            UnsupportedMethodError: no text tower, or no tokenizer.
        """
        if not self.has_text_tower:
            return super().encode_text(texts)
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ConfigError("encode_text got no texts; pass one class name or prompt per class")
        text_model = self.model.text_model
        length = int(text_model.config.max_position_embeddings)
        encoded = self._text_tokenizer()(
            texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt"
        )
        device = self.model.logit_scale.device
        inputs = {k: encoded[k].to(device) for k in ("input_ids", "attention_mask") if k in encoded}
        with torch.no_grad(), self.evaluating():
            return F.normalize(text_model(**inputs).pooler_output.float(), dim=-1)

    def _text_tokenizer(self) -> Any:
        """``self.tokenizer``, loaded from the model folder / hub id of ``hf:`` specs on first
        use."""
        source = self.name[3:] if self.name.startswith("hf:") else ""
        if self.tokenizer is None and source:
            from transformers import AutoTokenizer

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
            except (OSError, ValueError, TypeError, KeyError, ImportError) as error:
                reason = (str(error).splitlines() or [""])[0][:160]
                raise UnsupportedMethodError(
                    f"could not load a tokenizer for {self.name} ({type(error).__name__}: "
                    f"{reason}); save one next to the model (tokenizer.save_pretrained(folder)) "
                    "or set adapter.tokenizer = AutoTokenizer.from_pretrained(...)"
                ) from error
        if self.tokenizer is None:
            raise UnsupportedMethodError(
                f"{self.name} has no tokenizer for its text tower; set adapter.tokenizer = "
                "AutoTokenizer.from_pretrained('google/siglip-base-patch16-224') (the model's own)"
            )
        return self.tokenizer


def _qk_site(attn: nn.Module) -> AttentionSite:
    """Logits ``q kᵀ · attn.scale`` from the q/k projections (no bias: SigLIP2's all-ones patch
    mask adds nothing); ``attn`` makes one SDPA call in the "sdpa" implementation."""
    heads = int(attn.num_heads)

    def split(outputs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return split_heads(outputs[0], heads), split_heads(outputs[1], heads)

    return AttentionSite(
        modules=[attn.q_proj, attn.k_proj], split=split, scale=float(attn.scale), sdpa_owner=attn
    )


# ----------------------------------------------------------------------------- tiny models
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 8,
    "image_size": 32,  # SigLIP2 has no image_size; the loader reads it for the input size
}


TINY_TEXT = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 8,
    "projection_size": 32,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def _with_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """A ``classifier`` over the MAP-pooled features, as ``replace_head`` adds on a bare model."""
    if num_classes:
        model.add_module("classifier", nn.Linear(TINY_VISION["hidden_size"], num_classes))
    return model


@register_tiny("hf-siglip-vision")
def _tiny_siglip_vision(num_classes: int) -> nn.Module:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(vision_use_head=True, **TINY_VISION)
    return _with_classifier(SiglipVisionModel(config), num_classes)


@register_tiny("hf-siglip2-vision")
def _tiny_siglip2_vision(num_classes: int) -> nn.Module:
    """``Siglip2ForImageClassification`` (mean pooling) with a head, else the MAP tower."""
    from transformers import (
        Siglip2Config,
        Siglip2ForImageClassification,
        Siglip2VisionConfig,
        Siglip2VisionModel,
    )

    vision = {**TINY_VISION, "num_patches": 16, "vision_use_head": True}
    if not num_classes:
        return Siglip2VisionModel(Siglip2VisionConfig(**vision))
    config = Siglip2Config(vision_config=vision, text_config=TINY_TEXT, num_labels=num_classes)
    return Siglip2ForImageClassification(config)


@register_tiny("hf-siglip")
def _tiny_siglip(num_classes: int) -> nn.Module:
    from transformers import SiglipConfig, SiglipModel

    config = SiglipConfig(vision_config=TINY_VISION, text_config=TINY_TEXT)
    return _with_classifier(SiglipModel(config), num_classes)


register_family(
    FamilyEntry(
        "HF SigLIP/SigLIP2",
        is_hf_siglip,
        HFSiglipAdapter,
        examples=("hf:google/siglip-base-patch16-224", "hf:google/siglip2-base-patch16-224"),
        tiny=("hf-siglip-vision", "hf-siglip2-vision", "hf-siglip"),
        cls_row="mean of patch query rows",
        priority=30,
    )
)
