"""Adapter for timm's EVA family (``timm.models.eva.Eva``): EVA-01/02, the rotary ViTs
(``vit_*_rope_*``), Perception Encoder and timm's DINOv3 (``vit_*_dinov3*``).

Their blocks look like timm ViT blocks, but the attention (``EvaAttention`` or
``AttentionRope``) differs where the capture of :class:`~.timm_vit.TimmViTAdapter` cannot see
it: the rotary position embedding (``rope``, an argument of the attention forward, per block
for mixed RoPE) rotates q and k of the patch tokens inside the forward, and EVA's fused ``qkv``
with q/v biases is applied with ``F.linear`` on ``qkv.weight``, so the ``qkv`` module is never
called. Each layer is therefore a :class:`RecomputedSite` that repeats the module's own steps
(projection, q/k norm, ``apply_rot_embed_cat`` on the tokens after the prefix, grouped kv heads,
scale, mask). While a LoRA layer or a hook (SSF, the batched tuners) sits on such a ``qkv``, the
adapter's forward runs timm's own ``qkv_bias_separate`` path (``qkv(x) + bias``) so that the
module is called and trains. Tokens a tuner inserts (VPT) are added to the attention's
``num_prefix_tokens``, so that they stay unrotated like the CLS and register tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from focusvit.errors import UnsupportedFamilyError

from .base import AttentionSite, RecomputedSite, TokenLayout, submodule_names
from .registry import FamilyEntry, register_family
from .timm_qkv import fused_qkv, qkv_module_called
from .timm_vit import TimmViTAdapter, is_timm_vit
from .tiny import TINY_VIT, register_tiny

_QKV = ("attn.qkv", "attn.q_proj", "attn.k_proj", "attn.v_proj")
_MLP = ("mlp.fc1", "mlp.fc1_g", "mlp.fc1_x", "mlp.fc2")  # Mlp / GluMlp, SwiGLU (gate first)
#: SSF sites per block in execution order: pre-norm ``EvaBlock`` and ``EvaBlockPostNorm``
SSF_PRE_NORM = ("norm1", *_QKV, "attn.proj", "norm2", *_MLP)
SSF_POST_NORM = (*_QKV, "attn.proj", "norm1", *_MLP, "norm2")


def is_timm_eva(model: nn.Module) -> bool:
    if not is_timm_vit(model):
        return False
    from timm.layers import AttentionRope
    from timm.models.eva import EvaAttention

    return all(isinstance(block.attn, EvaAttention | AttentionRope) for block in model.blocks)


def _argument(args: tuple, kwargs: dict, position: int, name: str, default=None):
    """The value of parameter ``name`` (``position`` in the signature, ``self`` not counted)."""
    return kwargs.get(name, args[position] if len(args) > position else default)


def _project_qk(attn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, torch.dtype]:
    """q ``(B, heads, N, d)``, k ``(B, kv_heads, N, d)`` and the dtype of v."""
    batch, tokens, _ = x.shape
    if attn.qkv is None:
        kv_heads = getattr(attn, "num_kv_heads", attn.num_heads)
        q = attn.q_proj(x).reshape(batch, tokens, attn.num_heads, -1).transpose(1, 2)
        k = attn.k_proj(x).reshape(batch, tokens, kv_heads, -1).transpose(1, 2)
        return q, k, q.dtype
    qkv = fused_qkv(attn, x)
    q, k, _ = qkv.reshape(batch, tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, qkv.dtype


def rotary_logits(attn: nn.Module) -> Callable[[tuple, dict], Tensor]:
    """``compute(args, kwargs)`` of an ``EvaAttention`` / ``AttentionRope``: its pre-softmax
    logits ``(B, heads, N, N)`` for ``forward(x (B, N, D), rope, attn_mask, is_causal)``,
    step by step as its eager path: projections, q/k norm, rotation of the tokens after the
    first ``num_prefix_tokens`` with timm's ``apply_rot_embed_cat``, kv heads repeated for
    grouped-query attention, ``(q · scale) kᵀ`` plus the mask timm resolves."""
    from timm.layers import apply_rot_embed_cat, maybe_add_mask, resolve_self_attn_mask

    def rotate(t: Tensor, rope: Tensor, dtype: torch.dtype) -> Tensor:
        npt, half = attn.num_prefix_tokens, getattr(attn, "rotate_half", False)
        rotated = apply_rot_embed_cat(t[:, :, npt:, :], rope, half=half)
        return torch.cat([t[:, :, :npt, :], rotated], dim=2).to(dtype)

    def compute(args: tuple, kwargs: dict) -> Tensor:
        x = _argument(args, kwargs, 0, "x")
        rope = _argument(args, kwargs, 1, "rope")
        mask = _argument(args, kwargs, 2, "attn_mask")
        causal = _argument(args, kwargs, 3, "is_causal", False)
        q, k, dtype = _project_qk(attn, x)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if rope is not None:
            q, k = rotate(q, rope, dtype), rotate(k, rope, dtype)
        groups = getattr(attn, "num_kv_groups", 1)
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        return maybe_add_mask(logits, resolve_self_attn_mask(x.shape[1], logits, mask, causal))

    return compute


class TimmEvaAdapter(TimmViTAdapter):
    """timm EVA / rotary ViTs. As :class:`TimmViTAdapter` (full probability maps are read from
    the eager softmax of the captured blocks), with logits recomputed after the rotation."""

    def __init__(self, model: nn.Module, name: str = "", data_config: dict | None = None):
        if not is_timm_eva(model):
            raise UnsupportedFamilyError(
                f"{type(model).__name__} is not a timm EVA model (timm.models.eva.Eva)"
            )
        super().__init__(model, name, data_config)

    def tokens(self, x: Tensor) -> Tensor:
        self.check_input(x)
        with qkv_module_called([block.attn for block in self.blocks]):
            return self.model.forward_features(x)

    @property
    def lora_targets(self) -> list[str]:
        fused = self.blocks[0].attn.qkv is not None
        return [*(["qkv"] if fused else ["q_proj", "k_proj", "v_proj"]), "proj"]

    @property
    def ssf_targets(self) -> list[str]:
        from timm.models.eva import EvaBlockPostNorm

        post = isinstance(self.blocks[0], EvaBlockPostNorm)
        m = self.model
        return (
            submodule_names(m, [m], ["patch_embed"])
            + submodule_names(m, self.blocks, SSF_POST_NORM if post else SSF_PRE_NORM)
            + submodule_names(m, [m], ["norm", "fc_norm"])
        )

    def prefix_layout(self) -> TokenLayout:
        """EVA names its registers ``reg_token`` ``(1, R, D)``; ``class_token=False`` models
        (``vit_*_rope_reg1_gap``) start with a register."""
        registers = getattr(self.model, "reg_token", None)
        return TokenLayout(
            cls=int(getattr(self.model, "cls_token", None) is not None),
            registers=0 if registers is None else int(registers.shape[1]),
        )

    def set_inserted_tokens(self, count: int, refreshed: bool = False) -> None:
        """As the base class; the attention modules also skip the T inserted tokens when they
        rotate (their ``num_prefix_tokens`` becomes P + T, and P again with ``count=0``)."""
        super().set_inserted_tokens(count, refreshed)
        for block in self.blocks:
            block.attn.num_prefix_tokens = int(self.model.num_prefix_tokens) + count

    def attention_sites(self) -> list[AttentionSite]:
        return [self._rotary_site(block.attn) for block in self.blocks]

    @staticmethod
    def _rotary_site(attn: nn.Module) -> RecomputedSite:
        # ``modules``: the projections the logits depend on (their parameters get gradients)
        modules = [attn.qkv] if attn.qkv is not None else [attn.q_proj, attn.k_proj]
        return RecomputedSite(
            modules=modules,
            scale=float(attn.scale),
            eager_owner=attn,
            probs_module=attn.attn_drop,
            owner=attn,
            compute=rotary_logits(attn),
            sdpa_owner=attn,
        )


def _tiny_eva(num_classes: int, **options) -> nn.Module:
    from timm.models.eva import Eva

    return Eva(
        img_size=32,
        patch_size=8,
        num_classes=num_classes,
        dynamic_img_size=True,
        use_rot_pos_emb=True,
        **TINY_VIT,
        **options,
    )


@register_tiny("timm-eva-rope")
def _tiny_eva02(num_classes: int) -> nn.Module:
    """EVA-02 layout: RoPE ('cat') with absolute position embedding, fused qkv with q/v bias
    (applied via F.linear), SwiGLU MLP with inner norm, average pooling."""
    return _tiny_eva(num_classes, swiglu_mlp=True, scale_mlp=True, ref_feat_shape=(4, 4))


@register_tiny("timm-dinov3")
def _tiny_timm_dinov3(num_classes: int) -> nn.Module:
    """timm ``vit_*_patch16_dinov3`` layout: DINOv3 RoPE (half rotation, temperature 100), no
    absolute position embedding, 2 registers, layer scale, qkv without bias."""
    return _tiny_eva(
        num_classes,
        qkv_bias=False,
        init_values=0.1,
        rope_type="dinov3",
        rope_temperature=100,
        rope_rotate_half=True,
        use_abs_pos_emb=False,
        num_reg_tokens=2,
        use_fc_norm=False,
    )


register_family(
    FamilyEntry(
        "timm EVA/rotary ViT/DINOv3",
        is_timm_eva,
        TimmEvaAdapter,
        examples=(
            "timm:eva02_small_patch14_224.mim_in22k",
            "timm:vit_small_patch16_dinov3.lvd1689m",
            "timm:vit_base_patch16_rope_reg1_gap_256.sbb_in1k",
        ),
        tiny=("timm-eva-rope", "timm-dinov3"),
        cls_row="cls token (mean of patch query rows without one)",
        priority=15,
    )
)
