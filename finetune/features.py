"""Frozen features computed once per image and run (docs/benchmarks.md).

Frozen-feature solvers only need each image's pooled feature, which in eval mode does not
depend on the episode. :class:`FeatureCache` computes the features of the images episodes touch,
in batches, the first time they are asked for, and every later episode and every solver reads
them. With ``directory`` the features persist as safetensors keyed by the backbone's weights
hash, its preprocessing and the dataset's content fingerprint (its files' paths, sizes and
modification times, its tensors' bytes, or its generator parameters), so another run (or another
solver) starts from them; a change of any of these is another file, and a damaged file is
computed again with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from focusvit.backbones import BackboneAdapter
from focusvit.data import ContentWatch
from focusvit.errors import CheckpointError, ConfigError
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

    The cache is keyed by the backbone's weights and preprocessing and by the dataset's content
    (:func:`~focusvit.data.dataset_fingerprint`: file paths with size and modification time for
    folders, a hash of the tensors, the generator parameters of the synthetic scenes), so an
    edited image, a renamed class or another dataset root never reads another content's
    features. Every read checks what it returns: an image file changed since its feature was
    computed (``dataset.file_stamp``) has its feature computed again, and a tensor dataset
    whose tensors changed starts afresh.

    Args:
        backbone: the frozen backbone (its weights and preprocessing key the cache).
        dataset: the few-shot dataset whose ``load(i)`` gives image ``i``.
        device: where features are computed (they are stored on the CPU).
        batch_size: images per forward pass.
        directory: optional folder of persistent caches (``features-<key>.safetensors``); a
            damaged file is computed again with a warning naming it. A dataset kind without
            ``content_fingerprint()`` is cached in memory only (with a warning).
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
        self.directory = None if directory is None else Path(directory)
        self._watch = ContentWatch(dataset)
        self._features: dict[int, Tensor] = {}
        self._dirty = False
        self._set_key(self._watch.content)
        if self.directory is not None and self.content is None:
            warnings.warn(
                f"{type(dataset).__name__} has no content_fingerprint(), so its features are not "
                f"kept in {self.directory} (another content could not be told apart); define "
                "content_fingerprint() on the dataset to cache them on disk",
                stacklevel=2,
            )
        self._load()

    def _set_key(self, content: str | None) -> None:
        """Key (and file) of the cache for the dataset content ``content``."""
        self.content = content
        self.key = fingerprint(
            {
                "weights": weights_fingerprint(self.backbone.model),
                "preprocessing": preprocessing_key(self.backbone.data_config),
                "dataset": dataset_settings(self.dataset),
                "content": content,
            }
        )
        persist = self.directory is not None and content is not None
        self.path = self.directory / f"features-{self.key}.safetensors" if persist else None

    def _load(self) -> None:
        """Read the features of :attr:`path` when it exists; a damaged file warns and is
        computed again (and rewritten by :meth:`save`)."""
        if self.path is None or not self.path.exists():
            return
        try:
            self._features = _read_features(self.path, self.key, len(self.dataset))
        except (CheckpointError, KeyError, TypeError, ValueError, RuntimeError) as error:
            warnings.warn(
                f"feature cache {self.path} is damaged ({error}); its features are computed "
                "again and the file is rewritten",
                stacklevel=3,
            )
            self._features, self._dirty = {}, True

    def __len__(self) -> int:
        return len(self._features)

    def _revalidate(self, indices: Sequence[int]) -> None:
        """Drop the features of images that changed since they were computed (per file for
        datasets with ``file_stamp``, else the whole cache when the content hash changed)."""
        changed = self._watch.changed(indices)
        if changed == []:
            return
        if changed is None:
            self._features = {}
        for index in changed or ():
            self._features.pop(index, None)
        self._set_key(self._watch.content)
        self._dirty = True
        if changed is None:  # another content: its own file may exist
            self._load()

    def __call__(self, indices: Sequence[int]) -> Tensor:
        """Features ``(len(indices), D)`` (float32, on ``device``), computing missing ones."""
        unique = list(dict.fromkeys(int(i) for i in indices))
        self._revalidate(unique)
        missing = [i for i in unique if i not in self._features]
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
            self._dirty = True
        return torch.stack([self._features[int(i)] for i in indices]).to(self.device)

    def save(self) -> Path | None:
        """Write the features to ``directory`` (when given and anything changed)."""
        if self.path is None or not self._dirty or not self._features:
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
        self._dirty = False
        return self.path


def _read_features(path: Path, key: str, count: int) -> dict[int, Tensor]:
    """``{index: feature (D,)}`` of a cache file written for ``key`` over ``count`` images.

    Raises:
        CheckpointError: an unreadable file; ValueError: one of another key or shape.
    """
    state = load_state(path)
    indices, rows = state["indices"], state["features"]
    if state["key"] != key:
        raise ConfigError(f"it holds the features of key {state['key']!r}, not {key!r}")
    if indices.ndim != 1 or rows.ndim != 2 or len(indices) != len(rows):
        raise ConfigError(
            f"indices {tuple(indices.shape)} do not match features {tuple(rows.shape)}"
        )
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= count):
        raise ConfigError(f"indices outside the dataset's {count} images")
    if not torch.isfinite(rows).all():
        raise ConfigError("non-finite features")
    return dict(zip(indices.tolist(), rows, strict=True))


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
    last few caches; a backbone whose weights changed gets a new one, and every read checks
    that the dataset's images did not change since (:class:`FeatureCache`)."""
    probe: Any = (
        weights_fingerprint(backbone.model),
        preprocessing_key(backbone.data_config),
        id(dataset),
        str(torch.device(device)),
        str(directory),
    )
    cache = _CACHES.get(probe)
    if cache is None or cache.dataset is not dataset:
        cache = FeatureCache(backbone, dataset, device, directory=directory)
        _CACHES[probe] = cache
        while len(_CACHES) > _MAX_CACHES:
            _CACHES.pop(next(iter(_CACHES)))
    return cache
