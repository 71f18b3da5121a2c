"""Per-window position prompts for Swin (pyramid) backbones (docs/concepts/prompts.md).

Patch positions do not survive Swin's patch merging, so rollout does not apply. FORT's official
code (Wang, Jie, Deng, NeurIPS 2023) uses instead, for every stage, the LAST block's attention
logits averaged over heads and over the query tokens of each window: a score per key token of
the window. The binary top-P per window (P = 7 of 49) is the target at every stage. No gradient.

Targets stay in the block's own window layout ``(B, windows, n)``: the layout the
attention-enhancement loss reads from ``capture_attention(kind="logits")``. :func:`windows_to_grid`
maps window-layout values back onto the stage's token grid ``(B, H_s, W_s)``, undoing window
partition, padding and the cyclic shift.

Window layout. A block with grid ``(H, W)``, window ``(wh, ww)`` and shift ``(sh, sw)`` forms
windows from the grid rolled by ``-shift`` and zero-padded at the bottom/right to multiples of
the window. Window ``k = i · (Wp / ww) + j`` holds rows ``i·wh ..`` and columns ``j·ww ..`` of
that padded grid, its tokens in row-major order. The two libraries differ in one detail when the
grid is not a multiple of the window: timm rolls the ``H × W`` grid and then pads
(``"roll_then_pad"``); Hugging Face pads first and rolls the padded grid (``"pad_then_roll"``).
:func:`partition_order` picks the one of a backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from focusvit.backbones import BackboneAdapter, UnsupportedMethodError, WindowGeometry
from focusvit.errors import ConfigError

from .prompts import prompt_count

#: FORT's official per-window prompt size on Swin: 7 of the 49 tokens of a 7x7 window
WINDOW_TOP_K = 7

PartitionOrder = Literal["roll_then_pad", "pad_then_roll"]
ORDERS = ("roll_then_pad", "pad_then_roll")


@dataclass(frozen=True)
class SwinStagePrompt:
    """Prompt of one Swin stage.

    Attributes:
        stage: stage index.
        block: index (in ``backbone.blocks``) of the stage's last block, whose attention the
            scores come from and the loss should read.
        geometry: that block's :class:`~focusvit.backbones.WindowGeometry`.
        order: window partition order of the backbone (see module docstring).
        scores: ``(B, windows, n)`` per-window key scores (mean logits over heads and queries).
        targets: ``(B, windows, n)`` float, binary top-P per window (padding never chosen).
        grid_scores: ``(B, H_s, W_s)`` the scores mapped back onto the stage's token grid.
        grid_mask: ``(B, H_s, W_s)`` bool, the targets mapped back onto the grid.
    """

    stage: int
    block: int
    geometry: WindowGeometry
    order: str
    scores: Tensor
    targets: Tensor
    grid_scores: Tensor
    grid_mask: Tensor


@dataclass(frozen=True)
class SwinWindowPrompt:
    """Per-window position prompts of every stage of a Swin backbone.

    Attributes:
        stages: one :class:`SwinStagePrompt` per stage, in stage order.
        top_k: number of tokens chosen per window.
        image_size: ``(H, W)`` of the input batch.
        method: name of the scoring rule.
    """

    stages: tuple[SwinStagePrompt, ...]
    top_k: int
    image_size: tuple[int, int]
    method: str = "swin-window-logits"

    @property
    def blocks(self) -> list[int]:
        """Block index of every stage prompt."""
        return [stage.block for stage in self.stages]

    @property
    def targets(self) -> list[Tensor]:
        """Window-layout targets ``(B, windows, n)`` of every stage."""
        return [stage.targets for stage in self.stages]

    def __len__(self) -> int:
        return int(self.stages[0].targets.shape[0]) if self.stages else 0


# ----------------------------------------------------------------------------- window layout
def _check_order(order: str) -> None:
    if order not in ORDERS:
        raise ConfigError(f"order must be one of {ORDERS}, got {order!r}")


def partition_order(backbone: BackboneAdapter) -> PartitionOrder:
    """Window partition order of a Swin adapter, as it declares it in its
    ``window_partition_order`` attribute (HF pads before the shift, timm after).

    Raises:
        UnsupportedMethodError: the adapter declares no order (not a Swin adapter).
        ValueError: the declared order is not one of :data:`ORDERS`.
    """
    declared = getattr(backbone, "window_partition_order", None)
    if declared is None:
        raise UnsupportedMethodError(
            f"{getattr(backbone, 'name', type(backbone).__name__)} declares no "
            f"window_partition_order; Swin adapters set it to one of {ORDERS}"
        )
    _check_order(declared)
    return declared


def _pad_amounts(geometry: WindowGeometry) -> tuple[int, int]:
    (height, width), (ph, pw) = geometry.grid, geometry.padded_grid
    return ph - height, pw - width


def grid_to_windows(
    grid: Tensor, geometry: WindowGeometry, order: PartitionOrder = "roll_then_pad"
) -> Tensor:
    """Partition a stage grid into the windows a block attends over.

    Args:
        grid: ``(B, H, W, *rest)`` values on the stage's token grid.
        geometry: the block's window geometry.
        order: ``"roll_then_pad"`` (timm) or ``"pad_then_roll"`` (Hugging Face).

    Returns:
        ``(B, windows, n, *rest)``, padded positions filled with 0.
    """
    _check_order(order)
    if grid.ndim < 3 or tuple(grid.shape[1:3]) != tuple(geometry.grid):
        raise ConfigError(
            f"grid must have shape (B, {geometry.grid[0]}, {geometry.grid[1]}, ...) for this "
            f"geometry, got {tuple(grid.shape)}"
        )
    shift = tuple(-s for s in geometry.shift)
    pad_h, pad_w = _pad_amounts(geometry)
    rest = grid.shape[3:]
    x = grid.reshape(*grid.shape[:3], -1)
    if order == "roll_then_pad" and any(shift):
        x = torch.roll(x, shifts=shift, dims=(1, 2))
    x = torch.nn.functional.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    if order == "pad_then_roll" and any(shift):
        x = torch.roll(x, shifts=shift, dims=(1, 2))
    (wh, ww), (ph, pw) = geometry.window, geometry.padded_grid
    batch, channels = x.shape[0], x.shape[-1]
    x = x.view(batch, ph // wh, wh, pw // ww, ww, channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, geometry.num_windows, wh * ww, *rest)


def windows_to_grid(
    windows: Tensor, geometry: WindowGeometry, order: PartitionOrder = "roll_then_pad"
) -> Tensor:
    """Inverse of :func:`grid_to_windows`: window layout back onto the stage's token grid.

    Args:
        windows: ``(B, windows, n, *rest)`` in the block's window layout.
        geometry: the block's window geometry.
        order: ``"roll_then_pad"`` (timm) or ``"pad_then_roll"`` (Hugging Face).

    Returns:
        ``(B, H, W, *rest)``: window partition, padding and cyclic shift undone.
    """
    _check_order(order)
    (wh, ww), (ph, pw) = geometry.window, geometry.padded_grid
    expected = (geometry.num_windows, wh * ww)
    if windows.ndim < 3 or tuple(windows.shape[1:3]) != expected:
        raise ConfigError(
            f"windows must have shape (B, {expected[0]}, {expected[1]}, ...) (B, windows, "
            f"tokens per window) for geometry {geometry}, got {tuple(windows.shape)}"
        )
    height, width = geometry.grid
    rest = windows.shape[3:]
    batch = windows.shape[0]
    x = windows.reshape(batch, ph // wh, pw // ww, wh, ww, -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(batch, ph, pw, -1)
    shift = tuple(geometry.shift)
    if order == "pad_then_roll" and any(shift):
        x = torch.roll(x, shifts=shift, dims=(1, 2))
    x = x[:, :height, :width]
    if order == "roll_then_pad" and any(shift):
        x = torch.roll(x, shifts=shift, dims=(1, 2))
    return x.reshape(batch, height, width, *rest)


def window_valid_mask(geometry: WindowGeometry, order: PartitionOrder = "roll_then_pad") -> Tensor:
    """``(windows, n)`` bool: True where a window position holds a real token (not padding)."""
    ones = torch.ones(1, *geometry.grid)
    return grid_to_windows(ones, geometry, order)[0] > 0.5


# ----------------------------------------------------------------------------- scores, targets
def window_key_scores(logits: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-window key scores: attention logits averaged over heads and query tokens.

    Args:
        logits: ``(B, windows, heads, n, n)`` (queries, keys) of one Swin block.
        valid: optional ``(windows, n)`` bool; padded queries are left out of the mean.

    Returns:
        ``(B, windows, n)`` score of every key token of every window.
    """
    if logits.ndim != 5 or logits.shape[-1] != logits.shape[-2]:
        raise ConfigError(
            "logits must have the Swin capture layout (B, windows, heads, n, n), got "
            f"{tuple(logits.shape)}; capture them with backbone.capture_attention(kind='logits')"
        )
    per_query = logits.float().mean(dim=2)  # (B, windows, n_q, n_k)
    if valid is None:
        return per_query.mean(dim=2)
    if tuple(valid.shape) != tuple(per_query.shape[1:3]):
        raise ConfigError(
            f"valid must have shape (windows, n) = {tuple(per_query.shape[1:3])}, got "
            f"{tuple(valid.shape)}; build it with window_valid_mask(geometry)"
        )
    weight = valid.to(per_query)[None, :, :, None]
    return (per_query * weight).sum(dim=2) / weight.sum(dim=2).clamp_min(1.0)


