"""Adapter for Hugging Face Swin (``SwinModel`` / ``SwinForImageClassification``)."""

from __future__ import annotations

from torch import Tensor, nn

from focusvit.errors import UnsupportedFamilyError

from .base import AttentionSite, BackboneAdapter, submodule_names, to_tuple2
from .hf_vit import (
    HF_SSF_BLOCK_PARTS,
    HFHeadMixin,
    hf_attention_heads,
    hf_attention_projections,
    qk_site,
)
from .registry import FamilyEntry, register_family
from .windows import SwinAdapterMixin


def is_hf_swin(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == "swin"


def _relative_bias(attn: nn.Module):
    """Callable returning the ``(1, heads, n, n)`` relative position bias of an HF Swin attention."""
    if callable(getattr(attn, "relative_position_bias", None)):
        return attn.relative_position_bias
    inner = getattr(attn, "self", attn)  # transformers 4.x layout

    def bias() -> Tensor:
        table = inner.relative_position_bias_table[inner.relative_position_index.view(-1)]
        n = inner.relative_position_index.shape[0]
        return table.view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)

    return bias


class HFSwinAdapter(SwinAdapterMixin, HFHeadMixin, BackboneAdapter):
    """HF Swin. Tokens are ``(B, H*W, C)``; attention from the separate q/k projections plus the
    relative position bias; ``capture_attention(..., shift_mask=True)`` adds the shifted-window
    mask the layer builds (``SwinLayer.get_attn_mask`` on the padded grid), which FORT's loss
    uses. Shifted blocks pad the stage grid before rolling it
    (``window_partition_order = "pad_then_roll"``)."""

    window_partition_order = "pad_then_roll"
    #: the models this adapter class takes (Swin V2 subclasses it with its own check)
    accepts = staticmethod(is_hf_swin)

    def __init__(self, model: nn.Module, name: str = "", data_config: dict | None = None):
        if not self.accepts(model):
            raise UnsupportedFamilyError(
                f"{type(model).__name__} is not a model of {type(self).__name__}"
            )
        super().__init__(model, name, data_config)

    def tokens(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.base(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state

    def pool(self, tokens: Tensor) -> Tensor:
        return tokens.mean(dim=1)

    @property
    def num_features(self) -> int:
        return int(self.base.num_features)

    @property
    def blocks(self) -> list[nn.Module]:
        return [block for stage in self.base.encoder.layers for block in stage.blocks]

    def stage_of_block(self) -> list[int]:
        return [i for i, stage in enumerate(self.base.encoder.layers) for _ in stage.blocks]

    def _block_window(self, block: nn.Module) -> tuple[tuple[int, int], tuple[int, int]]:
        return to_tuple2(int(block.window_size)), to_tuple2(int(block.shift_size))

    @property
    def input_module(self) -> nn.Module:
        return self.base.embeddings

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.blocks[-1].layernorm_before

    @property
    def lora_targets(self) -> list[str]:
        return hf_attention_projections(self.blocks[0].attention)[2]

    @property
    def ssf_targets(self) -> list[str]:
        # After the embedding norm, like timm's Swin ``patch_embed`` (projection + norm); the
        # bare ``patch_embeddings`` (which returns a tuple) when there is no norm.
        m = self.model
        embed = submodule_names(m, [self.base], ["embeddings.norm"]) or submodule_names(
            m, [self.base], ["embeddings.patch_embeddings"]
        )
        return (
            embed
            + submodule_names(m, self.blocks, HF_SSF_BLOCK_PARTS)
            + submodule_names(m, [self.base], ["layernorm"])
        )

    @property
    def patch_size(self) -> tuple[int, int]:
        return to_tuple2(self.model.config.patch_size)

    @property
    def heads_per_block(self) -> list[int]:
        return [hf_attention_heads(block.attention)[0] for block in self.blocks]

    def attention_sites(self) -> list[AttentionSite]:
        return self._with_shift_masks(
            [qk_site(b.attention, bias=_relative_bias(b.attention)) for b in self.blocks]
        )

    def _attention_module(self, block: nn.Module) -> nn.Module:
        return block.attention

    @staticmethod
    def _mask_argument(args: tuple, kwargs: dict) -> Tensor | None:
        # ``SwinLayer.forward``: ``self.attention(hidden_states_windows, attn_mask, ...)``
        # (transformers 4.x and 5.x)
        if len(args) > 1:
            return args[1]
        return kwargs.get("attention_mask")


register_family(
    FamilyEntry(
        "HF Swin",
        is_hf_swin,
        HFSwinAdapter,
        examples=("hf:microsoft/swin-tiny-patch4-window7-224",),
        tiny=("hf-swin",),
        cls_row="-",
        priority=20,
    )
)
