"""The attention-enhancement loss as tensor functions (Wang, Jie, Deng, "Focus Your Attention
when Few-Shot Classification", NeurIPS 2023, eq. 6; ``docs/concepts/loss.md``).

Loss = CE(head(f(x)), y) + α · ce_attn. ``ce_attn`` pulls the model's attention onto the position
prompts of the support images: the pre-softmax attention logits of the chosen layers, averaged
over heads, restricted to patch keys and divided by τ, are turned into a distribution over the
patch keys by a log-softmax; every chosen query row is scored against the image's target ``t``
by ``−Σ t · log p``; rows and images are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from focusvit.errors import ConfigError

QueryRows = Literal["all", "cls"]

#: targets of one support batch: ``(M, N)`` (columnar ViT) or per stage ``(M, windows, n)`` (Swin)
Targets = Tensor | list[Tensor]


def cross_entropy_rows(logits: Tensor, targets: Tensor, tau: float) -> Tensor:
    """``−Σ_k t_k log softmax(logits/τ)_k`` per row.

    Args:
        logits: ``(..., R, K)`` attention logits of R query rows over K keys.
        targets: ``(..., K)`` target weights, the same for every row.
        tau: temperature τ.

    Returns:
        ``(..., R)`` per-row cross-entropies.
    """
    log_p = torch.log_softmax(logits / tau, dim=-1)
    return -(targets.unsqueeze(-2) * log_p).sum(dim=-1)


def unit_targets(targets: Targets) -> Targets:
    """Targets normalised to sum to 1 per image (per window for Swin), for
    ``FortConfig(target_sum="one")``; shapes as given (``(M, N)`` or per stage
    ``(M, windows, n)``)."""
    if isinstance(targets, list):
        return [t / t.sum(-1, keepdim=True).clamp_min(1e-12) for t in targets]
    return targets / targets.sum(-1, keepdim=True).clamp_min(1e-12)


def vit_attention_loss(
    attention_logits: Sequence[Tensor],
    targets: Tensor,
    num_prefix_tokens: int,
    tau: float = 1.0,
    query_rows: QueryRows = "all",
    extra_tokens: int = 0,
    has_cls: bool = True,
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
        has_cls: False for models without a CLS token (SigLIP, global-pool ViTs): their "CLS
            row" is the mean of the patch query rows' (head-fused) logits, so ``"all"`` scores
            the patch rows alone and ``"cls"`` that mean row.

    Returns:
        scalar: mean over layers of the mean over rows and images.
    """
    start = num_prefix_tokens + extra_tokens
    losses = []
    for logits in attention_logits:
        if logits.ndim != 4 or logits.shape[-1] - start != targets.shape[-1]:
            raise ConfigError(
                f"attention logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)} "
                f"with {num_prefix_tokens} prefix and {extra_tokens} extra tokens; compute the "
                "prompts at the same input size as the images"
            )
        fused = logits.mean(dim=1)  # (B, T, T)
        patch_keys = fused[:, :, start:]
        patch_rows = patch_keys[:, start:]
        cls_row = patch_keys[:, :1] if has_cls else patch_rows.mean(dim=1, keepdim=True)
        if query_rows == "cls":
            rows = cls_row
        else:
            rows = torch.cat([cls_row, patch_rows], dim=1) if has_cls else patch_rows
        losses.append(cross_entropy_rows(rows, targets.to(rows.dtype), tau).mean())
    return torch.stack(losses).mean()


def swin_attention_loss(
    window_logits: Sequence[Tensor], window_targets: Sequence[Tensor], tau: float = 1.0
) -> Tensor:
    """Attention-enhancement loss for Swin: per window, summed over stages.

    Args:
        window_logits: per stage ``(B, windows, heads, n, n)`` logits of the block the targets
            were made for (the last block of the stage); the official loss reads them with the
            shifted-window mask (``capture_attention(..., shift_mask=True)``, what the trainer
            does unless ``FortConfig(shift_mask=False)``).
        window_targets: per stage ``(B, windows, n)`` binary top-P per window.

    Returns:
        scalar: Σ over stages of the mean over query rows, windows and images.
    """
    if len(window_logits) != len(window_targets):
        raise ConfigError(
            f"{len(window_logits)} stages of logits but {len(window_targets)} of targets"
        )
    total = window_logits[0].new_zeros(())
    for logits, targets in zip(window_logits, window_targets, strict=True):
        if logits.shape[:2] != targets.shape[:2] or logits.shape[-1] != targets.shape[-1]:
            raise ConfigError(
                f"window logits {tuple(logits.shape)} do not match window targets {tuple(targets.shape)}"
            )
        fused = logits.mean(dim=2)  # (B, windows, n, n)
        total = total + cross_entropy_rows(fused, targets.to(fused.dtype), tau).mean()
    return total