def window_top_k(
    scores: Tensor,
    top_k: int | None = None,
    top_fraction: float | None = None,
    valid: Tensor | None = None,
) -> Tensor:
    """Binary top-P per window ``(B, windows, n)`` float.

    Ties go to the lower token index; padded positions (``valid`` False) are never chosen, so a
    window with fewer than P real tokens gets all of them.

    Args:
        scores: ``(B, windows, n)`` per-window scores.
        top_k: tokens P per window (official 7 of 49); or ``top_fraction`` of the window.
        valid: optional ``(windows, n)`` bool mask of real tokens.
    """
    if scores.ndim != 3:
        raise ConfigError(f"scores must have shape (B, windows, n), got {tuple(scores.shape)}")
    count = prompt_count(scores.shape[-1], top_k, top_fraction)
    if valid is not None:
        scores = scores.masked_fill(~valid[None].to(scores.device), float("-inf"))
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :count]
    chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order, True)
    if valid is not None:
        chosen &= valid[None].to(scores.device)
    return chosen.float()


def last_block_of_each_stage(backbone: BackboneAdapter) -> list[int]:
    """Index in ``backbone.blocks`` of the last block of every stage, in stage order."""
    stages = backbone.stage_of_block()
    return [max(i for i, s in enumerate(stages) if s == stage) for stage in sorted(set(stages))]


