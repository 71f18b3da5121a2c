"""Frozen features computed once per image and run (DESIGN.md section 10).

Frozen-feature solvers only need each image's pooled feature, which in eval mode does not
depend on the episode. :class:`FeatureCache` computes the features of the images episodes touch,
in batches, the first time they are asked for, and every later episode and every solver reads
them. With ``directory`` the features persist as safetensors keyed by the backbone's weights
hash, its preprocessing and the dataset, so another run (or another solver) starts from them;
a change of any of these is another file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from focusvit.backbones import BackboneAdapter
from focusvit.runs import (
    dataset_settings,
    fingerprint,
    load_state,
    preprocessing_key,
    save_state,
    weights_fingerprint,
)

from .trainer import support_features

__all__ = ["FeatureCache", "feature_cache"]


class FeatureCache:
    """Pooled eval-mode features ``(D,)`` of a dataset's images for one backbone.

    Args:
        backbone: the frozen backbone (its weights and preprocessing key the cache).
        dataset: the few-shot dataset whose ``load(i)`` gives image ``i``.
        device: where features are computed (they are stored on the CPU).
        batch_size: images per forward pass.
        directory: optional folder of persistent caches (``<key>.safetensors``).
    """

    def __init__(
        self,
        backbone: BackboneAdapter,
        dataset,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        directory: str | os.PathLike | None = None,
    ):
        self.backbone, self.dataset = backbone, dataset
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.key = fingerprint(
            {
                "weights": weights_fingerprint(backbone.model),
                "preprocessing": preprocessing_key(backbone.data_config),
                "dataset": dataset_settings(dataset),
            }
        )
        self.path = Path(directory) / f"features-{self.key}.safetensors" if directory else None
        self._features: dict[int, Tensor] = {}
        self._saved = 0
        if self.path is not None and self.path.exists():
            state = load_state(self.path)
            if state.get("key") == self.key:
                rows = state["features"]
                self._features = dict(zip(state["indices"].tolist(), rows, strict=True))
                self._saved = len(self._features)

    def __len__(self) -> int:
        return len(self._features)

    def __call__(self, indices: Sequence[int]) -> Tensor:
        """Features ``(len(indices), D)`` (float32, on ``device``), computing missing ones."""
        missing = [i for i in dict.fromkeys(int(i) for i in indices) if i not in self._features]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            items = [self.dataset.load(i) for i in chunk]
            images = (
                torch.stack(items)
                if isinstance(items[0], Tensor)
                else self.backbone.preprocess(items)
            )
            feats = support_features(self.backbone, images.to(self.device), self.batch_size).cpu()
            self._features.update(zip(chunk, feats, strict=True))
        return torch.stack([self._features[int(i)] for i in indices]).to(self.device)

    def save(self) -> Path | None:
        """Write the features to ``directory`` (when given and anything new was computed)."""
        if self.path is None or len(self._features) == self._saved:
            return self.path
        indices = sorted(self._features)
        save_state(
            self.path,
            {
                "key": self.key,
                "indices": torch.tensor(indices, dtype=torch.long),
                "features": torch.stack([self._features[i] for i in indices]),
            },
        )
        self._saved = len(indices)
        return self.path


_CACHES: dict[tuple, FeatureCache] = {}
_MAX_CACHES = 4


def feature_cache(
    backbone: BackboneAdapter,
    dataset,
    device: torch.device | str = "cpu",
    directory: str | os.PathLike | None = None,
) -> FeatureCache:
    """The shared :class:`FeatureCache` of ``(backbone weights, preprocessing, dataset)``, so
    successive evaluations (one solver after another) compute each feature once. Holds the
    last few caches; a backbone whose weights changed gets a new one."""
    probe: Any = (
        weights_fingerprint(backbone.model),
        preprocessing_key(backbone.data_config),
        id(dataset),
        str(torch.device(device)),
        str(directory),
    )
    cache = _CACHES.get(probe)
    if cache is None:
        cache = FeatureCache(backbone, dataset, device, directory=directory)
        _CACHES[probe] = cache
        while len(_CACHES) > _MAX_CACHES:
            _CACHES.pop(next(iter(_CACHES)))
    return cache
