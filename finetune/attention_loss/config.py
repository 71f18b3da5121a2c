"""The settings of the attention-enhancement loss: :class:`FortConfig`.

FORT (Wang, Jie, Deng, "Focus Your Attention when Few-Shot Classification", NeurIPS 2023) adds
to the cross-entropy of fine-tuning ``α · ce_attn``, a cross-entropy between the model's
attention on the support images and their position prompts; ``docs/concepts/loss.md`` describes
the loss and its settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from focusvit.checks import is_finite_number, is_whole_number
from focusvit.errors import ConfigError
from focusvit.prompting.prompts import check_prompt_size

#: how the attention-loss targets are scaled (:attr:`FortConfig.target_sum`)
TARGET_SUMS = ("prompt_size", "one")

#: where the position prompts come from (:attr:`FortConfig.prompts`)
PROMPT_SOURCES = ("explainer", "ground_truth")


@dataclass
class FortConfig:
    """Hyper-parameters of position prompts + attention-enhancement loss (Wang, Jie, Deng,
    NeurIPS 2023, sections 3.2-3.3; ``docs/concepts/loss.md``).

    ``None`` fields take the recipe of the backbone family and tuner when the loss is used
    (:func:`~focusvit.finetune.attention_loss.resolve_fort`), so ``FortConfig()`` is "the
    paper's setting for this model" and each value has one default, in the recipe table.

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
        explainer: explainer that scores the support patches (columnar ViTs; used when
            ``prompts="explainer"``).
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
        prompts: where the position prompts come from: ``"explainer"`` (official: the
            ``explainer``'s patch scores, Swin: the last block's window logits) or
            ``"ground_truth"`` (a diagnostic that separates the loss from the prompt quality:
            the top-P patches by coverage of the support images' object masks, weighted by
            coverage; the masks come from the dataset, ``dataset.mask(i)``, or
            ``fit_task(..., support_masks=...)``).
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
    prompts: str = "explainer"

    def __post_init__(self) -> None:
        if not isinstance(self.shift_mask, bool):
            raise ConfigError(f"shift_mask must be True or False, got {self.shift_mask!r}")
        if self.target_sum not in TARGET_SUMS:
            raise ConfigError(
                f"target_sum must be one of {', '.join(TARGET_SUMS)}, got {self.target_sum!r}"
            )
        if self.prompts not in PROMPT_SOURCES:
            raise ConfigError(
                f"prompts must be one of {', '.join(PROMPT_SOURCES)}, got {self.prompts!r}; "
                "e.g. prompts='ground_truth' for the top-P patches of the object masks"
            )
        self._check_alpha_tau()
        check_prompt_size(self.top_k, self.top_fraction)
        if self.query_rows not in ("all", "cls"):
            raise ConfigError(f"query_rows must be 'all' or 'cls', got {self.query_rows!r}")
        if isinstance(self.layers, str):
            if self.layers not in ("last", "all"):
                raise ConfigError(
                    f"layers must be 'last', 'all' or a list of block indices, got {self.layers!r}"
                )
        else:
            try:
                entries = list(self.layers)
            except TypeError:
                raise ConfigError(
                    f"layers must be 'last', 'all' or a list of block indices, got {self.layers!r}"
                ) from None
            bad = [i for i in entries if not is_whole_number(i)]
            if bad:
                raise ConfigError(
                    f"layers must be whole block indices, got {bad[0]!r} in {entries!r:.60}; "
                    "e.g. layers=[-1] or layers=[9, 10, 11] (or 'last' / 'all')"
                )
            layers = tuple(int(i) for i in entries)
            if not layers:
                raise ConfigError("layers must name at least one block, e.g. layers=[-1]")
            self.layers = layers
        if self.weighting not in ("importance", "multi_hot"):
            raise ConfigError(
                f"weighting must be 'importance' or 'multi_hot', got {self.weighting!r}"
            )

    def _check_alpha_tau(self) -> None:
        """Refuse an α or τ that can only diverge (NaN, inf) or make no sense (negative)."""
        if self.alpha is not None and not (is_finite_number(self.alpha) and self.alpha >= 0):
            raise ConfigError(
                f"alpha must be >= 0 and finite (0 trains as without the loss), got "
                f"{self.alpha!r}; e.g. alpha=0.1, or None for the recipe's"
            )
        if self.tau is not None and not (is_finite_number(self.tau) and self.tau > 0):
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


def fort_settings(fort: FortConfig | None) -> dict[str, Any] | None:
    """The settings record of the attention loss (``None``: no loss), as episode files and run
    folders store it.

    Every field is recorded (:func:`focusvit.runs.to_plain`) except ``prompts`` at its default
    ``"explainer"``: records written before the field existed hold exactly these keys, so they
    still resume; ``prompts="ground_truth"`` is recorded, so a ground-truth-prompt run never
    shares an episode file with an explainer-prompt one.
    """
    if fort is None:
        return None
    from focusvit.runs import to_plain

    plain = to_plain(fort)
    if plain.get("prompts") == "explainer":
        del plain["prompts"]
    return plain
