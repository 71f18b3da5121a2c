"""Adapter for timm's Swin Transformer (``timm.models.swin_transformer.SwinTransformer``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from focusvit.errors import InputSizeError, UnsupportedFamilyError

from .base import (
    AttentionSite,
    BackboneAdapter,
    WindowGeometry,
    split_heads,
    submodule_names,
    to_tuple2,
)
from .timm_vit import TimmHeadMixin


def is_timm_swin(model: nn.Module) -> bool:
    layers = getattr(model, "layers", None)
    return (
        layers is not None
        and hasattr(model, "patch_embed")
        and hasattr(model, "forward_features")
        and all(hasattr(stage, "blocks") for stage in layers)
        and all(hasattr(b, "attn") and hasattr(b, "shift_size") for s in layers for b in s.blocks)
    )


class SwinAdapterMixin:
    """Geometry shared by the timm and HF Swin adapters (hierarchical, windowed).

    Attributes:
        window_partition_order: how a shifted block builds its windows when the stage grid is
            not a multiple of the window: ``"roll_then_pad"`` (timm: roll the ``H × W`` grid by
            ``-shift``, then pad bottom/right) or ``"pad_then_roll"`` (Hugging Face: pad first,
            then roll the padded grid). Read by ``focusvit.prompting.swin``.
    """

    family = "swin"
    num_prefix_tokens = 0
    window_partition_order: str = "roll_then_pad"

    def stage_of_block(self) -> list[int]:
        """Stage index of every block in :attr:`blocks` order."""
        raise NotImplementedError

    @property
    def num_stages(self) -> int:
        return max(self.stage_of_block()) + 1

    @property
    def size_multiple(self) -> tuple[int, int]:
        ph, pw = self.patch_size
        factor = 2 ** (self.num_stages - 1)
        return ph * factor, pw * factor

    def stage_grid(self, image_size: tuple[int, int], stage: int) -> tuple[int, int]:
        """Token grid ``(H, W)`` of ``stage`` for an input of ``image_size`` pixels."""
        ph, pw = self.patch_size
        factor = 2**stage
        return image_size[0] // ph // factor, image_size[1] // pw // factor

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Grid of the last stage (where Grad-CAM and pooled features live)."""
        return self.stage_grid(image_size, self.num_stages - 1)

    def window_geometry(self, image_size: tuple[int, int]) -> list[WindowGeometry]:
        """Window layout of every block for an input of ``image_size`` pixels."""
        out = []
        for block, stage in zip(self.blocks, self.stage_of_block(), strict=True):
            window, shift = self._block_window(block)
            out.append(WindowGeometry(self.stage_grid(image_size, stage), window, shift, stage))
        return out

    def _block_window(self, block: nn.Module) -> tuple[tuple[int, int], tuple[int, int]]:
        raise NotImplementedError

    def _reshape_attention(self, logits: Tensor, batch_size: int) -> Tensor:
        """``(B*windows, heads, n, n)`` -> ``(B, windows, heads, n, n)``."""
        return logits.reshape(batch_size, -1, *logits.shape[1:])

    def tokens_to_grid(self, tokens: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Last-stage tokens ``(B, H, W, C)`` or ``(B, H*W, C)`` -> ``(B, C, H, W)``."""
        h, w = self.grid_size(image_size)
        if tokens.ndim == 4:
            return tokens.permute(0, 3, 1, 2)
        if tokens.shape[1] != h * w:
            raise InputSizeError(
                f"{tokens.shape[1]} tokens do not fill the {h}x{w} last-stage grid of input "
                f"{image_size}; pass the image size the tokens were computed at"
            )
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], h, w)


class TimmSwinAdapter(SwinAdapterMixin, TimmHeadMixin, BackboneAdapter):
    """timm Swin. Attention logits are recomputed from each block's fused ``qkv`` plus the
    relative position bias; the shifted-window mask is not part of the logits."""

    window_partition_order = "roll_then_pad"

    def __init__(self, model: nn.Module, name: str = "", data_config: dict | None = None):
        if not is_timm_swin(model):
            raise UnsupportedFamilyError(f"{type(model).__name__} is not a timm Swin Transformer")
        super().__init__(model, name, data_config)

    def tokens(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if not getattr(self.model, "dynamic_img_size", False):
            expected = tuple(self.model.patch_embed.img_size)
            if tuple(x.shape[-2:]) != expected:
                raise InputSizeError(
                    f"{self.name} was built for {expected[0]}x{expected[1]} inputs and got "
                    f"{x.shape[-2]}x{x.shape[-1]}; load it with load_backbone (which sets "
                    "strict_img_size=False) or resize the images"
                )
        return self.model.forward_features(x)

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
    def blocks(self) -> list[nn.Module]:
        return [block for stage in self.model.layers for block in stage.blocks]

    def stage_of_block(self) -> list[int]:
        return [i for i, stage in enumerate(self.model.layers) for _ in stage.blocks]

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

    SSF_BLOCK_PARTS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")

    @property
    def ssf_targets(self) -> list[str]:
        # timm's Swin ``patch_embed`` ends with its norm and returns (B, h, w, C) tokens.
        m = self.model
        return (
            submodule_names(m, [m], ["patch_embed"])
            + submodule_names(m, self.blocks, self.SSF_BLOCK_PARTS)
            + submodule_names(m, [m], ["norm"])
        )

    @property
    def patch_size(self) -> tuple[int, int]:
        return to_tuple2(self.model.patch_embed.patch_size)

    def attention_sites(self) -> list[AttentionSite]:
        return [self._site(block.attn) for block in self.blocks]

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
