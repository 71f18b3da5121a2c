"""Adapter for timm's columnar vision transformers (ViT, DeiT incl. distilled, DINO, DINOv2 with
register tokens): ``timm.models.vision_transformer.VisionTransformer`` and subclasses."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from focusvit.errors import (
    InputSizeError,
    UnsupportedFamilyError,
    UnsupportedMethodError,
)

from .base import (
    AttentionSite,
    BackboneAdapter,
    TokenLayout,
    check_num_classes,
    split_heads,
    submodule_names,
    to_tuple2,
)
from .registry import FamilyEntry, register_family


def is_timm_vit(model: nn.Module) -> bool:
    return (
        hasattr(model, "blocks")
        and hasattr(model, "patch_embed")
        and hasattr(model, "num_prefix_tokens")
        and hasattr(model, "forward_features")
        and all(hasattr(b, "attn") for b in model.blocks)
    )


class TimmHeadMixin:
    """Head slot of timm models (ViT, Swin, CNN) through timm's own ``reset_classifier``.

    A model loaded with ``num_classes=0`` has an ``nn.Identity`` head; ``reset_classifier(K)``
    builds timm's head layout for K classes (and keeps ``model.num_classes`` right) before the
    given head is put in place, exactly as ``fit_task`` did it before the adapter owned it (so
    the global RNG stream, and with it seeded runs, are unchanged).
    """

    model: nn.Module
    name: str

    def _attach_head(self, head: nn.Module) -> None:
        reset = getattr(self.model, "reset_classifier", None)
        out_features = getattr(head, "out_features", None)
        if not callable(reset) or not isinstance(out_features, int):
            raise UnsupportedMethodError(
                f"{self.name} has no classification head slot for a "
                f"{type(head).__name__}; load it with load_backbone(spec, num_classes=K), or "
                "pass an nn.Linear head"
            )
        reset(out_features)
        self.set_head(head)  # type: ignore[attr-defined]

    def _detach_head(self) -> None:
        reset = getattr(self.model, "reset_classifier", None)
        if callable(reset):
            reset(0)
        else:
            self.set_head(nn.Identity())  # type: ignore[attr-defined]

    def reset_head(self, num_classes: int) -> None:
        """A fresh head with ``num_classes`` outputs from timm's ``reset_classifier`` (0: none)."""
        check_num_classes(num_classes)
        reset = getattr(self.model, "reset_classifier", None)
        if callable(reset):
            reset(num_classes)
        else:
            BackboneAdapter.reset_head(self, num_classes)  # type: ignore[arg-type]


