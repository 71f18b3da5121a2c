"""focusvit.baselines: CNN cross-attention few-shot baselines (docs/baselines.md).

- Cross Attention Network (Hou et al., NeurIPS 2019) with transductive inference: ``can``;
- CrossTransformers (Doersch et al., NeurIPS 2020) with SimCLR episodes: ``ctx``;
- nearest prototype on pooled features of the same encoder: ``prototype`` (the reference);

on Conv-4 / ResNet-12 encoders (84×84) or any timm CNN through the backbone adapter, trained
episodically on base classes (:func:`train_episodic`) and evaluated on the same episodes and
records as the ViT methods (:func:`evaluate_baseline`).

Example::

    from focusvit.baselines import CANConfig, CrossAttentionNetwork, TrainConfig, train_episodic
    model = CrossAttentionNetwork(CANConfig(encoder="resnet12", num_classes=len(base.class_names)))
    train_episodic(model, base, val, TrainConfig(episodes=20000), checkpoint_dir="runs/can")
    print(evaluate_baseline(model, novel, EpisodeSpec(n_way=5, k_shot=1), transductive=True))
"""

from __future__ import annotations

import os
from typing import Any

from .can import (
    CANConfig,
    CrossAttentionModule,
    CrossAttentionNetwork,
    CrossAttentionOutput,
    PseudoLabelRound,
    TransductiveResult,
    class_features,
    transductive_scores,
)
from .common import CheckpointError, EpisodeBatch, EpisodicModel, config_from_dict, load_checkpoint
from .config import BASELINES, BaselineConf, load_config
from .config import model_class as _model_class
from .ctx import (
    CrossTransformer,
    CrossTransformerNetwork,
    CTXConfig,
    CTXOutput,
    aligned_prototypes,
    augment_images,
    class_attention,
    simclr_episode,
)
from .encoders import (
    AdapterEncoder,
    Conv4,
    NonSpatialBackboneError,
    ResNet12,
    SpatialEncoder,
    build_encoder,
)
from .evaluate import baseline_method_name, evaluate_baseline
from .prototype import PrototypeConfig, PrototypeNetwork
from .training import ImageCache, TrainConfig, TrainResult, episode_batch, train_episodic


def build_baseline(method: str, config: Any = None, **overrides: Any) -> EpisodicModel:
    """A fresh model of ``method`` (``can``, ``ctx``, ``prototype``) from a config dataclass or a
    mapping of its fields, with keyword ``overrides``."""
    cls = _model_class(method)
    config_cls = cls.config_class()
    if not isinstance(config, config_cls):
        config = config_from_dict(config_cls, {**dict(config or {}), **overrides})
    elif overrides:
        config = config_from_dict(config_cls, {**vars(config), **overrides})
    return cls(config)


def load_baseline(path: str | os.PathLike, map_location: str = "cpu") -> EpisodicModel:
    """The model stored in a checkpoint (``best.safetensors`` / ``last.safetensors``), whatever its method."""
    checkpoint = load_checkpoint(path, map_location)
    return _model_class(checkpoint["method"]).from_checkpoint(path, map_location)


__all__ = [
    "BASELINES",
    "AdapterEncoder",
    "BaselineConf",
    "CANConfig",
    "CTXConfig",
    "CTXOutput",
    "CheckpointError",
    "Conv4",
    "CrossAttentionModule",
    "CrossAttentionNetwork",
    "CrossAttentionOutput",
    "CrossTransformer",
    "CrossTransformerNetwork",
    "EpisodeBatch",
    "EpisodicModel",
    "ImageCache",
    "NonSpatialBackboneError",
    "PrototypeConfig",
    "PrototypeNetwork",
    "PseudoLabelRound",
    "ResNet12",
    "SpatialEncoder",
    "TrainConfig",
    "TrainResult",
    "TransductiveResult",
    "aligned_prototypes",
    "augment_images",
    "baseline_method_name",
    "build_baseline",
    "build_encoder",
    "class_attention",
    "class_features",
    "episode_batch",
    "evaluate_baseline",
    "load_baseline",
    "load_checkpoint",
    "load_config",
    "simclr_episode",
    "train_episodic",
    "transductive_scores",
]
