"""What the Swin families share: the windowed pyramid geometry and the shifted-window masks of
the attention capture (docs: docs/families.md). Swin, Swin V2 and Swin V2-Cr families (timm and
Hugging Face) each keep their own file and mix :class:`SwinAdapterMixin` in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial

from torch import Tensor, nn

from focusvit.errors import InputSizeError

from .capture import AttentionKind, AttentionRecord, AttentionReducer, AttentionSite
from .geometry import WindowGeometry


class SwinAdapterMixin:
    """Geometry shared by the timm and HF Swin adapters (hierarchical, windowed).

    Attributes:
        window_partition_order: how a shifted block builds its windows when the stage grid is
            not a multiple of the window: ``"roll_then_pad"`` (timm: roll the ``H × W`` grid by
            ``-shift``, then pad bottom/right) or ``"pad_then_roll"`` (Hugging Face: pad first,
            then roll the padded grid). Read by ``focusvit.prompting.swin``.
    """

    family = "swin"
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
        """``sites`` with their ``window_mask`` set while a ``shift_mask=True`` capture starts
        (the mask the block passed to its attention module in the current forward)."""
        masks = self._shift_masks
        if masks is None:
            return sites
        return [
            dataclasses.replace(site, window_mask=partial(masks.get, index))
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
