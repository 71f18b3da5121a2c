"""The attention-enhancement loss of FORT (Wang, Jie, Deng, NeurIPS 2023; DESIGN.md section 5).

Loss = CE(head(f(x)), y) + α · ce_attn. ``ce_attn`` pulls the model's attention onto the position
prompts of the support images: the pre-softmax attention logits of the chosen layers, averaged
over heads, restricted to patch keys and divided by τ, are turned into a distribution over the
patch keys by a log-softmax; every chosen query row is scored against the image's target ``t``
by ``−Σ t · log p``; rows and images are averaged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any, Literal

import torch
from torch import Tensor

from focusvit.errors import ConfigError

QueryRows = Literal["all", "cls"]


def _is_number(value: Any) -> bool:
    """True for a real number that is not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool)


#: how the attention-loss targets are scaled (:attr:`FortConfig.target_sum`)
TARGET_SUMS = ("prompt_size", "one")


@dataclass
class FortConfig:
    """Hyper-parameters of position prompts + attention-enhancement loss (DESIGN.md 4-6).

    ``None`` fields take the DESIGN.md section 6 recipe of the backbone family and tuner when
    the loss is used (:func:`~focusvit.finetune.trainer.resolve_fort`), so ``FortConfig()`` is
    "the paper's setting for this model" and each value has one default, in the recipe table.

    Attributes:
        alpha: weight α of the attention loss (0 trains exactly as without the loss; ``None``:
            the recipe's α).
        tau: temperature τ dividing the attention logits (``None``: the recipe's).
        top_k: prompt size as a count: patches (columnar ViT, official 14 of 196) or tokens per
            window (Swin, 7 of 49).
        top_fraction: prompt size as a fraction of the patches (or of a window's tokens); give
            at most one of ``top_k`` / ``top_fraction`` (both ``None``: the recipe's).
        layers: ``"last"``, ``"all"`` or explicit block indices the loss reads (columnar ViTs).
        query_rows: ``"all"`` (CLS and patch rows, official) or ``"cls"``.
        weighting: ``"importance"`` (official) or ``"multi_hot"`` targets.
        explainer: explainer that scores the support patches (columnar ViTs).
        target_sum: ``"prompt_size"`` (official: each image's targets sum to P, so the loss
            grows with the prompt and the grid and the recipe α values hold only for ViT-B/16
            at 224 px) or ``"one"`` (targets normalised to sum to 1 per image / window: a
            cross-entropy against a distribution, whose scale does not depend on P or the
            grid, so one α transfers across models; choose that α on validation classes).
        shift_mask: Swin only: the loss logits of shifted blocks include the model's own
            shifted-window mask (0 / -100 per window, query and key), as in the authors' code,
            so the softmax over a window's keys leaves out the tokens the model itself does not
            attend to (default ``True``). ``False``: the unmasked ``q kᵀ · scale`` + relative
            position bias of earlier focusvit versions. No effect on columnar ViTs.
    """

    alpha: float | None = None
    tau: float | None = None
    top_k: int | None = None
    top_fraction: float | None = None
    layers: Any = "last"
    query_rows: str = "all"
    weighting: str = "importance"
    explainer: str = "rollout_svd"
    target_sum: str = "prompt_size"
    shift_mask: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.shift_mask, bool):
            raise ConfigError(f"shift_mask must be True or False, got {self.shift_mask!r}")
        if self.target_sum not in TARGET_SUMS:
            raise ConfigError(
                f"target_sum must be one of {', '.join(TARGET_SUMS)}, got {self.target_sum!r}"
            )
        self._check_alpha_tau()
        if self.top_k is not None and self.top_fraction is not None:
            raise ConfigError(
                "give either top_k (a patch count) or top_fraction (a fraction of the patches), "
                f"not both (got top_k={self.top_k}, top_fraction={self.top_fraction})"
            )
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or int(self.top_k) != self.top_k or self.top_k < 1
        ):
            raise ConfigError(f"top_k must be a whole number of patches >= 1, got {self.top_k!r}")
        if self.top_fraction is not None and not 0 < self.top_fraction <= 1:
            raise ConfigError(f"top_fraction must lie in (0, 1], got {self.top_fraction!r}")
        if self.query_rows not in ("all", "cls"):
            raise ConfigError(f"query_rows must be 'all' or 'cls', got {self.query_rows!r}")
        if isinstance(self.layers, str):
            if self.layers not in ("last", "all"):
                raise ConfigError(
                    f"layers must be 'last', 'all' or a list of block indices, got {self.layers!r}"
                )
        else:
            try:
                layers = tuple(int(i) for i in self.layers)
            except TypeError:
                raise ConfigError(
                    f"layers must be 'last', 'all' or a list of block indices, got {self.layers!r}"
                ) from None
            if not layers:
                raise ConfigError("layers must name at least one block, e.g. layers=[-1]")
            self.layers = layers
        if self.weighting not in ("importance", "multi_hot"):
            raise ConfigError(
                f"weighting must be 'importance' or 'multi_hot', got {self.weighting!r}"
            )

    def _check_alpha_tau(self) -> None:
        """Refuse an α or τ that can only diverge (NaN, inf) or make no sense (negative)."""
        if self.alpha is not None and not (_is_number(self.alpha) and 0 <= self.alpha < math.inf):
            raise ConfigError(
                f"alpha must be >= 0 and finite (0 trains as without the loss), got "
                f"{self.alpha!r}; e.g. alpha=0.1, or None for the recipe's"
            )
        if self.tau is not None and not (_is_number(self.tau) and 0 < self.tau < math.inf):
            raise ConfigError(
                f"tau must be > 0 and finite, got {self.tau!r}; e.g. tau=1.0, or None for the "
                "recipe's"
            )

    @property
    def resolved(self) -> bool:
        """True when every recipe-filled field is set (after ``resolve_fort``)."""
        return None not in (self.alpha, self.tau) and (self.top_k, self.top_fraction) != (
            None,
            None,
        )

    def layer_indices(self, num_layers: int) -> list[int]:
        """The block indices ``0..num_layers-1`` the loss reads (negative ones count from the
        end, as in Python).

        Raises:
            ConfigError: an explicit index outside ``-num_layers..num_layers-1``.
        """
        if self.layers == "last":
            return [num_layers - 1]
        if self.layers == "all":
            return list(range(num_layers))
        outside = [layer for layer in self.layers if not -num_layers <= layer < num_layers]
        if outside:
            raise ConfigError(
                f"layers {list(self.layers)} name blocks {outside} that a {num_layers}-block "
                f"model does not have; use indices in {-num_layers}..{num_layers - 1} (negative "
                "count from the end), 'last' or 'all'"
            )
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
        losses.append(_cross_entropy_rows(rows, targets.to(rows.dtype), tau).mean())
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
        total = total + _cross_entropy_rows(fused, targets.to(fused.dtype), tau).mean()
    return total
