"""Episodic evaluation of the baselines through the shared evaluator loop.

Episodes, JSONL records, resume and :class:`~focusvit.finetune.EvaluationResult` are those of
:func:`focusvit.finetune.evaluate`: episode ``i`` is ``sample_episode(dataset.labels, i, ...)``
for every method, so baselines and ViT methods are compared on identical tasks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from focusvit.data.episodes import Episode
from focusvit.finetune.evaluate import EvaluationResult, episode_tensors, evaluate_episodes

from .common import EpisodicModel

__all__ = ["baseline_method_name", "evaluate_baseline"]


def baseline_method_name(model: EpisodicModel, transductive: bool = False) -> str:
    """The record name: ``"can"``, ``"can+transductive"``, ``"ctx"``, ``"prototype"``."""
    return model.method + ("+transductive" if transductive else "")


def _device_of(model: EpisodicModel, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return next(model.parameters()).device


class _MapCache:
    """Encoder maps ``(C, h, w)`` of dataset items, computed once per index (eval mode)."""

    def __init__(self, dataset, model: EpisodicModel, device: torch.device):
        self.dataset, self.model, self.device = dataset, model, device
        self._maps: dict[int, Tensor] = {}

    def __call__(self, indices: Sequence[int]) -> Tensor:
        missing = [i for i in dict.fromkeys(indices) if i not in self._maps]
        if missing:
            items = [self.dataset.load(i) for i in missing]
            if isinstance(items[0], Tensor):
                images = torch.stack(items)
            else:
                images = self.model.preprocess(items)
            maps = self.model.encode(images.to(self.device))
            self._maps.update(zip(missing, maps, strict=True))
        return torch.stack([self._maps[i] for i in indices])


def evaluate_baseline(
    model: EpisodicModel,
    dataset,
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 15,
    episodes: int = 100,
    seed: int = 0,
    output: str | os.PathLike | None = None,
    transductive: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    on_episode: Callable[[dict], None] | None = None,
    episode_ids: Sequence[int] | None = None,
    method_name: str | None = None,
    cache_features: bool = True,
) -> EvaluationResult:
    """Evaluate a baseline on ``episodes`` N-way K-shot episodes of ``dataset``.

    Args:
        model: a :class:`CrossAttentionNetwork`, :class:`CrossTransformerNetwork` or
            :class:`PrototypeNetwork`; evaluated in eval mode without gradients, its training
            flags restored afterwards.
        dataset: a few-shot dataset (``labels``, ``class_names``, ``load``); images are
            preprocessed with ``model.preprocess`` (tensor datasets must already be at the
            model's ``image_size``).
        transductive: CAN's transductive inference (other methods raise).
        output: JSONL file, streamed and resumed exactly like :func:`focusvit.finetune.evaluate`.
        device: where to run (default: the model's device).
        method_name: record name (default :func:`baseline_method_name`).
        cache_features: encode each image once and reuse its map in every episode (in eval
            mode an image's map does not depend on the episode); costs ``C·h·w`` floats per
            image of the dataset that episodes touch.

    Returns:
        :class:`EvaluationResult` with per-episode records.
    """
    model._no_transduction(transductive)
    device = _device_of(model, device)
    model.to(device)
    training = {module: module.training for module in model.modules()}
    maps = _MapCache(dataset, model, device) if cache_features else None

    def run(episode: Episode) -> tuple[Tensor, Tensor, dict]:
        s_labels, q_labels = episode.support_labels.to(device), episode.query_labels.to(device)
        with torch.no_grad():
            if maps is not None:
                s_maps, q_maps = maps(episode.support), maps(episode.query)
                predictions = model.predict_maps(s_maps, s_labels, q_maps, transductive)
            else:
                support, _, query, _ = episode_tensors(dataset, episode, model, device)
                predictions = model.predict(support, s_labels, query, transductive)
        return predictions, q_labels, {}

    model.eval()
    try:
        return evaluate_episodes(
            method_name or baseline_method_name(model, transductive),
            dataset,
            run,
            n_way=n_way,
            k_shot=k_shot,
            n_query=n_query,
            episodes=episodes,
            seed=seed,
            output=output,
            progress=progress,
            on_episode=on_episode,
            episode_ids=episode_ids,
        )
    finally:
        for module, mode in training.items():
            module.train(mode)
