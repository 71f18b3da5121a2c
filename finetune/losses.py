"""The attention-enhancement loss of FORT (Wang, Jie, Deng, NeurIPS 2023; DESIGN.md section 5).

Loss = CE(head(f(x)), y) + α · ce_attn. ``ce_attn`` pulls the model's attention onto the position
prompts of the support images: the pre-softmax attention logits of the chosen layers, averaged
over heads, restricted to patch keys and divided by τ, are turned into a distribution over the
patch keys by a log-softmax; every chosen query row is scored against the image's target ``t``
by ``−Σ t · log p``; rows and images are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

QueryRows = Literal["all", "cls"]


@dataclass(frozen=True)
class FortConfig:
    """Hyper-parameters of position prompts + attention-enhancement loss (DESIGN.md 4-6).

    Attributes:
        alpha: weight α of the attention loss (0 = the plain baseline).
        tau: temperature τ dividing the attention logits.
        layers: ``"last"``, ``"all"`` or explicit block indices the loss reads (columnar ViTs).
        query_rows: ``"all"`` (CLS and patch rows, official) or ``"cls"``.
        top_p: prompt size: patches (ViT, official 14 of 196) or patches per window (Swin, 7 of 49).
        weighting: ``"importance"`` (official) or ``"multi_hot"`` targets.
        explainer: explainer that scores the support patches (columnar ViTs).
    """

    alpha: float = 0.5
    tau: float = 1.0
    layers: str | tuple[int, ...] = "last"
    query_rows: QueryRows = "all"
    top_p: int | float = 14
    weighting: str = "importance"
    explainer: str = "rollout_svd"

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError(
                f"alpha must be >= 0 (0 disables the attention loss), got {self.alpha}"
            )
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.query_rows not in ("all", "cls"):
            raise ValueError(f"query_rows must be 'all' or 'cls', got {self.query_rows!r}")
        if isinstance(self.layers, str) and self.layers not in ("last", "all"):
            raise ValueError(
                f"layers must be 'last', 'all' or a tuple of block indices, got {self.layers!r}"
            )

    @property
    def enabled(self) -> bool:
        return self.alpha > 0

    def layer_indices(self, num_layers: int) -> list[int]:
        if self.layers == "last":
            return [num_layers - 1]
        if self.layers == "all":
            return list(range(num_layers))
        return [layer % num_layers for layer in self.layers]


def _cross_entropy_rows(logits: Tensor, targets: Tensor, tau: float) -> Tensor:
    """``−Σ_k t_k log softmax(logits/τ)_k`` per row; logits ``(..., R, K)``, targets ``(..., K)``."""
    log_p = torch.log_softmax(logits / tau, dim=-1)
    return -(targets.unsqueeze(-2) * log_p).sum(dim=-1)


def vit_attention_loss(
    attention_logits: Sequence[Tensor],
    targets: Tensor,
    num_prefix_tokens: int,
    tau: float = 1.0,
    query_rows: QueryRows = "all",
    extra_tokens: int = 0,
) -> Tensor:
    """Attention-enhancement loss on columnar ViT layers.

    Args:
        attention_logits: per layer ``(B, heads, T, T)`` pre-softmax logits, tokens ordered
            ``[prefix (P), extra (E, e.g. VPT prompts), patches (N)]``.
        targets: ``(B, N)`` prompt targets over patch tokens (multi-hot or importance-weighted).
        num_prefix_tokens: P (CLS + registers + distillation token); row 0 is the CLS token.
        tau: temperature.
        query_rows: ``"all"``: the CLS row and every patch row; ``"cls"``: the CLS row only.
        extra_tokens: E tokens between prefix and patches that are neither keys nor queries.

    Returns:
        scalar: mean over layers of the mean over rows and images.
    """
    start = num_prefix_tokens + extra_tokens
    losses = []
    for logits in attention_logits:
        if logits.ndim != 4 or logits.shape[-1] - start != targets.shape[-1]:
            raise ValueError(
                f"attention logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)} "
                f"with {num_prefix_tokens} prefix and {extra_tokens} extra tokens; compute the "
                "prompts at the same input size as the images"
            )
        fused = logits.mean(dim=1)  # (B, T, T)
        patch_keys = fused[:, :, start:]
        rows = (
            patch_keys[:, :1]
            if query_rows == "cls"
            else torch.cat([patch_keys[:, :1], patch_keys[:, start:]], dim=1)
        )
        losses.append(_cross_entropy_rows(rows, targets.to(rows.dtype), tau).mean())
    return torch.stack(losses).mean()


def swin_attention_loss(
    window_logits: Sequence[Tensor], window_targets: Sequence[Tensor], tau: float = 1.0
) -> Tensor:
    """Attention-enhancement loss for Swin: per window, summed over stages.

    Args:
        window_logits: per stage ``(B, windows, heads, n, n)`` logits of the block the targets
            were made for (the last block of the stage).
        window_targets: per stage ``(B, windows, n)`` binary top-P per window.

    Returns:
        scalar: Σ over stages of the mean over query rows, windows and images.
    """
    if len(window_logits) != len(window_targets):
        raise ValueError(
            f"{len(window_logits)} stages of logits but {len(window_targets)} of targets"
        )
    total = window_logits[0].new_zeros(())
    for logits, targets in zip(window_logits, window_targets, strict=True):
        if logits.shape[:2] != targets.shape[:2] or logits.shape[-1] != targets.shape[-1]:
            raise ValueError(
                f"window logits {tuple(logits.shape)} do not match window targets {tuple(targets.shape)}"
            )
        fused = logits.mean(dim=2)  # (B, windows, n, n)
        total = total + _cross_entropy_rows(fused, targets.to(fused.dtype), tau).mean()
    return total
