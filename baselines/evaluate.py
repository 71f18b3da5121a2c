"""Episodic evaluation of the baselines: a runner of the one run layer (:mod:`focusvit.runs`).

Episodes, episode files, settings records, resume and sharding are those of every other method:
episode ``i`` is ``sample_episode(dataset.labels, i, ...)`` for every method, so baselines and
ViT methods are compared on identical tasks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from focusvit.data import ContentWatch
from focusvit.runs import (
    DistContext,
    EpisodeData,
    EpisodeSpec,
    EvaluationResult,
    weights_fingerprint,
)
from focusvit.runs import evaluate as evaluate_runner

from .common import EpisodicModel

__all__ = ["BaselineRunner", "baseline_method_name", "evaluate_baseline"]


def baseline_method_name(model: EpisodicModel, transductive: bool = False) -> str:
    """The record name: ``"can"``, ``"can+transductive"``, ``"ctx"``, ``"prototype"``."""
    return model.method + ("+transductive" if transductive else "")


class _MapCache:
    """Encoder maps ``(C, h, w)`` of dataset items, computed once per index (eval mode) and
    computed again when the item changed: per file for datasets with ``file_stamp`` (size and
    modification time), else the whole cache when the dataset's content fingerprint changed
    (a tensor dataset edited in place)."""

    def __init__(self, dataset, model: EpisodicModel, device: torch.device):
        self.dataset, self.model, self.device = dataset, model, device
        self._maps: dict[int, Tensor] = {}
        self._watch = ContentWatch(dataset)

    def _revalidate(self, indices: Sequence[int]) -> None:
        changed = self._watch.changed(indices)
        if changed is None or self._watch.content is None:  # unknown content: never reused
            self._maps.clear()
        for index in changed or ():
            self._maps.pop(index, None)

    def __call__(self, indices: Sequence[int]) -> Tensor:
        self._revalidate(list(dict.fromkeys(indices)))
        missing = [i for i in dict.fromkeys(indices) if i not in self._maps]
        if missing:
            maps = self.model.encode(_load(self.dataset, missing, self.model).to(self.device))
            self._maps.update(zip(missing, maps, strict=True))
        return torch.stack([self._maps[i] for i in indices])


def _load(dataset, indices: Sequence[int], model: EpisodicModel) -> Tensor:
    items = [dataset.load(i) for i in indices]
    return torch.stack(items) if isinstance(items[0], Tensor) else model.preprocess(items)


@dataclass
class BaselineRunner:
    """A trained CNN baseline (CAN, CTX, prototype network) as a runner, without gradients.

    Attributes:
        cache_features: encode each image once and reuse its map in every episode (in eval mode
            an image's map does not depend on the episode); costs ``C·h·w`` floats per image.
    """

    model: EpisodicModel
    device: torch.device
    transductive: bool = False
    method_name: str | None = None
    cache_features: bool = True
    _maps: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.method_name or baseline_method_name(self.model, self.transductive)

    def settings(self) -> dict[str, Any]:
        return {
            "method": self.model.method,
            "config": asdict(self.model.config),
            "weights": weights_fingerprint(self.model),
            "transductive": self.transductive,
        }

    def run(self, data: EpisodeData) -> tuple[Tensor, Tensor, dict]:
        dataset, episode = data.dataset, data.episode
        s_labels = episode.support_labels.to(self.device)
        q_labels = episode.query_labels.to(self.device)
        with torch.no_grad():
            if self.cache_features:
                maps = self._maps.get(id(dataset))
                if maps is None or maps.dataset is not dataset:  # an id can be reused
                    maps = self._maps[id(dataset)] = _MapCache(dataset, self.model, self.device)
                predictions = self.model.predict_maps(
                    maps(episode.support), s_labels, maps(episode.query), self.transductive
                )
            else:
                key = f"baseline-{self.model.config.image_size}"
                support, _, query, _ = data.tensors(self.model.preprocess, key, self.device)
                predictions = self.model.predict(support, s_labels, query, self.transductive)
        return predictions, q_labels, {}


def evaluate_baseline(
    model: EpisodicModel,
    dataset,
    episodes: EpisodeSpec | None = None,
    output: str | os.PathLike | None = None,
    transductive: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    on_episode: Callable[[dict], None] | None = None,
    episode_ids: Sequence[int] | None = None,
    method_name: str | None = None,
    cache_features: bool = True,
    context: DistContext | None = None,
) -> EvaluationResult:
    """Evaluate a baseline on the episodes of ``episodes`` drawn from ``dataset``.

    Args:
        model: a :class:`CrossAttentionNetwork`, :class:`CrossTransformerNetwork` or
            :class:`PrototypeNetwork`; evaluated in eval mode without gradients, its training
            flags restored afterwards.
        dataset: a few-shot dataset (``labels``, ``class_names``, ``load``); images are
            preprocessed with ``model.preprocess`` (tensor datasets must already be at the
            model's ``image_size``).
        episodes: the :class:`~focusvit.runs.EpisodeSpec` (default ``EpisodeSpec()``).
        transductive: CAN's transductive inference (other methods raise).
        output: the ``.jsonl`` episode file, streamed, resumed and checked exactly like
            :func:`focusvit.evaluate` (other weights or config refuse).
        device: where to run (default: the model's device).
        method_name: record name (default :func:`baseline_method_name`).
        cache_features: see :class:`BaselineRunner`.

    Returns:
        :class:`~focusvit.runs.EvaluationResult` with per-episode records.
    """
    model._no_transduction(transductive)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    training = {module: module.training for module in model.modules()}
    runner = BaselineRunner(model, device, transductive, method_name, cache_features)
    model.eval()
    try:
        return evaluate_runner(
            runner,
            dataset,
            episodes or EpisodeSpec(),
            output=output,
            progress=progress,
            on_episode=on_episode,
            episode_ids=episode_ids,
            context=context,
        )
    finally:
        for module, mode in training.items():
            module.train(mode)