class TimmViTAdapter(TimmHeadMixin, BackboneAdapter):
    """timm ViT family. Captured attention logits are recomputed from each block's fused ``qkv``
    projection; full probability maps (no ``reduce``) are read from the eager path of the
    captured blocks; reduced probability maps come from the capture computing the block's
    ``scaled_dot_product_attention`` call itself, chunk by chunk (``AttentionSite.sdpa_owner``)."""

    family = "vit"

    def __init__(self, model: nn.Module, name: str = "", data_config: dict | None = None):
        if not is_timm_vit(model):
            raise UnsupportedFamilyError(f"{type(model).__name__} is not a timm ViT")
        super().__init__(model, name, data_config)
        # DeiT distilled: the pretrained (head, head_dist) pair, so set_head can restore it
        self._head_pairs: dict[int, tuple[nn.Module, nn.Module]] = {}
        if getattr(model, "head_dist", None) is not None:
            self._head_pairs[id(model.head)] = (model.head, model.head_dist)

    def set_head(self, head: nn.Module) -> None:
        """Replace the head. DeiT distilled models average ``head(cls)`` and
        ``head_dist(dist)``; a new head is used for both tokens (so the logits are
        ``head((cls + dist) / 2)``, the head applied to the pooled feature), and putting the
        pretrained head back restores the pretrained distillation head with it."""
        super().set_head(head)
        if getattr(self.model, "head_dist", None) is None:
            return
        pair = self._head_pairs.get(id(head))
        self.model.head_dist = pair[1] if pair is not None and pair[0] is head else head

    # forward
    def tokens(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.model.forward_features(x)

    def pool(self, tokens: Tensor) -> Tensor:
        return self.model.forward_head(tokens, pre_logits=True)

    def head_from_tokens(self, tokens: Tensor) -> Tensor:
        return self.model.forward_head(tokens)

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if not getattr(self.model, "dynamic_img_size", False):
            expected = tuple(self.model.patch_embed.img_size)
            if tuple(x.shape[-2:]) != expected:
                raise InputSizeError(
                    f"{self.name} was built for {expected[0]}x{expected[1]} inputs and got "
                    f"{x.shape[-2]}x{x.shape[-1]}; load it with load_backbone (which enables "
                    "dynamic_img_size) or timm.create_model(..., dynamic_img_size=True)"
                )

    # structure
    @property
    def head_name(self) -> str:
        return "head" if isinstance(getattr(self.model, "head", None), nn.Linear) else ""

    @property
    def num_features(self) -> int:
        return int(self.model.num_features)

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    @property
    def input_module(self) -> nn.Module:
        return self.model.patch_embed

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.model.blocks[-1].norm1

    @property
    def lora_targets(self) -> list[str]:
        return ["qkv", "proj"]

    SSF_BLOCK_PARTS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")

    @property
    def ssf_targets(self) -> list[str]:
        # ``patch_embed`` itself (not ``patch_embed.proj``): its output is the token tensor
        # (B, N, D) or (B, h, w, D) after flattening and the optional norm.
        m = self.model
        return (
            submodule_names(m, [m], ["patch_embed"])
            + submodule_names(m, self.blocks, self.SSF_BLOCK_PARTS)
            + submodule_names(m, [m], ["norm", "fc_norm"])
        )

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    # geometry
    @property
    def patch_size(self) -> tuple[int, int]:
        return to_tuple2(self.model.patch_embed.patch_size)

    def prefix_layout(self) -> TokenLayout:
        m = self.model
        layout = TokenLayout(
            cls=int(getattr(m, "cls_token", None) is not None),
            distillation=int(getattr(m, "dist_token", None) is not None),
            registers=int(getattr(m, "num_reg_tokens", 0) or 0),
        )
        if layout.num_prefix != int(m.num_prefix_tokens):  # a layout this file does not know
            return TokenLayout(cls=1, registers=int(m.num_prefix_tokens) - 1)
        return layout

    @property
    def heads_per_block(self) -> list[int]:
        return [int(block.attn.num_heads) for block in self.model.blocks]

    # attention
    def attention_sites(self) -> list[AttentionSite]:
        return [self._site(block.attn) for block in self.model.blocks]

    @staticmethod
    def _site(attn: nn.Module) -> AttentionSite:
        if not hasattr(attn, "qkv"):
            raise UnsupportedFamilyError(
                f"timm attention {type(attn).__name__} has no fused qkv projection; "
                "focusvit supports timm ViT blocks built on timm.layers.Attention"
            )
        heads = attn.num_heads

        def split(outputs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
            qkv = outputs[0]
            dim = qkv.shape[-1] // 3
            q = split_heads(qkv[..., :dim], heads)
            k = split_heads(qkv[..., dim : 2 * dim], heads)
            return attn.q_norm(q), attn.k_norm(k)

        eager = hasattr(attn, "fused_attn") and isinstance(
            getattr(attn, "attn_drop", None), nn.Module
        )
        return AttentionSite(
            modules=[attn.qkv],
            split=split,
            scale=float(attn.scale),
            eager_owner=attn if eager else None,
            probs_module=attn.attn_drop if eager else None,
            sdpa_owner=attn,
        )


register_family(
    FamilyEntry(
        "timm ViT/DeiT/DINO/DINOv2",
        is_timm_vit,
        TimmViTAdapter,
        examples=(
            "timm:vit_base_patch16_224.dino",
            "timm:vit_small_patch14_dinov2.lvd142m",
            "timm:vit_base_patch16_clip_224.openai",
            "timm:deit_base_distilled_patch16_224",
        ),
        tiny=("timm-vit", "timm-vit-reg", "timm-deit-distilled"),
        cls_row="cls token (mean of patch query rows for global-pool ViTs)",
        priority=10,
    )
)
