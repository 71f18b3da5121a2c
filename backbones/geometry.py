"""Token geometry of the backbone adapters: which tokens a model's sequence holds and where
its patches sit (docs: docs/families.md).

A columnar ViT's sequence is ``[prefix | inserted | patches]``: the prefix is the model's own
CLS, distillation and register tokens (:class:`TokenLayout`), the inserted tokens belong to a
tuner (VPT prompts), and the patch grid follows the actual input size (any aspect ratio).
Pyramid models (Swin) have a window layout per block instead (:class:`WindowGeometry`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from focusvit.checks import is_whole_number
from focusvit.errors import ConfigError


@dataclass(frozen=True)
class TokenLayout:
    """The prefix of a columnar ViT's token sequence and the tokens a tuner inserted after it.

    Layout inside the blocks::

        [ CLS (0|1) | distillation (0|1) | registers (R) | inserted (T) | patches (N) ]

    Attributes:
        cls: 1 when the model has a CLS token (always the first token), else 0 (SigLIP,
            global-average-pooled ViTs: their "CLS row" is the mean of the patch query rows).
        distillation: 1 for DeiT's distillation token, else 0.
        registers: R register tokens (DINOv2/DINOv3 with registers).
        inserted: T tokens a tuner inserted after the prefix inside the blocks (VPT prompts).
        refreshed: True when every block receives fresh inserted tokens (deep VPT).
    """

    cls: int = 1
    distillation: int = 0
    registers: int = 0
    inserted: int = 0
    refreshed: bool = False

    def __post_init__(self) -> None:
        for name in ("cls", "distillation", "registers", "inserted"):
            value = getattr(self, name)
            if not is_whole_number(value, 0):
                raise ConfigError(f"TokenLayout.{name} must be an int >= 0, got {value!r}")
        if self.cls > 1 or self.distillation > 1:
            raise ConfigError("TokenLayout: at most one CLS and one distillation token")

    @property
    def has_cls(self) -> bool:
        """True when row/column 0 is a CLS token."""
        return self.cls == 1

    @property
    def num_prefix(self) -> int:
        """P = CLS + distillation + registers: the model's own tokens before the patches."""
        return self.cls + self.distillation + self.registers

    @property
    def patch_start(self) -> int:
        """P + T: index of the first patch token inside the blocks."""
        return self.num_prefix + self.inserted

    @property
    def cls_row(self) -> str:
        """What the "CLS row" of rollout, raw attention and the loss is for this layout:
        ``"cls token"`` or ``"mean of patch query rows"``."""
        return "cls token" if self.has_cls else "mean of patch query rows"


@dataclass(frozen=True)
class TokenGeometry:
    """Token layout of a columnar ViT for one input size.

    Two layouts exist while a tuner has inserted tokens (VPT prompts)::

        final tokens (adapter.tokens, pooling, head):       [ prefix (P) | patches (N) ]
        inside the blocks (block inputs, captured attention,
        outputs of block sub-modules such as gradcam_layer): [ prefix (P) | inserted (T) | patches (N) ]

    Attributes:
        num_prefix_tokens: P, the model's own CLS + register + distillation tokens.
        grid: patch grid ``(h, w)`` for the input size.
        patch_size: ``(ph, pw)`` in pixels.
        num_inserted_tokens: T, tokens a tuner inserted after the prefix inside the blocks
            (0 without such a tuner).
    """

    num_prefix_tokens: int
    grid: tuple[int, int]
    patch_size: tuple[int, int]
    num_inserted_tokens: int = 0

    @property
    def num_patches(self) -> int:
        """N = h · w."""
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        """P + N: tokens of the final (normalised) token sequence."""
        return self.num_prefix_tokens + self.num_patches

    @property
    def num_tokens_before_patches(self) -> int:
        """P + T: index of the first patch token inside the blocks."""
        return self.num_prefix_tokens + self.num_inserted_tokens

    @property
    def num_block_tokens(self) -> int:
        """P + T + N: tokens inside the blocks (the side of captured attention maps)."""
        return self.num_tokens_before_patches + self.num_patches


@dataclass(frozen=True)
class WindowGeometry:
    """Window layout of one Swin block for one input size.

    Attributes:
        grid: token grid ``(H, W)`` of the stage (before padding).
        window: window size ``(wh, ww)``.
        shift: cyclic shift ``(sh, sw)`` applied before partitioning (0 for W-MSA blocks).
        stage: index of the stage the block belongs to.
    """

    grid: tuple[int, int]
    window: tuple[int, int]
    shift: tuple[int, int]
    stage: int

    @property
    def padded_grid(self) -> tuple[int, int]:
        return (
            math.ceil(self.grid[0] / self.window[0]) * self.window[0],
            math.ceil(self.grid[1] / self.window[1]) * self.window[1],
        )

    @property
    def num_windows(self) -> int:
        ph, pw = self.padded_grid
        return (ph // self.window[0]) * (pw // self.window[1])


def nearest_fitting_size(size: tuple[int, int], multiple: tuple[int, int]) -> tuple[int, int]:
    """The ``(H, W)`` nearest to ``size`` whose sides are positive multiples of ``multiple``
    (the suggestion of an input-size error)."""
    return (
        max(multiple[0], round(size[0] / multiple[0]) * multiple[0]),
        max(multiple[1], round(size[1] / multiple[1]) * multiple[1]),
    )


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(B, N, heads*d)`` -> ``(B, heads, N, d)``."""
    b, n, _ = x.shape
    return x.reshape(b, n, num_heads, -1).transpose(1, 2)


def to_tuple2(value: int | Sequence[int]) -> tuple[int, int]:
    """An int or a pair as an ``(int, int)`` pair."""
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))
