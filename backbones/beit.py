"""BEiT / Data2Vec-vision, Hugging Face: relative position bias inside the attention logits.

``BeitModel`` / ``BeitForImageClassification`` (transformers 5 layout: ``attention.q_proj`` ...
``o_proj``, the per-layer and the shared relative position bias are summed and handed to the
attention as its ``attention_mask``) and ``Data2VecVisionModel`` /
``Data2VecVisionForImageClassification`` (4.x layout: ``attention.attention.query`` ...,
``attention.output.dense``; the self-attention adds its own bias and receives the shared one as
the ``relative_position_bias`` argument). Both are one family: a CLS token, layer scale
(``lambda_1``/``lambda_2``), the bias inside the softmax logits, mean pooling of the patch tokens
through ``BeitPooler``'s layernorm when ``use_mean_pooling`` (the default), else the CLS token.

Captured logits are recomputed by a :class:`RecomputedSite` from the arguments of the attention
module's forward, with its own projections and bias modules, so they hold the bias exactly as
the model adds it at every input size (``resolution``, ``interpolate_pos_encoding``).
The timm implementation of the family lives in ``timm_beit.py``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
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
from .hf_vit import HF_SSF_BLOCK_PARTS, HFHeadMixin, find_layer_list
from .registry import FamilyEntry, register_family
from .tiny import register_tiny

#: BEiT and Data2Vec-vision checkpoints normalise with mean = std = 0.5 (``BeitImageProcessor``)
BEIT_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

HF_BEIT_CLASSES = frozenset(
    {"BeitModel", "BeitForImageClassification", "Data2VecVisionModel",
     "Data2VecVisionForImageClassification"}
)  # fmt: skip


def insert_zero_bias(bias: Tensor, start: int, count: int) -> Tensor:
    """``(..., M, M)`` -> ``(..., M + count, M + count)``: ``count`` zero rows and columns
    inserted at ``start`` (tokens a tuner inserted after the prefix have no relative position,
    so they get no position bias to or from any token)."""
    rows = bias.new_zeros(*bias.shape[:-2], count, bias.shape[-1])
    bias = torch.cat([bias[..., :start, :], rows, bias[..., start:, :]], dim=-2)
    cols = bias.new_zeros(*bias.shape[:-1], count)
    return torch.cat([bias[..., :start], cols, bias[..., start:]], dim=-1)


class InsertedTokenBiasMixin:
    """Relative position biases for the tokens a tuner inserts (VPT prompts).

    BEiT adds a ``(1 + N) x (1 + N)`` bias to the logits, which does not fit ``1 + T + N``
    tokens. While ``T > 0`` (:meth:`set_inserted_tokens`), every bias the model computes gets
    ``T`` zero rows and columns at the inserted positions (:func:`insert_zero_bias`): through a
    forward hook on each module in :meth:`_bias_modules`, and by shadowing each method in
    :meth:`_bias_methods` on its instance. Both are removed when ``T`` returns to 0.
    """

    inserted_tokens: int
    num_prefix_tokens: int

    def _bias_modules(self) -> list[nn.Module]:
        """Modules whose output is a relative position bias ``(..., M, M)``."""
        return []

    def _bias_methods(self) -> list[tuple[nn.Module, str]]:
        """``(module, method name)`` of methods that return a bias ``(..., M, M)``."""
        return []

    def _pad(self, bias: Tensor) -> Tensor:
        count = self.inserted_tokens
        return insert_zero_bias(bias, self.num_prefix_tokens, count) if count else bias

    def set_inserted_tokens(self, count: int, refreshed: bool = False) -> None:
        super().set_inserted_tokens(count, refreshed)  # type: ignore[misc]
        handles = self.__dict__.setdefault("_bias_handles", [])
        if self.inserted_tokens and not handles:
            for module in self._bias_modules():
                handles.append(module.register_forward_hook(lambda _m, _a, out: self._pad(out)))
            for owner, name in self._bias_methods():
                handles.append(_ShadowedMethod(owner, name, self._pad))
        elif not self.inserted_tokens and handles:
            for handle in handles:
                handle.remove()
            handles.clear()


class _ShadowedMethod:
    """``owner.name()`` returns ``wrap(original())`` until :meth:`remove` (an instance
    attribute shadowing the class's method)."""

    def __init__(self, owner: nn.Module, name: str, wrap: Callable[[Tensor], Tensor]):
        self.owner, self.name = owner, name
        method = getattr(type(owner), name)
        owner.__dict__[name] = lambda *args, **kwargs: wrap(method(owner, *args, **kwargs))

    def remove(self) -> None:
        self.owner.__dict__.pop(self.name, None)


def is_hf_beit(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) in ("beit", "data2vec-vision") and any(
        cls.__name__ in HF_BEIT_CLASSES for cls in type(model).__mro__
    )


def _arguments(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """The arguments of a call ``module(*args, **kwargs)`` by parameter name, defaults filled."""
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def _heads(x: Tensor, head_dim: int) -> Tensor:
    """``(B, N, heads*d)`` -> ``(B, heads, N, d)``, as both attention modules reshape."""
    return x.view(*x.shape[:-1], -1, head_dim).transpose(1, 2)


def beit_logits(attn: nn.Module, args: tuple, kwargs: dict) -> Tensor:
    """Logits ``(B, heads, N, N)`` of a transformers-5 ``BeitAttention`` call:
    ``q kᵀ · scaling + attention_mask`` (the mask is the layer's relative position bias plus
    the shared one, as ``eager_attention_forward`` adds it)."""
    a = _arguments(attn, args, kwargs)
    x, mask = a["hidden_states"], a["attention_mask"]
    q, k = _heads(attn.q_proj(x), attn.head_dim), _heads(attn.k_proj(x), attn.head_dim)
    logits = torch.matmul(q, k.transpose(2, 3)) * attn.scaling
    if mask is None:
        return logits
    if mask.dtype == torch.bool:  # a padding mask: True = attend
        mask = torch.zeros_like(mask, dtype=logits.dtype).masked_fill(~mask, -math.inf)
    return logits + mask


def data2vec_logits(attn: nn.Module, args: tuple, kwargs: dict) -> Tensor:
    """Logits ``(B, heads, N, N)`` of a ``Data2VecVisionSelfAttention`` call:
    ``q kᵀ / sqrt(d)`` + its own relative position bias at the call's ``resolution`` + the
    shared bias passed as ``relative_position_bias``."""
    a = _arguments(attn, args, kwargs)
    x, d = a["hidden_states"], attn.attention_head_size
    q, k = _heads(attn.query(x), d), _heads(attn.key(x), d)
    logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
    if attn.has_relative_position_bias:
        height, width = a["resolution"]
        window = (height // attn.config.patch_size, width // attn.config.patch_size)
        logits = logits + attn.relative_position_bias(
            window, a["interpolate_pos_encoding"], dim_size=x.shape[1]
        )
    if a["relative_position_bias"] is not None:
        logits = logits + a["relative_position_bias"]
    return logits


class HFBeitAdapter(InsertedTokenBiasMixin, HFHeadMixin, BackboneAdapter):
    """HF BEiT / Data2Vec-vision. LoRA targets the attention only (q, k, v and the output
    projection: ``q_proj k_proj v_proj o_proj`` in BEiT, ``attention.query attention.key
    attention.value attention.output.dense`` in Data2Vec, whose MLP linears
    ``intermediate.dense`` / ``output.dense`` are not matched), like the HF ViT family."""

    family = "vit"
    default_mean_std = BEIT_MEAN_STD

    def __init__(self, model: nn.Module, name: str = "", data_config: dict | None = None):
        if not is_hf_beit(model):
            raise UnsupportedFamilyError(f"{type(model).__name__} is not an HF BEiT/Data2Vec model")
        super().__init__(model, name, data_config)
        #: transformers-5 attention layout (``BeitAttention.q_proj``) vs Data2Vec's 4.x layout
        self._v5 = hasattr(self.blocks[0].attention, "q_proj")

    # forward
    def tokens(self, x: Tensor) -> Tensor:
        """Final tokens ``(B, 1 + N, D)`` (after ``layernorm``, an identity with mean pooling).

        Both embeddings interpolate the absolute position embeddings to any size by themselves
        and the bias follows ``resolution``, so the model's default call fits every size."""
        self.check_input(x)
        return self.base(pixel_values=x).last_hidden_state

    def pool(self, tokens: Tensor) -> Tensor:
        """``(B, D)``: the model's pooler (layernorm of the patch-token mean, or the CLS token);
        a model built without one (``Data2VecVisionModel`` default) pools as its config says,
        the mean of the patch tokens (no norm) or the CLS token."""
        pooler = getattr(self.base, "pooler", None)
        if pooler is not None:
            return pooler(tokens)
        return tokens[:, 1:].mean(dim=1) if self.config.use_mean_pooling else tokens[:, 0]

    # structure
    @property
    def num_features(self) -> int:
        return int(self.config.hidden_size)

    @property
    def embed_dim(self) -> int:
        return int(self.config.hidden_size)

    @property
    def blocks(self) -> list[nn.Module]:
        return list(find_layer_list(self.base))

    @property
    def input_module(self) -> nn.Module:
        return self.base.embeddings

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.blocks[-1].layernorm_before

    @property
    def lora_targets(self) -> list[str]:
        if self._v5:
            return ["q_proj", "k_proj", "v_proj", "o_proj"]
        return ["attention.query", "attention.key", "attention.value", "attention.output.dense"]

    @property
    def ssf_targets(self) -> list[str]:
        m = self.model
        return (
            submodule_names(m, [self.base], ["embeddings.patch_embeddings"])
            + submodule_names(m, self.blocks, HF_SSF_BLOCK_PARTS)
            + submodule_names(m, [self.base], ["layernorm", "pooler.layernorm"])
        )

    # geometry
    @property
    def patch_size(self) -> tuple[int, int]:
        return to_tuple2(self.config.patch_size)

    def prefix_layout(self) -> TokenLayout:
        return TokenLayout(cls=1)

    @property
    def heads_per_block(self) -> list[int]:
        return [int(self.config.num_attention_heads)] * len(self.blocks)

    # attention
    def attention_sites(self) -> list[AttentionSite]:
        # ``modules``: the q and k projections the logits depend on (not hooked: the logits
        # are recomputed from the owner's call arguments; their parameters get the gradients)
        sites: list[AttentionSite] = []
        for block in self.blocks:
            owner = block.attention if self._v5 else block.attention.attention
            compute = beit_logits if self._v5 else data2vec_logits
            qk = [owner.q_proj, owner.k_proj] if self._v5 else [owner.query, owner.key]
            sites.append(
                RecomputedSite(
                    modules=qk,
                    scale=float(getattr(owner, "scaling", 1.0)),
                    owner=owner,
                    compute=lambda args, kwargs, o=owner, f=compute: f(o, args, kwargs),
                    # v5: one SDPA call with the bias as its additive mask, which a reduced
                    # capture computes itself (the attention is computed once)
                    sdpa_owner=owner if self._v5 else None,
                )
            )
        return sites

    def _bias_modules(self) -> list[nn.Module]:
        shared = [getattr(self.base, "shared_position_bias", None)]  # BEiT
        shared.append(getattr(getattr(self.base, "encoder", None), "relative_position_bias", None))
        owners = [b if self._v5 else b.attention.attention for b in self.blocks]
        own = [getattr(o, "relative_position_bias", None) for o in owners]
        return [m for m in [*shared, *own] if isinstance(m, nn.Module)]


# ----------------------------------------------------------------------------- tiny models
TINY_CONFIG = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "layer_scale_init_value": 0.1,
}


def randomise_bias_tables(model: nn.Module, std: float = 0.5) -> nn.Module:
    """Draw the relative position bias tables and timm's q/v biases (zeros at init), so that
    tests see them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("relative_position_bias_table", "q_bias", "v_bias")):
                p.normal_(0.0, std)
    return model


@register_tiny("hf-beit")
def _tiny_hf_beit(num_classes: int) -> nn.Module:
    """BEiT with a per-layer relative position bias, mean pooling, layer scale."""
    from transformers import BeitConfig, BeitForImageClassification, BeitModel

    config = BeitConfig(**TINY_CONFIG, use_relative_position_bias=True, use_mean_pooling=True,
                        num_labels=max(num_classes, 1))  # fmt: skip
    model = BeitForImageClassification(config) if num_classes else BeitModel(config)
    return randomise_bias_tables(model)


@register_tiny("hf-data2vec-vision")
def _tiny_hf_data2vec(num_classes: int) -> nn.Module:
    """Data2Vec-vision with per-layer AND shared relative position bias, absolute position
    embeddings, mean pooling. Built with eager attention: its attention class is chosen when
    built (setting ``_attn_implementation`` later changes nothing), and tests read the
    model's own softmax (``output_attentions``) as the reference."""
    from transformers import (
        Data2VecVisionConfig,
        Data2VecVisionForImageClassification,
        Data2VecVisionModel,
    )

    config = Data2VecVisionConfig(
        **TINY_CONFIG, use_relative_position_bias=True, use_shared_relative_position_bias=True,
        use_absolute_position_embeddings=True, num_labels=max(num_classes, 1),
    )  # fmt: skip
    config._attn_implementation = "eager"
    cls = Data2VecVisionForImageClassification if num_classes else Data2VecVisionModel
    return randomise_bias_tables(cls(config))


register_family(
    FamilyEntry(
        "HF BEiT/Data2Vec-vision",
        is_hf_beit,
        HFBeitAdapter,
        examples=("hf:microsoft/beit-base-patch16-224", "hf:facebook/data2vec-vision-base-ft1k"),
        tiny=("hf-beit", "hf-data2vec-vision"),
        cls_row="cls token",
        priority=30,
    )
)
