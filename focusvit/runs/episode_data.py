"""One episode's data, decoded and preprocessed once for every method (docs/benchmarks.md).

The loop builds an :class:`EpisodeData` per episode and hands it to every runner: images are
decoded once (``dataset.load``), preprocessed once per preprocessing (a runner whose backbone
has the same ``data_config`` gets the same tensors), and :attr:`EpisodeData.shared` holds what
depends only on the pretrained model and the support set (support features, head
initialisations, position prompts), computed by the first method that needs it and reused by the
others.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from focusvit.data.episodes import Episode


def preprocessing_key(data_config: dict) -> str:
    """A key identifying a preprocessing (size, mean, std, crop, interpolation)."""
    return json.dumps({k: data_config.get(k) for k in sorted(data_config)}, default=str)


@dataclass
class EpisodeData:
    """An episode with lazily decoded / preprocessed images shared by all runners.

    Attributes:
        dataset: the few-shot dataset (``labels``, ``class_names``, ``load``).
        episode: the sampled :class:`~focusvit.data.episodes.Episode`.
        seed: the torch seed of this episode (:func:`~focusvit.runs.episode_seed`).
        shared: per-episode cache of pretrained-model results shared across methods.
    """

    dataset: Any
    episode: Episode
    seed: int
    shared: dict[Any, Any] = field(default_factory=dict)
    _decoded: dict[int, Any] = field(default_factory=dict, repr=False)
    _tensors: dict[tuple, tuple[Tensor, ...]] = field(default_factory=dict, repr=False)

    def items(self, indices: Sequence[int]) -> list[Any]:
        """The dataset items (PIL images or tensors) of ``indices``, each decoded once."""
        for index in indices:
            if index not in self._decoded:
                self._decoded[index] = self.dataset.load(index)
        return [self._decoded[i] for i in indices]

    def tensors(
        self,
        preprocess: Callable[[list[Any]], Tensor],
        key: str,
        device: torch.device | str = "cpu",
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(support (M,3,H,W), support_labels (M,), query (Q,3,H,W), query_labels (Q,))``.

        Args:
            preprocess: list of items -> normalised batch (e.g. ``backbone.preprocess``); not
                called for datasets of tensors (stacked as they are).
            key: identifies the preprocessing (:func:`preprocessing_key`); runners with the same
                key share the tensors.
            device: where the tensors go.
        """
        cache_key = (key, str(device))
        if cache_key not in self._tensors:
            episode = self.episode
            self._tensors[cache_key] = (
                self._batch(episode.support, preprocess).to(device),
                episode.support_labels.to(device),
                self._batch(episode.query, preprocess).to(device),
                episode.query_labels.to(device),
            )
        return self._tensors[cache_key]  # type: ignore[return-value]

    def _batch(self, indices: Sequence[int], preprocess: Callable[[list[Any]], Tensor]) -> Tensor:
        items = self.items(indices)
        if isinstance(items[0], Tensor):
            return torch.stack(items)
        return preprocess(items)
