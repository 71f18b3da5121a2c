"""Adapters for timm's Swin Transformer V2: ``swinv2_*``
(``timm.models.swin_transformer_v2.SwinTransformerV2``) and ``swinv2_cr_*``
(``timm.models.swin_transformer_v2_cr.SwinTransformerV2Cr``).

Both compute cosine attention with a learned logit scale plus a continuous position bias
(see ``swinv2.py``); the capture recomputes those logits from each block's window attention
inputs. Both roll the stage grid by ``-shift`` and then pad it to whole windows
(``"roll_then_pad"``), and pass the shift mask as ``attn(x_windows, mask=attn_mask)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from torch import Tensor, nn

from .base import AttentionSite
from .registry import FamilyEntry, register_family
from .swinv2 import continuous_position_bias, cosine_logits, cosine_site
from .timm_qkv import fused_qkv, qkv_module_called
from .timm_swin import TimmSwinAdapter, checked_forward_features
from .tiny import register_tiny


def _blocks_of(stages: object) -> list[nn.Module]:
    if not isinstance(stages, nn.Module):
        return []
    return [block for stage in stages.children() for block in getattr(stage, "blocks", [])]


def is_timm_swinv2(model: nn.Module) -> bool:
    """timm ``SwinTransformerV2``: stages in ``layers``, window attention with ``cpb_mlp``."""
    blocks = _blocks_of(getattr(model, "layers", None))
    return (
        hasattr(model, "patch_embed")
        and hasattr(model, "forward_features")
        and bool(blocks)
        and all(hasattr(getattr(b, "attn", None), "cpb_mlp") for b in blocks)
    )


def is_timm_swinv2_cr(model: nn.Module) -> bool:
    """timm ``SwinTransformerV2Cr``: stages in ``stages``, ``WindowMultiHeadAttention`` with a
    ``meta_mlp`` position bias."""
    blocks = _blocks_of(getattr(model, "stages", None))
    return (
        hasattr(model, "patch_embed")
        and hasattr(model, "forward_features")
        and bool(blocks)
        and all(hasattr(getattr(b, "attn", None), "meta_mlp") for b in blocks)
    )


def _v2_logits(attn: nn.Module, x: Tensor) -> Tensor:
    """``WindowAttention.forward`` (swin_transformer_v2) up to its softmax, without the mask."""
    batch, tokens, _ = x.shape
    qkv = fused_qkv(attn, x)
    q, k, _ = qkv.reshape(batch, tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    bias = continuous_position_bias(
        attn.cpb_mlp, attn.relative_coords_table, attn.relative_position_index, attn.num_heads
    )
    return cosine_logits(q, k, attn.logit_scale) + bias


def _cr_logits(attn: nn.Module, x: Tensor) -> Tensor:
    """``WindowMultiHeadAttention.forward`` (swin_transformer_v2_cr) up to its softmax, without
    the mask; the position bias comes from the module's own ``_relative_positional_encodings``
    (``meta_mlp`` on log-spaced coordinates, no sigmoid)."""
    batch, tokens, channels = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).view(batch, tokens, 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    logits = cosine_logits(q, k, attn.logit_scale.reshape(1, heads, 1, 1))
    return logits + attn._relative_positional_encodings()


class _TimmSwinV2Base(TimmSwinAdapter):
    """What timm's two Swin V2 implementations share beyond timm Swin (stages, windows, head,
    SSF layout): post-norm blocks and cosine attention sites; subclasses name the stage
    container, the logits, the token layout and the SSF sites. ``gradcam_layer`` (the last
    block's ``norm1``) is the normalised attention output ``(B, H, W, C)`` here."""

    LOGITS: ClassVar[Callable[[nn.Module, Tensor], Tensor]]
    # post-norm blocks: ``x + norm1(attn(x))``, then ``x + norm2(mlp(x))`` (execution order)
    SSF_BLOCK_PARTS: ClassVar[tuple[str, ...]] = (
        "attn.qkv",
        "attn.proj",
        "norm1",
        "mlp.fc1",
        "mlp.fc2",
        "norm2",
    )

    def attention_sites(self) -> list[AttentionSite]:
        logits_of = type(self).LOGITS
        sites = [cosine_site(b.attn, [b.attn.qkv], logits_of) for b in self.blocks]
        return self._with_shift_masks(sites)


class TimmSwinV2Adapter(_TimmSwinV2Base):
    """timm ``swinv2_*``. Tokens ``(B, H, W, C)`` after the final norm, pooled by the head.

    timm computes ``qkv`` as ``F.linear(x, qkv.weight, cat(q_bias, 0, v_bias))``: the ``qkv``
    module never runs, so LoRA or SSF on it would act on nothing. The adapter switches each
    attention to timm's own ``qkv_bias_separate`` path (``qkv(x) + bias``, the same function
    up to float rounding) while a tuner is attached to ``qkv`` (``focusvit.backbones.timm_qkv``),
    so ``qkv`` runs and LoRA / SSF on it act; an untuned model runs its own code.
    """

    LOGITS = staticmethod(_v2_logits)
    accepts = staticmethod(is_timm_swinv2)

    def tokens(self, x: Tensor) -> Tensor:
        """Final tokens ``(B, H, W, C)``; a tuned ``qkv`` module is called (class docstring)."""
        with qkv_module_called([block.attn for block in self.blocks]):
            return checked_forward_features(self, x)


class TimmSwinV2CrAdapter(_TimmSwinV2Base):
    """timm ``swinv2_cr_*``. ``forward_features`` returns ``(B, C, H, W)``; :meth:`tokens`
    gives the Swin layout ``(B, H, W, C)`` (a permuted view) and :meth:`pool` hands the head
    its own layout back. The final norm is the last block's ``norm3``."""

    STAGES = "stages"
    LOGITS = staticmethod(_cr_logits)
    accepts = staticmethod(is_timm_swinv2_cr)
    # ``patch_embed`` returns (B, C, H, W); its norm runs on (B, H, W, C)
    SSF_EMBED = "patch_embed.norm"
    SSF_BLOCK_PARTS = (*_TimmSwinV2Base.SSF_BLOCK_PARTS, "norm3")
    SSF_FINAL = ()

    def tokens(self, x: Tensor) -> Tensor:
        return checked_forward_features(self, x).permute(0, 2, 3, 1)

    def pool(self, tokens: Tensor) -> Tensor:
        return self.model.forward_head(tokens.permute(0, 3, 1, 2), pre_logits=True)

    def head_from_tokens(self, tokens: Tensor) -> Tensor:
        return self.model.forward_head(tokens.permute(0, 3, 1, 2))


TINY_SWIN = {"img_size": 64, "patch_size": 4, "window_size": 4, "embed_dim": 16}


@register_tiny("timm-swinv2")
def _tiny_timm_swinv2(num_classes: int) -> nn.Module:
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    model = SwinTransformerV2(
        depths=(2, 2), num_heads=(2, 4), num_classes=num_classes, strict_img_size=False, **TINY_SWIN
    )
    # timm zero-initialises the residual post-norms (each branch starts as a no-op, so its
    # attention would get no gradient); LayerNorm's default 1 keeps the tiny model informative
    for block in (b for stage in model.layers for b in stage.blocks):
        nn.init.ones_(block.norm1.weight)
        nn.init.ones_(block.norm2.weight)
    return model


@register_tiny("timm-swinv2-cr")
def _tiny_timm_swinv2_cr(num_classes: int) -> nn.Module:
    from timm.models.swin_transformer_v2_cr import SwinTransformerV2Cr

    return SwinTransformerV2Cr(
        depths=(2, 2),
        num_heads=(2, 4),
        num_classes=num_classes,
        strict_img_size=False,
        init_values=None,  # post-norm weights 1 rather than 0 (see _tiny_timm_swinv2)
        **TINY_SWIN,
    )


register_family(
    FamilyEntry(
        "timm Swin V2",
        is_timm_swinv2,
        TimmSwinV2Adapter,
        examples=("timm:swinv2_tiny_window8_256.ms_in1k",),
        tiny=("timm-swinv2",),
        cls_row="-",
        priority=15,  # before "timm Swin", whose predicate also accepts these models
    )
)
register_family(
    FamilyEntry(
        "timm Swin V2-Cr",
        is_timm_swinv2_cr,
        TimmSwinV2CrAdapter,
        examples=("timm:swinv2_cr_tiny_ns_224.sw_in1k",),
        tiny=("timm-swinv2-cr",),
        cls_row="-",
        priority=15,
    )
)