# ----------------------------------------------------------------------------- entry point
def swin_window_prompts(
    backbone: BackboneAdapter,
    images: Tensor,
    top_k: int | None = None,
    top_fraction: float | None = None,
) -> SwinWindowPrompt:
    """FORT's per-window prompts of a Swin backbone (Wang, Jie, Deng, NeurIPS 2023).

    For each stage, the last block's attention logits (``q kᵀ · scale`` + relative position
    bias, no shift mask) are averaged over heads and over the (real) query tokens of each
    window; the top-P keys of every window are the binary target. Runs under ``torch.no_grad``
    and ``backbone.evaluating()`` (training flags restored, capture hooks removed).

    Args:
        backbone: a Swin adapter (``backbone.family == "swin"``).
        images: ``(B, 3, H, W)`` preprocessed batch, or ``(3, H, W)`` for one image.
        top_k: tokens per window (official and default: 7 of 49).
        top_fraction: instead, a fraction of a window's tokens.

    Returns:
        :class:`SwinWindowPrompt` with one :class:`SwinStagePrompt` per stage.
    """
    if top_k is None and top_fraction is None:
        top_k = WINDOW_TOP_K
    if getattr(backbone, "family", None) != "swin":
        raise UnsupportedMethodError(
            f"swin_window_prompts needs a Swin backbone, got family "
            f"{getattr(backbone, 'family', type(backbone).__name__)!r}; for columnar ViTs use "
            "make_prompts(explain(backbone, images, method=...))"
        )
    if images.ndim == 3:
        images = images[None]
    image_size = (int(images.shape[-2]), int(images.shape[-1]))
    blocks = last_block_of_each_stage(backbone)
    with (
        torch.no_grad(),
        backbone.evaluating(),
        backbone.capture_attention(layers=blocks, kind="logits") as record,
    ):
        backbone.logits(images)
        maps = [m.detach() for m in record]
    geometries = backbone.window_geometry(image_size)  # after the forward (HF clamps windows)
    order = partition_order(backbone)
    stages = tuple(
        _stage_prompt(block, geometries[block], order, logits, top_k, top_fraction)
        for block, logits in zip(blocks, maps, strict=True)
    )
    count = prompt_count(stages[0].scores.shape[-1], top_k, top_fraction)
    return SwinWindowPrompt(stages=stages, top_k=count, image_size=image_size)


def _stage_prompt(
    block: int,
    geometry: WindowGeometry,
    order: PartitionOrder,
    logits: Tensor,
    top_k: int | None,
    top_fraction: float | None,
) -> SwinStagePrompt:
    n = geometry.window[0] * geometry.window[1]
    if logits.shape[1] != geometry.num_windows or logits.shape[-1] != n:
        raise RuntimeError(
            f"block {block} attention {tuple(logits.shape)} does not match its window geometry "
            f"{geometry} ({geometry.num_windows} windows of {n} tokens)"
        )
    valid = window_valid_mask(geometry, order).to(logits.device)
    scores = window_key_scores(logits, valid)
    targets = window_top_k(scores, top_k, top_fraction, valid)
    return SwinStagePrompt(
        stage=geometry.stage,
        block=block,
        geometry=geometry,
        order=order,
        scores=scores,
        targets=targets,
        grid_scores=windows_to_grid(scores, geometry, order),
        grid_mask=windows_to_grid(targets, geometry, order) > 0.5,
    )
