"""Choose the attention-loss weight on validation classes, never on the test classes
(docs/concepts/loss.md: "pick α on validation classes (α = 0 included)").

:func:`select_alpha` evaluates the tuner without the loss and with each candidate α on the same
episodes of a *validation* dataset (base or val classes), sharing each episode's work across the
candidates (:func:`focusvit.runs.evaluate_many`), and returns the α with the highest mean
accuracy; α = 0 (plain fine-tuning) wins every tie. The novel classes are then evaluated once
with the chosen setting, so the selected method is never worse than plain fine-tuning on the
validation episodes by construction.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from numbers import Real
from pathlib import Path

import torch

from focusvit.backbones import BackboneAdapter
from focusvit.data.datasets import check_dataset_kind
from focusvit.errors import ConfigError, NonFiniteError
from focusvit.runs import (
    DistContext,
    EpisodeSpec,
    EvaluationResult,
    episode_file_name,
    evaluate_many,
)
from focusvit.runs.spec import check_spec_kind

from .attention_loss import FortConfig, check_fort_value
from .recipes import FitOptions, fit_options
from .tuners import TunerConfig

__all__ = ["AlphaSelection", "alpha_file_name", "alpha_label", "check_alphas", "select_alpha"]


@dataclass
class AlphaSelection:
    """The outcome of :func:`select_alpha`.

    Attributes:
        alpha: the chosen weight (0: plain fine-tuning won or tied).
        fort: the attention-loss setting to evaluate the test classes with (None for α = 0).
        results: ``{alpha: EvaluationResult}`` on the validation episodes.
    """

    alpha: float
    fort: FortConfig | None
    results: dict[float, EvaluationResult]

    def table(self) -> str:
        """One line per candidate: α, validation accuracy ± 95% interval, the chosen mark."""
        lines = []
        for alpha, result in self.results.items():
            mark = "  <- chosen" if alpha == self.alpha else ""
            lines.append(f"alpha {alpha:<8g} {result}{mark}")
        return "\n".join(lines)


TIE_TOLERANCE = 1e-6
"""Validation means closer than this are a tie. Episode accuracies are float32 fractions, so the
same number of correct queries spread differently over the episodes can give means ~1e-8 apart."""


def _smallest_best(means: dict[float, float]) -> float:
    """The smallest α (key of ``means``) whose mean is within :data:`TIE_TOLERANCE` of the best."""
    best_mean = max(means.values())
    return min(a for a, mean in means.items() if mean >= best_mean - TIE_TOLERANCE)


TEST_SPLITS = ("novel", "test")
"""Class splits α is never chosen on (the classes the selected method is evaluated on)."""


def _check_validation_split(validation, episodes: EpisodeSpec) -> None:
    """Refuse a validation dataset (or episode spec) of a test split, or a dataset whose split
    differs from ``episodes.split`` (:meth:`EpisodeSpec.check_dataset`), before any work."""
    check_spec_kind(episodes, "episodes")
    check_dataset_kind(validation, "validation")
    have = getattr(validation, "split", None)
    for what, split in (("a dataset", have), ("episodes", episodes.split)):
        if split in TEST_SPLITS:
            raise ConfigError(
                f"select_alpha got {what} of the {split!r} split; choose α on base or validation "
                "classes (e.g. SyntheticScenes('val') or ImageFolderDataset(root, split='val', "
                "split_file=...)), never on the test classes"
            )
    episodes.check_dataset(validation)


def check_alphas(alphas: Sequence[float]) -> list[float]:
    """The candidate weights ``alphas`` (with 0 added), sorted and without repeats: a list or
    tuple of finite real numbers >= 0.

    Raises:
        ConfigError: a str, a non-sequence, or an entry that is not a finite real number >= 0
            (a bool, a str, nan, inf, a negative number), naming it and the fix.
    """
    example = "e.g. alphas=[0.1, 0.5, 1.0] (0 is always added)"
    if isinstance(alphas, (str, bytes)) or not isinstance(alphas, Sequence):
        raise ConfigError(
            f"alphas must be a list of attention-loss weights, got {type(alphas).__name__} "
            f"{alphas!r:.60}; {example}"
        )
    for alpha in alphas:
        if (
            not isinstance(alpha, Real)
            or isinstance(alpha, bool)
            or not math.isfinite(alpha)
            or alpha < 0
        ):
            raise ConfigError(
                f"alphas must be finite numbers >= 0, got {alpha!r} in {list(alphas)!r:.60}; "
                f"{example}"
            )
    return sorted({0.0, *(float(a) for a in alphas)})


def alpha_file_name(alpha: float) -> str:
    """The episode file of candidate ``alpha`` in ``output_dir``: the run-folder name of its
    method label ``alpha=…`` (:func:`focusvit.runs.episode_file_name`), e.g.
    ``alpha=0.05.jsonl``."""
    return episode_file_name(alpha_label(alpha))


def alpha_label(alpha: float) -> str:
    """The method label (record name) of candidate ``alpha``: ``alpha=0``, ``alpha=0.05`` ..."""
    return f"alpha={alpha:g}"


def select_alpha(
    backbone: BackboneAdapter,
    validation,
    tuner: str | TunerConfig,
    alphas: Sequence[float],
    episodes: EpisodeSpec,
    fort: FortConfig | None = None,
    options: FitOptions | None = None,
    device: str | torch.device | None = None,
    output_dir: str | os.PathLike | None = None,
    progress: bool = True,
    context: DistContext | None = None,
) -> AlphaSelection:
    """Pick the attention-loss weight on validation episodes (α = 0 always included).

    Args:
        backbone: the pretrained backbone.
        validation: a dataset of base or validation classes (never the test classes): a
            dataset whose ``split`` is ``"novel"`` or ``"test"`` is refused, and when
            ``episodes.split`` is set it must match the dataset's split.
        tuner: the tuner to fine-tune (name or config).
        alphas: a list of candidate weights, finite numbers >= 0 (0 is added).
        episodes: the validation episodes (the same for every candidate).
        fort: the other attention-loss settings (τ, prompt size, target_sum ...; default the
            recipe's); its α is replaced by each candidate.
        options: fine-tuning options (recipe overrides, head init).
        output_dir: optional folder of resumable episode files, one per candidate.
        context: a multi-process context (:meth:`focusvit.runs.DistContext.from_env`, e.g. under
            ``torchrun``): each process evaluates its share of the validation episodes
            (round-robin) and every process returns the same choice; needs ``output_dir``.

    Returns:
        :class:`AlphaSelection`; ties go to the smaller α, so plain fine-tuning wins a tie.

    Raises:
        ConfigError: a test split (dataset or ``episodes.split``) or a split mismatch, or
            ``alphas`` that are not finite numbers >= 0 (:func:`check_alphas`); EpisodeError:
            episodes the dataset cannot give (all before any model work).
        ArgumentError: ``episodes`` not an EpisodeSpec, ``validation`` not a dataset,
            ``options`` not a FitOptions.
    """
    from .evaluate import make_runner

    _check_validation_split(validation, episodes)
    candidates = check_alphas(alphas)
    check_fort_value(fort)
    options = fit_options(options, {}, caller="select_alpha") if options is not None else None
    if context is not None and context.distributed and output_dir is None:
        raise ConfigError(
            f"select_alpha over {context.world_size} processes merges their episodes through "
            "files: pass output_dir=FOLDER (the same folder in every process)"
        )
    base = fort if isinstance(fort, FortConfig) else FortConfig()
    runners = {}
    for alpha in candidates:
        setting = None if alpha == 0 else replace(base, alpha=alpha)
        runner = make_runner(backbone, tuner=tuner, fort=setting, options=options, device=device)
        runner.label = alpha_label(alpha)
        runners[alpha] = runner
    outputs = None
    if output_dir is not None:
        outputs = {r.name: Path(output_dir) / alpha_file_name(a) for a, r in runners.items()}
    backbone.to(next(iter(runners.values())).device)
    by_name = evaluate_many(
        list(runners.values()), validation, episodes, outputs, progress, context=context
    )
    results = {alpha: by_name[runner.name] for alpha, runner in runners.items()}
    # a candidate with a diverged validation episode is never chosen (its mean would be over
    # fewer episodes, or NaN); α = 0 is plain fine-tuning and stays a candidate
    stable = {a: r.mean for a, r in results.items() if not r.diverged}
    if not stable:
        raise NonFiniteError(
            "every α candidate diverged on the validation episodes (also α = 0): lower the "
            "learning rate (trainer lr) and select again"
        )
    best = _smallest_best(stable)
    return AlphaSelection(best, None if best == 0 else replace(base, alpha=best), results)
