"""Summary statistics of episodic evaluation: one mean and one 95% interval formula.

The interval is ``1.96 · std / √n`` (docs/concepts/runs.md), the convention of few-shot papers
(population std, ``ddof=0``). One episode has a half width of 0 (the single value, no spread
measured); callers print it as "n/a" where it matters (:func:`format_ci`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from focusvit.errors import ConfigError


def mean_and_ci(
    values: Tensor | Sequence[float], nan_policy: Literal["omit", "raise"] = "omit", ddof: int = 0
) -> tuple[float, float]:
    """Mean and 95% interval half width ``1.96 · std / √n`` (docs/concepts/runs.md).

    Args:
        values: 1-D per-image or per-episode values.
        nan_policy: ``"omit"`` drops NaNs (undefined cases, e.g. empty prompts) before counting
            n; ``"raise"`` raises on them.
        ddof: delta degrees of freedom of the std; 0 (``np.std``) as in common few-shot
            evaluation code, 1 for the sample std.

    Returns:
        ``(mean, half_width)`` as floats; half width 0 when ``n <= ddof`` (one value).

    Raises:
        ValueError: no (non-NaN) value, or NaN with ``nan_policy="raise"``.
    """
    data = torch.as_tensor(values, dtype=torch.float64).flatten()
    finite = ~torch.isnan(data)
    if not bool(finite.all()):
        if nan_policy == "raise":
            raise ConfigError("values contain NaN; pass nan_policy='omit' to drop them")
        data = data[finite]
    n = int(data.numel())
    if n == 0:
        raise ConfigError("mean_and_ci needs at least one (non-NaN) value")
    mean = float(data.mean())
    if n - ddof <= 0:
        return mean, 0.0
    std = float(data.std(correction=ddof))
    return mean, 1.96 * std / math.sqrt(n)


def format_ci(half_width: float, count: int, scale: float = 100.0, digits: int = 2) -> str:
    """``"± 1.23"``, or ``"± n/a"`` for a single episode (no interval is measured from one)."""
    return "± n/a" if count < 2 else f"± {scale * half_width:.{digits}f}"


@dataclass
class EvaluationResult:
    """Per-episode accuracies of one method with mean and 95% interval (:func:`mean_and_ci`).

    An episode whose fine-tuning diverged (a NaN / inf loss or parameter) has a record with
    ``"diverged": true`` and its ``"error"`` but no accuracy: it is counted in
    :attr:`diverged`, never in :attr:`accuracies`, so :attr:`mean` and :attr:`ci95` are over
    the finished episodes only.

    Attributes:
        method: the method's record name (e.g. ``"lora+fort"``).
        accuracies: per finished episode the accuracy in ``[0, 1]``, in episode order.
        records: the per-episode JSONL records (episode id, classes, settings, extra info),
            diverged ones included.
    """

    method: str
    accuracies: list[float] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)

    @classmethod
    def from_records(cls, method: str, records: Sequence[dict]) -> EvaluationResult:
        accuracies = [float(r["accuracy"]) for r in records if not is_diverged(r)]
        return cls(method, accuracies, list(records))

    @property
    def diverged(self) -> int:
        """How many episodes diverged (records with ``"diverged": true``, no accuracy)."""
        return sum(1 for record in self.records if is_diverged(record))

    @property
    def episodes(self) -> int:
        """All episodes of the result: finished (with an accuracy) and diverged."""
        return len(self.accuracies) + self.diverged

    @property
    def mean(self) -> float:
        """Mean accuracy over the finished episodes (NaN when none finished)."""
        return mean_and_ci(self.accuracies)[0] if self.accuracies else float("nan")

    @property
    def ci95(self) -> float:
        """Half width of the 95% interval (0 for one episode, NaN for none)."""
        return mean_and_ci(self.accuracies)[1] if self.accuracies else float("nan")

    def summary(self) -> str:
        """``"55.00 ± 1.23 % (100 episodes, 3 diverged)"``: the mean and interval over the
        finished episodes, or ``"all 5 episodes diverged (no accuracy)"`` when none finished."""
        n, diverged = len(self.accuracies), self.diverged
        if not n:
            if not diverged:
                return "no episodes"
            return f"all {diverged} episodes diverged (no accuracy; see the records' error)"
        count = f"{n + diverged} episodes, {diverged} diverged" if diverged else f"{n} episodes"
        return f"{100 * self.mean:.2f} {format_ci(self.ci95, n)} % ({count})"

    def __str__(self) -> str:
        return f"{self.method}: {self.summary()}"


def is_diverged(record: dict) -> bool:
    """True for the record of an episode whose fine-tuning diverged (no accuracy)."""
    return record.get("diverged") is True
