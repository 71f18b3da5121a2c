"""N-way K-shot episodes (docs/concepts/runs.md).

Episode ``i`` of a seed is drawn from its own generator ``default_rng([seed, i])``, so every
method sees the same episodes, an interrupted evaluation resumes at any episode, and episodes
can be sharded across processes without changing them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from focusvit.checks import is_whole_number
from focusvit.errors import FocusVitError


class EpisodeError(FocusVitError, ValueError):
    """An episode specification the dataset cannot satisfy."""


@dataclass(frozen=True)
class Episode:
    """One few-shot task.

    Attributes:
        index: episode number within its seed.
        classes: dataset labels of the N classes, in episode-label order.
        support: dataset indices ``(N*K,)``, grouped by episode label.
        query: dataset indices ``(N*Q,)``, grouped by episode label.
    """

    index: int
    classes: tuple[int, ...]
    support: tuple[int, ...]
    query: tuple[int, ...]
    k_shot: int
    n_query: int

    @property
    def n_way(self) -> int:
        return len(self.classes)

    @property
    def support_labels(self) -> Tensor:
        return torch.arange(self.n_way).repeat_interleave(self.k_shot)

    @property
    def query_labels(self) -> Tensor:
        return torch.arange(self.n_way).repeat_interleave(self.n_query)


def _check_counts(**values: object) -> None:
    """Refuse a value that is not a whole number (``bool`` and ``2.5`` included)."""
    for name, value in values.items():
        if not is_whole_number(value):
            raise EpisodeError(
                f"{name} must be a whole number, got {value!r}; e.g. n_way=5, k_shot=1, "
                "n_query=15, episodes=600, seed=0"
            )


def _check_label_list(labels: object) -> None:
    """Refuse ``labels`` that are no list of class indices: ``None``, a string or bytes (whose
    characters would be taken as classes), a number, or a list holding non-integers."""
    fix = "pass the dataset's labels, e.g. dataset.labels or [0, 0, 1, 1]"
    if labels is None or isinstance(labels, str | bytes) or not hasattr(labels, "__iter__"):
        raise EpisodeError(f"labels must be a list of class indices, got {labels!r:.60}; {fix}")
    if isinstance(labels, Tensor | np.ndarray):
        floating = (
            labels.dtype.is_floating_point or labels.dtype is torch.bool
            if isinstance(labels, Tensor)
            else not np.issubdtype(labels.dtype, np.integer)
        )
        if floating:
            raise EpisodeError(f"labels must be integers, got dtype {labels.dtype}; {fix}")
        return
    for label in labels:
        if not is_whole_number(label):
            raise EpisodeError(
                f"labels must be whole numbers, got {label!r} ({type(label).__name__}); {fix}"
            )


def check_episode_spec(
    labels: Sequence[int],
    n_way: int,
    k_shot: int,
    n_query: int,
    class_names: Sequence[str] | None = None,
) -> None:
    """Raise :class:`EpisodeError` naming the fix when the dataset cannot give such episodes."""
    _check_counts(n_way=n_way, k_shot=k_shot, n_query=n_query)
    _check_label_list(labels)
    if n_way < 1 or k_shot < 1 or n_query < 0:
        raise EpisodeError(
            f"need n_way >= 1, k_shot >= 1, n_query >= 0; got {n_way}, {k_shot}, {n_query}"
        )
    counts = Counter(labels)
    if n_way > len(counts):
        raise EpisodeError(
            f"{n_way}-way episodes need {n_way} classes but the dataset has {len(counts)}; lower n_way"
        )
    needed = k_shot + n_query
    small = sorted((c, n) for c, n in counts.items() if n < needed)
    if small:
        name = class_names[small[0][0]] if class_names else str(small[0][0])
        raise EpisodeError(
            f"class {name!r} has {small[0][1]} images but {k_shot}-shot episodes with {n_query} "
            f"queries need {needed} per class ({len(small)} classes are too small); lower k_shot or "
            "n_query, or remove those classes"
        )


def sample_episode(
    labels: Sequence[int], index: int, n_way: int, k_shot: int, n_query: int, seed: int = 0
) -> Episode:
    """Episode ``index`` of ``seed`` (independent of every other episode)."""
    rng = np.random.default_rng([seed, index])
    by_class: dict[int, list[int]] = {}
    for item, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(item)
    class_ids = sorted(by_class)
    chosen = [class_ids[i] for i in rng.choice(len(class_ids), size=n_way, replace=False)]
    support, query = [], []
    for label in chosen:
        items = rng.choice(by_class[label], size=k_shot + n_query, replace=False).tolist()
        support.extend(items[:k_shot])
        query.extend(items[k_shot:])
    return Episode(index, tuple(chosen), tuple(support), tuple(query), k_shot, n_query)


def sample_episodes(
    labels: Sequence[int],
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 15,
    episodes: int = 100,
    seed: int = 0,
    start: int = 0,
    class_names: Sequence[str] | None = None,
) -> list[Episode]:
    """Episodes ``start .. episodes-1`` of ``seed``; the same call always gives the same list."""
    _check_counts(episodes=episodes, seed=seed, start=start)
    if seed < 0 or start < 0:
        raise EpisodeError(f"seed and start must be >= 0, got seed={seed}, start={start}")
    if episodes < 1:
        raise EpisodeError(f"episodes must be >= 1, got {episodes!r}; e.g. episodes=600")
    check_episode_spec(labels, n_way, k_shot, n_query, class_names)
    return [sample_episode(labels, i, n_way, k_shot, n_query, seed) for i in range(start, episodes)]
