"""Adapter for timm's Swin Transformer (``timm.models.swin_transformer.SwinTransformer``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor, nn

from focusvit.errors import InputSizeError, UnsupportedFamilyError

from .base import AttentionSite, BackboneAdapter, split_heads, submodule_names, to_tuple2
from .registry import FamilyEntry, register_family
from .timm_vit import TimmHeadMixin
from .windows import SwinAdapterMixin


def is_timm_swin(model: nn.Module) -> bool:
    layers = getattr(model, "layers", None)
    return (
        layers is not None
        and hasattr(model, "patch_embed")
        and hasattr(model, "forward_features")
        and all(hasattr(stage, "blocks") for stage in layers)
        and all(hasattr(b, "attn") and hasattr(b, "shift_size") for s in layers for b in s.blocks)
    )


def checked_forward_features(adapter: BackboneAdapter, x: Tensor) -> Tensor:
    """``adapter.model.forward_features(x)`` after the input checks of a timm pyramid model:
    one built for a fixed size (``dynamic_img_size`` off) refuses another with the fix."""
    adapter.check_input(x)
    model = adapter.model
    if not getattr(model, "dynamic_img_size", False):
        expected = tuple(model.patch_embed.img_size)
        if tuple(x.shape[-2:]) != expected:
            raise InputSizeError(
                f"{adapter.name} was built for {expected[0]}x{expected[1]} inputs and got "
                f"{x.shape[-2]}x{x.shape[-1]}; load it with load_backbone (which sets "
                "strict_img_size=False) or resize the images"
            )
    return model.forward_features(x)


class TimmSwinAdapter(SwinAdapterMixin, TimmHeadMixin, BackboneAdapter):
    """timm Swin. Attention logits are recomputed from each block's fused ``qkv`` plus the
    relative position bias; ``capture_attention(..., shift_mask=True)`` adds the block's own
    shifted-window mask (its ``attn_mask`` buffer or the mask it builds per forward with
    ``dynamic_mask``), which FORT's loss uses."""

    window_partition_order = "roll_then_pad"
    #: the models this class takes, the stage container, and the SSF sites (Swin V2 subclasses)
    accepts = staticmethod(is_timm_swin)
    STAGES: ClassVar[str] = "layers"
    # timm's Swin ``patch_embed`` ends with its norm and returns (B, h, w, C) tokens
    SSF_EMBED: ClassVar[str] = "patch_embed"
    SSF_BLOCK_PARTS: ClassVar[tuple[str, ...]] = (
        "norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"
    )  # fmt: skip
    SSF_FINAL: ClassVar[tuple[str, ...]] = ("norm",)

    def __init__(self, model: nn.Module, name: str = "", data_config: dict | None = None):
        if not self.accepts(model):
            raise UnsupportedFamilyError(f"{type(model).__name__} is not a {type(self).__name__}")
        super().__init__(model, name, data_config)

    def tokens(self, x: Tensor) -> Tensor:
        return checked_forward_features(self, x)

    def pool(self, tokens: Tensor) -> Tensor:
        return self.model.forward_head(tokens, pre_logits=True)

    def head_from_tokens(self, tokens: Tensor) -> Tensor:
        return self.model.forward_head(tokens)

    @property
    def head_name(self) -> str:
        fc = getattr(getattr(self.model, "head", None), "fc", None)
        return "head.fc" if isinstance(fc, nn.Linear) else ""

    @property
    def num_features(self) -> int:
        return int(self.model.num_features)

    @property
    def _stages(self) -> list[nn.Module]:
        return list(getattr(self.model, self.STAGES).children())

    @property
    def blocks(self) -> list[nn.Module]:
        return [block for stage in self._stages for block in stage.blocks]

    def stage_of_block(self) -> list[int]:
        return [i for i, stage in enumerate(self._stages) for _ in stage.blocks]

    def _block_window(self, block: nn.Module) -> tuple[tuple[int, int], tuple[int, int]]:
        return to_tuple2(block.window_size), to_tuple2(block.shift_size)

    @property
    def input_module(self) -> nn.Module:
        return self.model.patch_embed

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.blocks[-1].norm1

    @property
    def lora_targets(self) -> list[str]:
        return ["qkv", "proj"]

    @property
    def ssf_targets(self) -> list[str]:
        m = self.model
        return (
            submodule_names(m, [m], [self.SSF_EMBED])
            + submodule_names(m, self.blocks, self.SSF_BLOCK_PARTS)
            + submodule_names(m, [m], list(self.SSF_FINAL))
        )

    @property
    def patch_size(self) -> tuple[int, int]:
        return to_tuple2(self.model.patch_embed.patch_size)

    @property
    def heads_per_block(self) -> list[int]:
        return [int(block.attn.num_heads) for block in self.blocks]

    def attention_sites(self) -> list[AttentionSite]:
        return self._with_shift_masks([self._site(block.attn) for block in self.blocks])

    def _attention_module(self, block: nn.Module) -> nn.Module:
        return block.attn

    @staticmethod
    def _mask_argument(args: tuple, kwargs: dict) -> Tensor | None:
        # ``SwinTransformerBlock._attn``: ``self.attn(x_windows, mask=attn_mask)``
        return kwargs["mask"] if "mask" in kwargs else (args[1] if len(args) > 1 else None)

    @staticmethod
    def _site(attn: nn.Module) -> AttentionSite:
        heads = attn.num_heads

        def split(outputs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
            qkv = outputs[0]
            dim = qkv.shape[-1] // 3
            return split_heads(qkv[..., :dim], heads), split_heads(qkv[..., dim : 2 * dim], heads)

        return AttentionSite(
            modules=[attn.qkv], split=split, scale=float(attn.scale), bias=attn._get_rel_pos_bias
        )


register_family(
    FamilyEntry(
        "timm Swin",
        is_timm_swin,
        TimmSwinAdapter,
        examples=("timm:swin_tiny_patch4_window7_224.ms_in1k",),
        tiny=("timm-swin",),
        cls_row="-",
        priority=10,
    )
)
