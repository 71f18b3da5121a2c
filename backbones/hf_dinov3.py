"""Hugging Face DINOv3 ViT (rotary position embeddings, register tokens).

``DINOv3ViTModel``: a CLS token and R register tokens before the
patches, separate ``q_proj``/``k_proj``/``v_proj``/``o_proj`` projections, layer scale and a plain
or gated (SwiGLU) MLP. Its position information is a 2-D rotary embedding (RoPE) that
``DINOv3ViTAttention.forward`` applies to the patch queries and keys only, from the
``position_embeddings=(cos, sin)`` argument the model computes for the actual patch grid (any
size and aspect ratio; randomly jittered in training mode). The projection outputs therefore do
not show the logits: each layer is a :class:`RecomputedSite` that rotates q and k with the
module's own ``apply_rotary_pos_emb``. This transformers version has no DINOv3 image
classification model: the pooled feature is the model's ``pooler_output`` (the normalised CLS
token) and a head is added as a ``classifier`` child (:class:`HFHeadMixin`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from torch import Tensor, nn

from focusvit.errors import UnsupportedFamilyError

from .base import (
    AttentionSite,
    BackboneAdapter,
    RecomputedSite,
    TokenLayout,
    submodule_names,
    to_tuple2,
)
from .hf_vit import HFHeadMixin
from .registry import FamilyEntry, register_family
from .tiny import register_tiny

#: SSF sites of one ``DINOv3ViTLayer`` in execution order (the gated MLP computes
#: ``down_proj(act(gate_proj(x)) * up_proj(x))``; the plain one has no ``gate_proj``)
SSF_BLOCK_PARTS = (
    "norm1",
    "attention.q_proj",
    "attention.k_proj",
    "attention.v_proj",
    "attention.o_proj",
    "norm2",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def is_hf_dinov3(model: nn.Module) -> bool:
    """``DINOv3ViTModel`` (not ``DINOv3ViTBackbone``, whose output drops the final tokens)."""
    config = getattr(model, "config", None)
    return (
        getattr(config, "model_type", None) == "dinov3_vit"
        and hasattr(model, "rope_embeddings")
        and not hasattr(model, "stage_names")
    )


def _argument(args: tuple, kwargs: dict, position: int, name: str):
    """The value of parameter ``name`` (``position`` in the signature, ``self`` not counted)."""
    return kwargs.get(name, args[position] if len(args) > position else None)


def rotary_logits(attn: nn.Module) -> Callable[[tuple, dict], Tensor]:
    """``compute(args, kwargs)`` of a ``DINOv3ViTAttention``: its pre-softmax logits
    ``(B, heads, N, N)`` for ``forward(hidden_states (B, N, D), attention_mask,
    position_embeddings=(cos, sin) each (patches, head_dim))``, as its eager path computes
    them: ``rotate(q) rotate(k)ᵀ · scaling (+ attention_mask)`` with the prefix (CLS, registers,
    inserted prompt tokens) left unrotated by the module's own ``apply_rotary_pos_emb``."""
    rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb

    def compute(args: tuple, kwargs: dict) -> Tensor:
        hidden = _argument(args, kwargs, 0, "hidden_states")
        mask = _argument(args, kwargs, 1, "attention_mask")
        cos, sin = _argument(args, kwargs, 2, "position_embeddings")
        batch, tokens, _ = hidden.shape
        shape = (batch, tokens, attn.num_heads, attn.head_dim)
        q = attn.q_proj(hidden).view(shape).transpose(1, 2)
        k = attn.k_proj(hidden).view(shape).transpose(1, 2)
        q, k = rotate(q, k, cos, sin)
        logits = (q @ k.transpose(2, 3)) * attn.scaling
        return logits if mask is None else logits + mask

    return compute


class HFDINOv3Adapter(HFHeadMixin, BackboneAdapter):
    """HF DINOv3 ViT: CLS + register tokens, rotary attention captured after the rotation."""

    family = "vit"

    def __init__(self, model: nn.Module, name: str = "", data_config: dict | None = None):
        if not is_hf_dinov3(model):
            raise UnsupportedFamilyError(
                f"{type(model).__name__} is not an HF DINOv3ViTModel; load one with "
                "load_backbone('hf:facebook/dinov3-vits16-pretrain-lvd1689m')"
            )
        super().__init__(model, name, data_config)

    # forward
    def tokens(self, x: Tensor) -> Tensor:
        """Final normalised tokens ``(B, 1 + R + h*w, D)`` (the model's ``last_hidden_state``)."""
        self.check_input(x)
        return self.model(pixel_values=x).last_hidden_state

    def pool(self, tokens: Tensor) -> Tensor:
        """The normalised CLS token ``(B, D)``: ``DINOv3ViTModel``'s ``pooler_output``."""
        return tokens[:, 0]

    # structure
    @property
    def num_features(self) -> int:
        return int(self.config.hidden_size)

    @property
    def embed_dim(self) -> int:
        return int(self.config.hidden_size)

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.model.model.layer)

    @property
    def input_module(self) -> nn.Module:
        return self.model.embeddings

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.blocks[-1].norm1

    @property
    def lora_targets(self) -> list[str]:
        return ["q_proj", "k_proj", "v_proj", "o_proj"]

    @property
    def ssf_targets(self) -> list[str]:
        # the patch embedding is a Conv2d: SSF scales its (B, D, h, w) output over dim 1
        m = self.model
        return (
            submodule_names(m, [m], ["embeddings.patch_embeddings"])
            + submodule_names(m, self.blocks, SSF_BLOCK_PARTS)
            + submodule_names(m, [m], ["norm"])
        )

    # geometry
    @property
    def patch_size(self) -> tuple[int, int]:
        return to_tuple2(self.config.patch_size)

    def prefix_layout(self) -> TokenLayout:
        return TokenLayout(cls=1, registers=int(self.model.embeddings.register_tokens.shape[1]))

    @property
    def heads_per_block(self) -> list[int]:
        return [int(block.attention.num_heads) for block in self.blocks]

    # attention
    def attention_sites(self) -> list[AttentionSite]:
        # ``modules`` name the projections the logits depend on (their parameters get the
        # gradient); the capture reads the attention module's inputs, not their outputs
        return [
            RecomputedSite(
                modules=[block.attention.q_proj, block.attention.k_proj],
                scale=float(block.attention.scaling),
                owner=block.attention,
                compute=rotary_logits(block.attention),
                sdpa_owner=block.attention,
            )
            for block in self.blocks
        ]


@register_tiny("hf-dinov3")
def _tiny_hf_dinov3(num_classes: int) -> nn.Module:
    """DINOv3ViTModel: hidden 32, 2 layers, 2 heads, 2 registers, patch 8 at 32 px; with
    ``num_classes`` a ``classifier`` over the pooled CLS token (transformers has no DINOv3
    classification model)."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    config = DINOv3ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_register_tokens=2,
        layerscale_value=0.1,
    )
    model = DINOv3ViTModel(config)
    if num_classes:
        model.add_module("classifier", nn.Linear(config.hidden_size, num_classes))
    return model


register_family(
    FamilyEntry(
        "HF DINOv3 ViT",
        is_hf_dinov3,
        HFDINOv3Adapter,
        examples=("hf:facebook/dinov3-vits16-pretrain-lvd1689m",),
        tiny=("hf-dinov3",),
        priority=30,
    )
)
