"""timm BEiT / BEiT v2 (``timm.models.beit.Beit``, e.g. ``beit_base_patch16_224``).

Facts that set it apart from the generic timm ViT family (``timm_vit.py``):

- the attention adds a relative position bias (per block, ``attn._get_rel_pos_bias()``, and/or a
  shared one passed as ``shared_rel_pos_bias``) to ``q kᵀ · scale`` inside its softmax;
- with ``qkv_bias=True`` (every BEiT) the attention applies its projection as
  ``F.linear(x, qkv.weight, cat(q_bias, k_bias, v_bias))``, so the ``qkv`` Linear module never
  runs: a hook on it records nothing and a LoRA (or SSF) on it would train nothing. While a
  LoRA layer wraps a ``qkv`` or a hook listens to it (SSF, the batched tuners), the adapter's
  forward runs timm's own ``qkv_bias_separate`` path, ``qkv(x) + cat(q_bias, k_bias,
  v_bias)``: the same affine map (equal up to float rounding), through the module. So the
  LoRA targets ``qkv`` and ``proj`` (as the timm ViT family) both act; without a tuner the
  model runs unchanged;
- timm's ``Beit`` has no ``dynamic_img_size``: the bias tables (and the absolute position
  embedding, when used) are built for one patch grid, so inputs must have the model's size.
"""

from __future__ import annotations

from torch import Tensor, nn

from focusvit.errors import InputSizeError, UnsupportedFamilyError

from .base import AttentionSite, BackboneAdapter, RecomputedSite, to_tuple2
from .beit import BEIT_MEAN_STD, InsertedTokenBiasMixin, _arguments, randomise_bias_tables
from .registry import FamilyEntry, register_family
from .timm_qkv import fused_qkv, qkv_module_called
from .timm_vit import TimmViTAdapter
from .tiny import TINY_VIT, register_tiny


def is_timm_beit(model: nn.Module) -> bool:
    return any(
        cls.__name__ == "Beit" and cls.__module__ == "timm.models.beit"
        for cls in type(model).__mro__
    )


def timm_beit_logits(attn: nn.Module, args: tuple, kwargs: dict) -> Tensor:
    """Logits ``(B, heads, N, N)`` of a ``timm.models.beit.Attention`` call, as its eager path
    computes them: ``(q · scale) kᵀ`` + the block's relative position bias + the shared bias."""
    a = _arguments(attn, args, kwargs)
    x, shared = a["x"], a["shared_rel_pos_bias"]
    batch, tokens, _ = x.shape
    qkv = fused_qkv(attn, x)
    q, k, _ = qkv.reshape(batch, tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if attn.relative_position_bias_table is not None:
        logits = logits + attn._get_rel_pos_bias()
    return logits if shared is None else logits + shared


class TimmBeitAdapter(InsertedTokenBiasMixin, TimmViTAdapter):
    """timm BEiT. Pooling, head, LoRA (``qkv``, ``proj``) and SSF targets as the timm ViT
    family; attention logits recomputed from each attention call's arguments (bias included);
    full probability maps read from the eager path's own softmax."""

    default_mean_std = BEIT_MEAN_STD

    def __init__(self, model: nn.Module, name: str = "", data_config: dict | None = None):
        if not is_timm_beit(model):
            raise UnsupportedFamilyError(f"{type(model).__name__} is not a timm BEiT")
        super().__init__(model, name, data_config)

    def tokens(self, x: Tensor) -> Tensor:
        """Final tokens ``(B, 1 + N, D)``; a tuned ``qkv`` module is called (module docstring)."""
        self.check_input(x)
        with qkv_module_called([block.attn for block in self.model.blocks]):
            return self.model.forward_features(x)

    @property
    def fixed_input_size(self) -> tuple[int, int]:
        """The one input size ``(H, W)`` the model takes (timm's ``Beit`` has no
        ``dynamic_img_size``; rebuild it with ``img_size=`` for another)."""
        return to_tuple2(self.model.patch_embed.img_size)

    def check_input(self, x: Tensor) -> None:
        BackboneAdapter.check_input(self, x)
        if tuple(x.shape[-2:]) != self.fixed_input_size:
            h, w = self.fixed_input_size
            raise InputSizeError(
                f"{self.name} (timm BEiT) takes {h}x{w} inputs only and got {x.shape[-2]}x"
                f"{x.shape[-1]}: timm's Beit has no dynamic_img_size, its relative position "
                f"bias is built for one patch grid; resize the images to {h}x{w} (adapter."
                "preprocess does), or build the model for your size with load_backbone(spec, "
                "img_size=(H, W)) (timm resamples the pretrained bias tables)"
            )

    def attention_sites(self) -> list[AttentionSite]:
        return [
            RecomputedSite(
                modules=[block.attn.qkv],  # what the logits depend on (not hooked)
                scale=float(block.attn.scale),
                eager_owner=block.attn,
                probs_module=block.attn.attn_drop,
                owner=block.attn,
                compute=lambda args, kwargs, attn=block.attn: timm_beit_logits(attn, args, kwargs),
                sdpa_owner=block.attn,
            )
            for block in self.model.blocks
        ]

    def _bias_modules(self) -> list[nn.Module]:
        shared = getattr(self.model, "rel_pos_bias", None)
        return [shared] if shared is not None else []

    def _bias_methods(self) -> list[tuple[nn.Module, str]]:
        return [
            (block.attn, "_get_rel_pos_bias")
            for block in self.model.blocks
            if block.attn.relative_position_bias_table is not None
        ]


@register_tiny("timm-beit")
def _tiny_timm_beit(num_classes: int) -> nn.Module:
    """``beit_base_patch16_224``'s layout (per-block bias, no absolute position embedding,
    layer scale, q/v biases, mean pooling + fc_norm) at 32x40 px: timm's Beit takes one input
    size, so the tiny one is non-square to cover that geometry."""
    from timm.models.beit import Beit

    model = Beit(img_size=(32, 40), patch_size=8, num_classes=num_classes, use_abs_pos_emb=False,
                 use_rel_pos_bias=True, init_values=0.1, **TINY_VIT)  # fmt: skip
    return randomise_bias_tables(model)


register_family(
    FamilyEntry(
        "timm BEiT",
        is_timm_beit,
        TimmBeitAdapter,
        examples=(
            "timm:beit_base_patch16_224.in22k_ft_in22k_in1k",
            "timm:beitv2_base_patch16_224.in1k_ft_in22k_in1k",
        ),
        tiny=("timm-beit",),
        cls_row="cls token",
        priority=20,
    )
)
