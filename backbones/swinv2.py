"""Swin V2 (Liu et al., CVPR 2022): the attention math the Swin V2 families share, and the
adapter for Hugging Face Swinv2 (``Swinv2Model`` / ``Swinv2ForImageClassification``).

Swin V2 attention is cosine attention with a learned per-head logit scale and a continuous
relative position bias::

    logits = cos(q, k) · exp(min(logit_scale, log 100)) + 16 · sigmoid(cpb_mlp(log-spaced coords))

Its logits are not ``q kᵀ · scale``, so every Swin V2 family recomputes them with a
:class:`RecomputedSite` from the inputs of its attention module and that module's own
parameters and submodules (LoRA / SSF on the projections included). The timm families
(``swinv2_*`` and ``swinv2_cr_*``) live in ``timm_swinv2.py``.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import AttentionSite, RecomputedSite, submodule_names
from .hf_swin import HFSwinAdapter
from .registry import FamilyEntry, register_family
from .tiny import register_tiny

#: the clamp of the learned logit scale in both libraries: ``exp(min(s, log(1 / 0.01)))``
MAX_LOG_SCALE = math.log(1.0 / 0.01)


# ----------------------------------------------------------------------------- shared math
def cosine_logits(q: Tensor, k: Tensor, logit_scale: Tensor) -> Tensor:
    """Swin V2 scaled cosine attention ``cos(q, k) · exp(min(logit_scale, log 100))``.

    Args:
        q, k: ``(B', heads, n, head_dim)``.
        logit_scale: per-head log scale broadcasting to ``(B', heads, n, n)`` (``(heads, 1, 1)``).

    Returns:
        ``(B', heads, n, n)``, computed with the same operations as timm and transformers.
    """
    attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
    return attn * torch.clamp(logit_scale, max=MAX_LOG_SCALE).exp()


def continuous_position_bias(
    mlp: nn.Module, coords_table: Tensor, position_index: Tensor, heads: int
) -> Tensor:
    """Swin V2's continuous relative position bias ``16 · sigmoid(mlp(table))[index]``.

    Args:
        mlp: the module's bias MLP (2 -> hidden -> heads).
        coords_table: ``(1, 2wh - 1, 2ww - 1, 2)`` log-spaced relative coordinates.
        position_index: ``(n, n)`` index of each (query, key) pair into the table.

    Returns:
        ``(1, heads, n, n)``.
    """
    n = position_index.shape[0]
    table = mlp(coords_table).view(-1, heads)
    bias = table[position_index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()
    return (16 * torch.sigmoid(bias)).unsqueeze(0)


@contextmanager
def replayed_randomness(module: nn.Module, x: Tensor) -> Iterator[None]:
    """In training mode, restore the random number generator after the block runs, so that
    the module's own forward draws the same dropout masks (LoRA dropout on the projections,
    timm V2-Cr's dropout inside the position-bias MLP) as the recomputation did."""
    if not module.training:
        yield
        return
    if x.device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            yield
        return
    with torch.random.fork_rng(devices=[x.device.index or 0], device_type=x.device.type):
        yield


LogitsOf = Callable[[nn.Module, Tensor], Tensor]


def cosine_site(owner: nn.Module, modules: list[nn.Module], logits_of: LogitsOf) -> AttentionSite:
    """A :class:`RecomputedSite` on ``owner`` whose logits are ``logits_of(owner, x)`` for the
    windows ``x`` ``(B·windows, n, C)`` the block passes to it (first argument).

    ``modules`` lists the projections the logits depend on (not hooked: documentation and
    gradient checks); the shift mask is added by the capture on request (``window_mask``)."""

    def compute(args: tuple, kwargs: dict) -> Tensor:
        x = args[0] if args else next(iter(kwargs.values()))
        with replayed_randomness(owner, x):
            return logits_of(owner, x)

    return RecomputedSite(modules=modules, owner=owner, compute=compute)


# ----------------------------------------------------------------------------- Hugging Face
def is_hf_swinv2(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == "swinv2"


def _hf_logits(attn: nn.Module, x: Tensor) -> Tensor:
    """``Swinv2SelfAttention.forward`` up to its softmax, without the shift mask."""
    batch, tokens, _ = x.shape
    heads = attn.num_attention_heads

    def split(projection: nn.Module) -> Tensor:
        return projection(x).view(batch, tokens, heads, -1).transpose(1, 2)

    logits = cosine_logits(split(attn.query), split(attn.key), attn.logit_scale)
    bias_mlp = attn.continuous_position_bias_mlp
    return logits + continuous_position_bias(
        bias_mlp, attn.relative_coords_table, attn.relative_position_index, heads
    )


@functools.cache
def mask_repeats(attention_class: type) -> int:
    """How often ``attention_class.forward`` adds its ``attention_mask`` to the logits.

    transformers' ``Swinv2SelfAttention`` adds the shift mask twice (two
    ``+ attention_mask.unsqueeze(1).unsqueeze(0)`` lines, 4.x and 5.x), so the logits its
    softmax sees hold 2 × the mask (-200 between regions); a release that drops the second
    addition is read as 1."""
    try:
        source = inspect.getsource(attention_class.forward)
    except (OSError, TypeError):
        return 1
    return max(1, source.count("+ attention_mask"))


class HFSwinV2Adapter(HFSwinAdapter):
    """HF Swinv2: the HF Swin layout (tokens ``(B, H*W, C)`` pooled by their mean, stages,
    windows, head slot), with cosine attention sites.

    Blocks are post-norm (``layernorm_before`` normalises the attention output), so SSF sites
    follow execution order: q, k, v, attention output, ``layernorm_before``, MLP,
    ``layernorm_after``. LoRA targets ``query``/``key``/``value``: the attention output
    projection is named ``dense`` like the MLP's two linears, so a leaf-name target would
    adapt those too. Shifted blocks pad before rolling (``"pad_then_roll"``).
    """

    SSF_BLOCK_PARTS = (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "layernorm_before",
        "intermediate.dense",
        "output.dense",
        "layernorm_after",
    )

    accepts = staticmethod(is_hf_swinv2)

    @property
    def lora_targets(self) -> list[str]:
        return ["query", "key", "value"]

    @property
    def ssf_targets(self) -> list[str]:
        m = self.model
        return (
            submodule_names(m, [self.base], ["embeddings.norm"])
            + submodule_names(m, self.blocks, self.SSF_BLOCK_PARTS)
            + submodule_names(m, [self.base], ["layernorm"])
        )

    @property
    def heads_per_block(self) -> list[int]:
        return [int(block.attention.self.num_attention_heads) for block in self.blocks]

    def attention_sites(self) -> list[AttentionSite]:
        sites = []
        for block in self.blocks:
            attn = block.attention.self
            sites.append(cosine_site(attn, [attn.query, attn.key], _hf_logits))
        return self._with_shift_masks(sites)

    def _attention_module(self, block: nn.Module) -> nn.Module:
        return block.attention.self

    def _mask_argument(self, args: tuple, kwargs: dict) -> Tensor | None:
        # ``Swinv2Attention.forward``: ``self.self(hidden_states, attention_mask, ...)``
        mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        if mask is None:
            return None
        return mask * mask_repeats(type(self.blocks[0].attention.self))


@register_tiny("hf-swinv2")
def _tiny_hf_swinv2(num_classes: int) -> nn.Module:
    from transformers import Swinv2Config, Swinv2ForImageClassification, Swinv2Model

    config = Swinv2Config(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=4,
        num_labels=max(num_classes, 1),
    )
    return Swinv2ForImageClassification(config) if num_classes else Swinv2Model(config)


register_family(
    FamilyEntry(
        "HF Swin V2",
        is_hf_swinv2,
        HFSwinV2Adapter,
        examples=("hf:microsoft/swinv2-tiny-patch4-window8-256",),
        tiny=("hf-swinv2",),
        cls_row="-",
        priority=30,
    )
)
