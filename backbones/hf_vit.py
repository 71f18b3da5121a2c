"""Adapter for Hugging Face columnar vision transformers: ViT, DeiT (incl. distillation token),
Dinov2 and Dinov2-with-registers, bare models or ``*ForImageClassification``."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from focusvit.errors import UnsupportedFamilyError, UnsupportedMethodError

from .base import (
    AttentionSite,
    BackboneAdapter,
    TokenLayout,
    split_heads,
    submodule_names,
    to_tuple2,
)
from .registry import FamilyEntry, register_family


def hf_attention_projections(attn: nn.Module) -> tuple[nn.Module, nn.Module, list[str]]:
    """The q and k projections of an HF attention module and the LoRA target names.

    transformers >= 5 names them ``q_proj``/``k_proj``/``v_proj``/``o_proj``; 4.x used
    ``query``/``key``/``value`` and an output ``dense``.
    """
    if hasattr(attn, "q_proj") and hasattr(attn, "k_proj"):
        return attn.q_proj, attn.k_proj, ["q_proj", "k_proj", "v_proj", "o_proj"]
    inner = getattr(attn, "attention", attn)
    if hasattr(inner, "query") and hasattr(inner, "key"):
        return inner.query, inner.key, ["query", "key", "value", "dense"]
    raise UnsupportedFamilyError(
        f"HF attention {type(attn).__name__} exposes neither q_proj/k_proj nor query/key; "
        "upgrade transformers (pip install -U 'transformers>=5') or use a timm model"
    )


def hf_attention_heads(attn: nn.Module) -> tuple[int, float]:
    """Number of heads and the logit scale of an HF attention module."""
    inner = attn if hasattr(attn, "q_proj") else getattr(attn, "attention", attn)
    heads = getattr(inner, "num_attention_heads", None) or getattr(inner, "num_heads", None)
    head_dim = getattr(inner, "head_dim", None) or getattr(inner, "attention_head_size", None)
    scale = getattr(inner, "scaling", None) or head_dim**-0.5
    return int(heads), float(scale)


def qk_site(attn: nn.Module, bias=None) -> AttentionSite:
    """An :class:`AttentionSite` hooking the separate q and k projections of ``attn``."""
    q_proj, k_proj, _ = hf_attention_projections(attn)
    heads, scale = hf_attention_heads(attn)

    def split(outputs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return split_heads(outputs[0], heads), split_heads(outputs[1], heads)

    return AttentionSite(modules=[q_proj, k_proj], split=split, scale=scale, bias=bias)


def find_layer_list(model: nn.Module) -> nn.ModuleList:
    """The encoder's list of transformer layers (``layers`` in v5 ViT, ``encoder.layer`` ...)."""
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and hasattr(module[0], "attention"):
            return module
    raise UnsupportedFamilyError(f"found no transformer layer list in {type(model).__name__}")


# SSF sites inside one HF layer, in execution order; names of transformers 5.x and 4.x are both
# listed (a layer has only one of them). ViT/DeiT call the norms layernorm_before/_after,
# Dinov2 and Swin norm1/norm2 or layernorm_before/_after.
HF_SSF_BLOCK_PARTS = (
    "layernorm_before",
    "norm1",
    "attention.q_proj",
    "attention.k_proj",
    "attention.v_proj",
    "attention.attention.query",
    "attention.attention.key",
    "attention.attention.value",
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.o_proj",
    "attention.output.dense",
    "layernorm_after",
    "norm2",
    "mlp.fc1",
    "mlp.fc2",
    "intermediate.dense",
    "output.dense",
)


class HFHeadMixin:
    """Base model, config and head slot of Hugging Face models; the head slot is the
    ``classifier`` child of ``*ForImageClassification``.

    A bare ``*Model`` (what ``load_backbone("hf:...", num_classes=0)`` loads) has no
    ``classifier``; :meth:`replace_head` adds one as a child module of the model (so the tuners
    see and train it) and :meth:`remove_head` deletes it again. A ``*ForImageClassification``
    model keeps its slot; removing its head puts ``nn.Identity`` there (what transformers builds
    for ``num_labels=0``).
    """

    model: nn.Module
    name: str
    _added_head_slot: bool = False

    @property
    def base(self) -> nn.Module:
        """The bare ``*Model`` inside a ``*ForImageClassification`` (the model itself else)."""
        return _base_model(self.model)

    @property
    def config(self):
        """The Hugging Face config of the model."""
        return self.model.config

    @property
    def head_name(self) -> str:
        """``"classifier"`` while that child is a linear head, else ``""``."""
        head = getattr(self.model, "classifier", None)
        return "classifier" if isinstance(head, nn.Linear) else ""

    def _attach_head(self, head: nn.Module) -> None:
        model = self.model
        if "classifier" in model._modules:  # ForImageClassification with its head removed
            model.classifier = head
        elif hasattr(model, "classifier"):
            raise UnsupportedMethodError(
                f"{self.name}: {type(model).__name__}.classifier is not a module; load the model "
                "with load_backbone(spec, num_classes=K) to get a classification head"
            )
        else:  # bare *Model: add the slot
            model.add_module("classifier", head)
            self._added_head_slot = True

    def _detach_head(self) -> None:
        if self._added_head_slot:
            del self.model._modules["classifier"]
            self._added_head_slot = False
        else:
            self.model.classifier = nn.Identity()


