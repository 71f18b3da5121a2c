"""Choose the attention-loss weight on validation classes, never on the test classes
(docs/concepts/loss.md: "pick α on validation classes (α = 0 included)").

:func:`select_alpha` evaluates the tuner without the loss and with each candidate α on the same
episodes of a *validation* dataset (base or val classes), sharing each episode's work across the
candidates (:func:`focusvit.runs.evaluate_many`), and chooses by a *rule*:

- ``"paired"`` (the default): every α > 0 is compared with α = 0 episode by episode
  (:func:`focusvit.runs.paired`); an α > 0 is chosen only when its paired gain has a 95% interval
  above zero (``mean − 1.96 · std / √n > 0``, :func:`focusvit.runs.stats.mean_and_ci`, over at
  least 2 paired episodes). Among several such α the largest mean gain wins (gains within
  :data:`TIE_TOLERANCE` tie, and the smaller α wins a tie); when none qualifies, α = 0.
- ``"best_mean"`` (the rule before issue 31, kept to read the records chosen with it): the
  highest validation mean, α = 0 winning every tie. On 20 validation episodes the candidates'
  means usually differ by less than their intervals, so this choice is mostly noise.

A candidate with a diverged validation episode is never chosen. The rule is part of the result
(:attr:`AlphaSelection.rule`, :meth:`AlphaSelection.record`), so choices of the two rules are
never mixed. The novel classes are then evaluated once with the chosen setting.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from focusvit.backbones import BackboneAdapter
from focusvit.checks import is_finite_number
from focusvit.data.datasets import check_dataset_kind
from focusvit.errors import ConfigError, NonFiniteError
from focusvit.runs import (
    DistContext,
    EpisodeSpec,
    EvaluationResult,
    episode_file_name,
    evaluate_many,
)
from focusvit.runs.records import read_episode_file
from focusvit.runs.spec import check_spec_kind
from focusvit.runs.stats import format_ci
from focusvit.runs.study import Paired, common_episodes, paired

from .attention_loss import FortConfig, check_fort_value
from .recipes import FitOptions, fit_options
from .tuners import TunerConfig

__all__ = [
    "RULES",
    "AlphaSelection",
    "alpha_file_name",
    "alpha_label",
    "check_alphas",
    "check_rule",
    "read_selection",
    "select_alpha",
]

RULES = ("paired", "best_mean")
"""The selection rules: ``"paired"`` (default) and ``"best_mean"`` (committed records only)."""

RULE_TEXT = {
    "paired": "α > 0 only when its paired gain over α = 0 has a 95% interval above zero; "
    "largest gain wins, the smaller α wins a tie; otherwise α = 0",
    "best_mean": "highest validation mean, α = 0 wins ties (the rule before issue 31)",
}


@dataclass
class AlphaSelection:
    """The outcome of :func:`select_alpha` (or :meth:`from_results`).

    Attributes:
        alpha: the chosen weight (0: plain fine-tuning).
        fort: the attention-loss setting to evaluate the test classes with (None for α = 0).
        results: ``{alpha: EvaluationResult}`` on the validation episodes.
        rule: the rule that chose ``alpha`` (:data:`RULES`).
        paired: ``{alpha: Paired}``, each α > 0 minus α = 0 on the validation episodes both
            finished (mean, 95% interval, wins/ties/losses of α); None for a candidate that
            diverged (skipped) or when α = 0 diverged.
    """

    alpha: float
    fort: FortConfig | None
    results: dict[float, EvaluationResult]
    rule: str = "paired"
    paired: dict[float, Paired | None] = field(default_factory=dict)

    @classmethod
    def from_results(
        cls,
        results: dict[float, EvaluationResult],
        rule: str = "paired",
        fort: FortConfig | None = None,
    ) -> AlphaSelection:
        """Apply ``rule`` to validation results ``{alpha: EvaluationResult}`` (α = 0 among
        them; no training). ``fort``: the other attention-loss settings of the chosen α.

        Raises:
            ConfigError: an unknown rule, or no α = 0 among the results.
            NonFiniteError: every candidate diverged; with the paired rule, α = 0 diverged
                (there is no reference to pair against).
        """
        check_rule(rule)
        if 0.0 not in results:
            raise ConfigError("the validation results must include α = 0 (plain fine-tuning)")
        stable = {a: r for a, r in results.items() if not r.diverged and r.accuracies}
        if not stable:
            raise NonFiniteError(
                "every α candidate diverged on the validation episodes (also α = 0): lower the "
                "learning rate (trainer lr) and select again"
            )
        gains = _paired_gains(results, stable)
        if rule == "best_mean":
            best = _smallest_best({a: r.mean for a, r in stable.items()})
        elif 0.0 not in stable:
            raise NonFiniteError(
                f"α = 0 (plain fine-tuning) diverged on {results[0.0].diverged} validation "
                "episodes; the paired rule compares every α with it: lower the learning rate "
                "(trainer lr) and select again"
            )
        else:
            clear = {a: p.mean for a, p in gains.items() if p is not None and _clear_gain(p)}
            best = _smallest_best(clear) if clear else 0.0
        base = fort if isinstance(fort, FortConfig) else FortConfig()
        setting = None if best == 0 else replace(base, alpha=best)
        return cls(best, setting, dict(results), rule, gains)

    def table(self) -> str:
        """The rule, then one line per candidate: α, validation accuracy ± 95% interval, its
        paired difference from α = 0 in points (mean ± 95% interval, wins/ties/losses over the
        paired episodes) or why it was skipped, and the chosen mark."""
        lines = [f"alpha rule {self.rule}: {RULE_TEXT[self.rule]}"]
        width = max(len(r.summary()) for r in self.results.values())
        for alpha, result in self.results.items():
            gain = self.paired.get(alpha)
            if result.diverged:
                text = f"diverged on {result.diverged} episodes: skipped"
            elif alpha == 0:
                text = "(reference)"
            elif gain is None:
                text = "not paired (α = 0 diverged)"
            else:
                n = gain.wins + gain.ties + gain.losses
                text = (
                    f"{100 * gain.mean:+.2f} "
                    f"{format_ci(gain.ci95, n)} points vs α = 0, w/t/l {gain.wtl}"
                )
            mark = "  <- chosen" if alpha == self.alpha else ""
            lines.append(f"alpha {alpha:<8g} {result.summary():<{width}}  {text}{mark}")
        return "\n".join(lines)

    def record(self) -> dict:
        """The selection as JSON values: the rule, the chosen α, per candidate the validation
        ``[mean, ci95]`` and the paired difference ``{mean, ci95, wins, ties, losses}`` from
        α = 0 (None where skipped)."""
        return {
            "rule": self.rule,
            "alpha": self.alpha,
            "validation": {f"{a:g}": [r.mean, r.ci95] for a, r in self.results.items()},
            "paired": {
                f"{a:g}": None if p is None else {
                    "mean": p.mean, "ci95": p.ci95,
                    "wins": p.wins, "ties": p.ties, "losses": p.losses,
                }
                for a, p in self.paired.items()
            },
        }  # fmt: skip


def check_rule(rule: str) -> str:
    """``rule`` when it is one of :data:`RULES`; else a ConfigError naming them."""
    if rule not in RULES:
        raise ConfigError(
            f"the α selection rule must be one of {', '.join(RULES)}, got {rule!r:.40}; "
            "'paired' (default) chooses α > 0 only on a clear paired gain over α = 0"
        )
    return rule


def _by_episode(result: EvaluationResult) -> dict[int, float]:
    """Accuracy by episode index: from the records when they carry one, else by position."""
    finished = [r for r in result.records if "episode" in r and "accuracy" in r]
    if len(finished) == len(result.accuracies):
        return {int(r["episode"]): float(r["accuracy"]) for r in finished}
    return dict(enumerate(result.accuracies))


def _paired_gains(results, stable) -> dict[float, Paired | None]:
    """Each α > 0 minus α = 0 on the episodes both finished (None: skipped or no pair)."""
    gains: dict[float, Paired | None] = {}
    for alpha in results:
        if alpha == 0:
            continue
        gains[alpha] = None
        if alpha in stable and 0.0 in stable:
            rows = common_episodes({"a": _by_episode(stable[alpha]), "0": _by_episode(stable[0.0])})
            if rows["a"]:
                gains[alpha] = paired(rows["a"], rows["0"])
    return gains


def _clear_gain(gain: Paired) -> bool:
    """A 95% interval above zero, over at least 2 paired episodes (one episode has no
    measured interval). :data:`TIE_TOLERANCE` absorbs float32 rounding."""
    return gain.wins + gain.ties + gain.losses >= 2 and gain.mean - gain.ci95 > TIE_TOLERANCE


TIE_TOLERANCE = 1e-6
"""Validation means (``"best_mean"``) or paired mean gains (``"paired"``) closer than this are a
tie, and a paired interval must clear zero by more than this. Episode accuracies are float32 fractions, so the
same number of correct queries spread differently over the episodes can give means ~1e-8 apart."""


def _smallest_best(means: dict[float, float]) -> float:
    """The smallest α (key of ``means``) whose value is within :data:`TIE_TOLERANCE` of the
    best (a mean accuracy, or a paired mean gain)."""
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
        if not is_finite_number(alpha) or alpha < 0:
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
    rule: str = "paired",
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
        rule: ``"paired"`` (default): α > 0 only when its paired gain over α = 0 on these
            episodes has a 95% interval above zero, the largest such gain winning (the smaller
            α on a tie), else α = 0; ``"best_mean"``: the highest mean, α = 0 winning ties
            (the earlier rule, for records chosen with it). See the module docstring.

    Returns:
        :class:`AlphaSelection` with the rule and every candidate's paired difference from
        α = 0 (:meth:`AlphaSelection.table`, :meth:`AlphaSelection.record`).

    Raises:
        ConfigError: a test split (dataset or ``episodes.split``) or a split mismatch,
            ``alphas`` that are not finite numbers >= 0 (:func:`check_alphas`), or an unknown
            ``rule``; EpisodeError: episodes the dataset cannot give (all before any model
            work).
        NonFiniteError: every candidate diverged, or (paired rule) α = 0 diverged.
        ArgumentError: ``episodes`` not an EpisodeSpec, ``validation`` not a dataset,
            ``options`` not a FitOptions.
    """
    from .evaluate import make_runner

    _check_validation_split(validation, episodes)
    candidates = check_alphas(alphas)
    check_rule(rule)
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
    # fewer episodes, or NaN); α = 0 is plain fine-tuning, the reference of the paired rule
    return AlphaSelection.from_results(results, rule, base)


def read_selection(folder: str | os.PathLike, rule: str | None = None) -> AlphaSelection:
    """A stored selection re-read without training: the candidates of ``folder/selection.json``
    (``benchmarks/fort_study.py``) from their episode files ``folder/validation/alpha=….jsonl``,
    chosen by ``rule`` (default: the rule recorded in ``selection.json``; ``"best_mean"`` when
    none is recorded, the records written before the rule was).

    Raises:
        ConfigError: no ``selection.json``, or a candidate's episode file is missing."""
    path = Path(folder) / "selection.json"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; run the α selection first")
    stored = json.loads(path.read_text())
    rule = rule or stored.get("rule", "best_mean")
    results = {}
    for alpha in check_alphas([float(a) for a in stored["validation"]]):
        episodes = Path(folder) / "validation" / alpha_file_name(alpha)
        if not episodes.is_file():
            raise ConfigError(f"{episodes} is missing: the validation records of α = {alpha:g}")
        results[alpha] = EvaluationResult.from_records(
            alpha_label(alpha), read_episode_file(episodes)[1]
        )
    return AlphaSelection.from_results(results, rule)
