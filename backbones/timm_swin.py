"""Adapter for timm's Swin Transformer (``timm.models.swin_transformer.SwinTransformer``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, fields
from functools import partial

from torch import Tensor, nn

from focusvit.errors import InputSizeError, UnsupportedFamilyError

from .base import (
    AttentionKind,
    AttentionRecord,
    AttentionReducer,
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


@dataclass
class ShiftMaskedSite(AttentionSite):
    """An :class:`AttentionSite` of a Swin block whose logits also get the block's own
    shifted-window mask.

    Attributes:
        window_mask: returns the ``(windows, n, n)`` mask (0 / -100) the block passed to its
            attention in the current forward, or ``None`` (a block without shift). Windows are
            the fastest-varying part of the ``B' = B · windows`` rows of the logits, as in
            both libraries' window partition.
    """

    window_mask: Callable[[], Tensor | None] | None = None

    def logits(self, outputs: Sequence[Tensor]) -> Tensor:
        logits = super().logits(outputs)
        mask = self.window_mask() if self.window_mask is not None else None
        if mask is None:
            return logits
        windows = mask.shape[0]
        if mask.shape[-2:] != logits.shape[-2:] or logits.shape[0] % windows:
            raise RuntimeError(
                f"shifted-window mask {tuple(mask.shape)} does not fit attention logits "
                f"{tuple(logits.shape)} (expected (windows, n, n) with B * windows rows)"
            )
        masked = logits.reshape(-1, windows, *logits.shape[1:]) + mask.to(logits.dtype)[:, None]
        return masked.reshape(logits.shape)


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
    #: block index -> shift mask of its latest forward, while a ``shift_mask=True`` capture is
    #: being set up (read by :meth:`_with_shift_masks`); ``None`` otherwise
    _shift_masks: dict[int, Tensor | None] | None = None

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

    # ----------------------------------------------------------------- shifted-window masks
    def _attention_module(self, block: nn.Module) -> nn.Module:
        """The module a block calls with its windows and its shift mask."""
        raise NotImplementedError

    @staticmethod
    def _mask_argument(args: tuple, kwargs: dict) -> Tensor | None:
        """The shift mask ``(windows, n, n)`` among the arguments of the attention module."""
        raise NotImplementedError

    @contextmanager
    def capture_attention(
        self,
        layers: int | Sequence[int] | None = None,
        kind: AttentionKind = "probs",
        reduce: AttentionReducer | None = None,
        chunk: int = 4,
        shift_mask: bool = False,
    ) -> Iterator[AttentionRecord]:
        """:meth:`BackboneAdapter.capture_attention` with Swin's shifted-window mask on request.

        ``shift_mask=False`` (default): the logits are ``q kᵀ · scale`` + relative position
        bias, as before. ``shift_mask=True``: the logits of shifted blocks also get the mask
        the block itself passed to its attention module in that forward (0 within a region,
        -100 between tokens that the cyclic shift brought together from different regions;
        padding and the library's partition order included, since it is the model's own
        tensor), as FORT's official loss does. ``softmax`` of those logits is the model's
        attention, and ``kind="probs"`` then returns it. Blocks without shift are unchanged.
        """
        if not shift_mask:
            with super().capture_attention(layers, kind, reduce, chunk) as record:  # type: ignore[misc]
                yield record
            return
        masks: dict[int, Tensor | None] = {}

        def remember(index: int, _module: nn.Module, args: tuple, kwargs: dict) -> None:
            masks[index] = self._mask_argument(args, kwargs)

        blocks = self.blocks
        with ExitStack() as stack:
            for index in dict.fromkeys(self._normalise_layers(layers)):  # type: ignore[attr-defined]
                module = self._attention_module(blocks[index])
                hook = partial(remember, index)
                stack.callback(module.register_forward_pre_hook(hook, with_kwargs=True).remove)
            self._shift_masks = masks  # the sites are built when the capture starts
            try:
                record = stack.enter_context(
                    super().capture_attention(layers, kind, reduce, chunk)  # type: ignore[misc]
                )
            finally:
                self._shift_masks = None
            yield record

    def _with_shift_masks(self, sites: list[AttentionSite]) -> list[AttentionSite]:
        """``sites`` as :class:`ShiftMaskedSite` while a ``shift_mask=True`` capture starts."""
        masks = self._shift_masks
        if masks is None:
            return sites
        return [
            ShiftMaskedSite(
                **{f.name: getattr(site, f.name) for f in fields(site)},
                window_mask=partial(masks.get, index),
            )
            for index, site in enumerate(sites)
        ]

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
    relative position bias; ``capture_attention(..., shift_mask=True)`` adds the block's own
    shifted-window mask (its ``attn_mask`` buffer or the mask it builds per forward with
    ``dynamic_mask``), which FORT's loss uses."""

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