def _base_model(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", model)
    return base if base is not None else model


def is_hf_columnar_vit(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) in HFViTAdapter.MODEL_TYPES


class HFViTAdapter(HFHeadMixin, BackboneAdapter):
    """HF ViT / DeiT / Dinov2 (with registers). Pooling follows the model's own head."""

    family = "vit"
    MODEL_TYPES = ("vit", "deit", "dinov2", "dinov2_with_registers")

    def __init__(self, model: nn.Module, name: str = "", data_config: dict | None = None):
        if not is_hf_columnar_vit(model):
            raise UnsupportedFamilyError(
                f"{type(model).__name__} is not an HF ViT/DeiT/Dinov2 model"
            )
        super().__init__(model, name, data_config)
        base = _base_model(model)
        self._interpolates = (
            "interpolate_pos_encoding" in inspect.signature(base.forward).parameters
        )

    # forward
    def tokens(self, x: Tensor) -> Tensor:
        self.check_input(x)
        kwargs = {"interpolate_pos_encoding": True} if self._interpolates else {}
        return self.base(pixel_values=x, **kwargs).last_hidden_state

    @property
    def _pool_mode(self) -> str:
        if hasattr(self.model, "distillation_classifier"):
            return "cls_dist"
        if self.config.model_type.startswith("dinov2") and self.model is not self.base:
            return "cls_mean"
        return "cls"

    def pool(self, tokens: Tensor) -> Tensor:
        mode = self._pool_mode
        if mode == "cls_mean":
            return torch.cat([tokens[:, 0], tokens[:, self.num_prefix_tokens :].mean(dim=1)], dim=1)
        if mode == "cls_dist":
            return torch.cat([tokens[:, 0], tokens[:, 1]], dim=1)
        return tokens[:, 0]

    def _attach_head(self, head: nn.Module) -> None:
        if self._pool_mode == "cls_dist":
            raise UnsupportedMethodError(
                f"{self.name} (DeiT with distillation head) averages two classifiers over "
                "separate tokens; one head over the pooled features cannot replace them. Load "
                "it as DeiTForImageClassification or DeiTModel instead"
            )
        super()._attach_head(head)

    def head_from_tokens(self, tokens: Tensor) -> Tensor:
        if self._pool_mode == "cls_dist":
            cls_logits = self.model.cls_classifier(tokens[:, 0])
            return (cls_logits + self.model.distillation_classifier(tokens[:, 1])) / 2
        return self.head(self.pool(tokens))

    # structure
    @property
    def num_features(self) -> int:
        width = int(self.config.hidden_size)
        return 2 * width if self._pool_mode in ("cls_mean", "cls_dist") else width

    @property
    def blocks(self) -> list[nn.Module]:
        return list(find_layer_list(self.base))

    @property
    def input_module(self) -> nn.Module:
        return self.base.embeddings

    @property
    def gradcam_layer(self) -> nn.Module:
        last = self.blocks[-1]
        return getattr(last, "layernorm_before", None) or last.norm1

    @property
    def lora_targets(self) -> list[str]:
        return hf_attention_projections(self.blocks[0].attention)[2]

    @property
    def ssf_targets(self) -> list[str]:
        # ``patch_embeddings`` returns the (B, N, D) patch tokens before CLS / position embedding.
        m = self.model
        return (
            submodule_names(m, [self.base], ["embeddings.patch_embeddings"])
            + submodule_names(m, self.blocks, HF_SSF_BLOCK_PARTS)
            + submodule_names(m, [self.base], ["layernorm"])
        )

    @property
    def embed_dim(self) -> int:
        return int(self.config.hidden_size)

    # geometry
    @property
    def patch_size(self) -> tuple[int, int]:
        return to_tuple2(self.config.patch_size)

    def prefix_layout(self) -> TokenLayout:
        embeddings = self.base.embeddings
        registers = getattr(embeddings, "register_tokens", None)
        return TokenLayout(
            cls=1,
            distillation=int(getattr(embeddings, "distillation_token", None) is not None),
            registers=0 if registers is None else int(registers.shape[1]),
        )

    @property
    def heads_per_block(self) -> list[int]:
        return [hf_attention_heads(block.attention)[0] for block in self.blocks]

    # attention
    def attention_sites(self) -> list[AttentionSite]:
        # the "sdpa" attention implementation makes one F.scaled_dot_product_attention call
        # inside ``block.attention`` (the capture computes it itself under ``reduce``)
        return [
            dataclasses.replace(qk_site(block.attention), sdpa_owner=block.attention)
            for block in self.blocks
        ]


register_family(
    FamilyEntry(
        "HF ViT/DeiT/Dinov2",
        is_hf_columnar_vit,
        HFViTAdapter,
        examples=("hf:google/vit-base-patch16-224", "hf:facebook/dinov2-small"),
        tiny=("hf-vit", "hf-dinov2"),
        priority=20,
    )
)
