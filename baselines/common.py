"""Pieces shared by the baselines: the episode batch, the model base class, config validation,
the checkpoint format and its errors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from focusvit.checks import is_finite_number, is_number, is_whole_number
from focusvit.errors import CheckpointError, ConfigError, UnsupportedMethodError
from focusvit.runs import load_state

from .encoders import SpatialEncoder, build_encoder

__all__ = [
    "CheckpointError",
    "EncoderConfig",
    "EpisodeBatch",
    "EpisodicModel",
    "check_labels",
    "config_from_dict",
    "load_checkpoint",
]


@dataclass(frozen=True)
class EpisodeBatch:
    """One training episode as tensors.

    Attributes:
        support: ``(S, 3, H, W)`` images; support_labels ``(S,)`` in ``0..N-1``.
        query: ``(Q, 3, H, W)`` images; query_labels ``(Q,)`` in ``0..N-1``.
        query_classes: ``(Q,)`` dataset (global base-class) labels of the queries, or ``None``
            for instance-discrimination (SimCLR) episodes, which have no global classes.
        kind: ``"episode"`` or ``"simclr"``.
    """

    support: Tensor
    support_labels: Tensor
    query: Tensor
    query_labels: Tensor
    query_classes: Tensor | None = None
    kind: str = "episode"

    @property
    def n_way(self) -> int:
        return int(self.support_labels.max()) + 1

    def to(self, device: torch.device | str) -> EpisodeBatch:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)


def check_labels(support_labels: Tensor, n_way: int | None = None) -> int:
    """Episode way N from ``support_labels (S,)``; every class ``0..N-1`` needs a support image."""
    if support_labels.ndim != 1 or support_labels.numel() == 0:
        raise ConfigError(
            f"support_labels must be a non-empty (S,) tensor, got {support_labels.shape}"
        )
    n_way = n_way or int(support_labels.max()) + 1
    present = torch.bincount(support_labels.long().cpu(), minlength=n_way)
    if (present == 0).any() or support_labels.min() < 0 or len(present) > n_way:
        raise ConfigError(
            f"support labels must cover every class 0..{n_way - 1} with at least one image; got "
            f"counts {present.tolist()}; relabel the episode with episode labels 0..N-1"
        )
    return n_way


@dataclass
class EncoderConfig:
    """The encoder part shared by the baseline configs.

    Attributes:
        encoder: ``conv4``, ``resnet12``, ``resnet12-narrow`` or a ``load_backbone`` spec of a CNN.
        widths: optional channel widths (one for Conv-4, four for ResNet-12).
        image_size: square input side (84 in both papers' miniImageNet setting).
    """

    encoder: str = "resnet12"
    widths: list[int] | None = None
    image_size: int = 84

    def _check_encoder(self) -> None:
        if not isinstance(self.encoder, str) or not self.encoder:
            raise ConfigError(f"encoder must be a name or a backbone spec, got {self.encoder!r}")
        if not isinstance(self.image_size, int) or self.image_size < 8:
            raise ConfigError(f"image_size must be an integer >= 8, got {self.image_size!r}")
        if self.widths is not None:
            self.widths = [int(w) for w in self.widths]
            if any(w < 1 for w in self.widths):
                raise ConfigError(f"widths must be positive, got {self.widths}")


def _positive(name: str, value: Any, integer: bool = False) -> None:
    """Refuse a ``value`` that is no number > 0 (a bool, a string, NaN, inf), or with
    ``integer`` no whole number >= 1 (``2.5``)."""
    ok = is_whole_number(value, 1) if integer else is_finite_number(value) and value > 0
    if not ok:
        what = "a positive integer" if integer else "a finite number > 0"
        raise ConfigError(f"{name} must be {what}, got {value!r}")


def _non_negative(name: str, value: Any) -> None:
    """Refuse a ``value`` that is no finite number >= 0 (a bool, a string, NaN, inf, -1)."""
    if not is_finite_number(value) or not value >= 0:
        raise ConfigError(
            f"{name} must be a finite number >= 0, got {value!r}; pass e.g. {name}=0 (off)"
        )


def _fraction(name: str, value: Any) -> None:
    if not is_number(value) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be in [0, 1], got {value!r}")


def config_from_dict(cls: type, values: dict | None) -> Any:
    """Build config dataclass ``cls`` from a mapping (e.g. an OmegaConf node), naming unknown keys."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} keys {unknown}; valid keys are {', '.join(sorted(known))}"
        )
    return cls(
        **{
            k: list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
            for k, v in values.items()
        }
    )


class EpisodicModel(nn.Module):
    """Base of the baseline models: an encoder plus a method-specific episode head.

    Subclasses set ``method`` and implement :meth:`loss` and :meth:`predict_maps`.
    """

    method: ClassVar[str] = ""
    supports_transduction: ClassVar[bool] = False

    def __init__(self, config: Any, encoder: SpatialEncoder | None = None):
        super().__init__()
        self.config = config
        self.encoder = encoder or build_encoder(config.encoder, config.image_size, config.widths)
        self.feature_size = self.encoder.feature_size(config.image_size)

    @property
    def data_config(self) -> dict:
        config = dict(self.encoder.data_config)
        config["input_size"] = (3, self.config.image_size, self.config.image_size)
        return config

    def preprocess(self, images: Sequence[Any]) -> Tensor:
        """PIL images / arrays / paths -> ``(B, 3, S, S)`` normalised at ``config.image_size``."""
        from focusvit.data.images import to_batch

        return to_batch(images, self.data_config)

    def encode(self, images: Tensor) -> Tensor:
        """``(B, 3, S, S)`` -> feature maps ``(B, C, h, w)``."""
        maps = self.encoder(images)
        if tuple(maps.shape[-2:]) != self.feature_size:
            raise ConfigError(
                f"images of size {tuple(images.shape[-2:])} give {tuple(maps.shape[-2:])} feature "
                f"maps, but this {self.method} model was built for {self.config.image_size} px "
                f"inputs ({self.feature_size} maps); resize the images to {self.config.image_size}"
            )
        return maps

    def loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, float]]:
        """Training loss of one episode and scalar logs."""
        raise NotImplementedError

    def predict(
        self, support: Tensor, support_labels: Tensor, query: Tensor, transductive: bool = False
    ) -> Tensor:
        """Episode labels ``(Q,)`` of ``query (Q, 3, S, S)`` given ``support (S, 3, S, S)``."""
        return self.predict_maps(
            self.encode(support), support_labels, self.encode(query), transductive
        )

    def predict_maps(
        self,
        support_maps: Tensor,
        support_labels: Tensor,
        query_maps: Tensor,
        transductive: bool = False,
    ) -> Tensor:
        """Episode labels ``(Q,)`` from encoder maps ``(S, C, h, w)`` and ``(Q, C, h, w)``."""
        raise NotImplementedError

    def prepare_episode(self, batch: EpisodeBatch, rng: np.random.Generator) -> EpisodeBatch:
        """Hook to transform a training episode (CrossTransformers mixes in SimCLR episodes)."""
        return batch

    def check_train_classes(self, num_classes: int) -> None:
        """Raise when the model cannot be trained on a dataset with ``num_classes`` classes."""

    def _no_transduction(self, transductive: bool) -> None:
        if transductive and not self.supports_transduction:
            raise UnsupportedMethodError(
                f"{self.method} has no transductive inference; only CAN (method 'can') has one, "
                "evaluate with transductive=False"
            )

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict:
        """What identifies the model in a checkpoint: method, config and weights."""
        return {"method": self.method, "config": asdict(self.config), "model": self.state_dict()}

    def load_checkpoint_state(self, checkpoint: dict, source: str = "checkpoint") -> None:
        """Load weights from :meth:`checkpoint_state` output, refusing another method or config."""
        check_checkpoint(checkpoint, self.method, asdict(self.config), source)
        self.load_state_dict(checkpoint["model"])

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str = "cpu") -> EpisodicModel:
        """Rebuild a model of this class from a checkpoint file written by training."""
        checkpoint = load_checkpoint(path, map_location)
        check_checkpoint(checkpoint, cls.method, None, str(path))
        model = cls(config_from_dict(cls.config_class(), checkpoint["config"]))
        try:
            model.load_state_dict(checkpoint["model"])
        except RuntimeError as error:
            raise CheckpointError(
                f"the weights in {path} do not fit the encoder built from encoder="
                f"{model.config.encoder!r}; a model trained with a custom encoder object must be "
                "rebuilt with that encoder and loaded with model.load_checkpoint_state(checkpoint)"
            ) from error
        return model

    @classmethod
    def config_class(cls) -> type:
        raise NotImplementedError


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """Read a baseline checkpoint (``.safetensors``, never unpickled); raise
    :class:`CheckpointError` when it is missing, damaged or not a baseline checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; train first or fix the path")
    checkpoint = load_state(path, map_location=map_location)
    if not isinstance(checkpoint, dict) or "method" not in checkpoint or "model" not in checkpoint:
        raise CheckpointError(
            f"{path} is not a focusvit baseline checkpoint (no 'method'/'model' entries); pass a "
            "file written by focusvit.baselines.train_episodic"
        )
    return checkpoint


def check_checkpoint(checkpoint: dict, method: str, config: dict | None, source: str) -> None:
    """Raise :class:`CheckpointError` naming the fix when ``checkpoint`` is of another method or
    (when ``config`` is given) another model configuration."""
    stored = checkpoint.get("method")
    if stored != method:
        raise CheckpointError(
            f"{source} holds a {stored!r} model, not {method!r}; load it with "
            f"focusvit.baselines.load_baseline(path) (which builds the right model), or point to "
            f"a {method!r} checkpoint"
        )
    if config is not None and checkpoint.get("config") != config:
        diff = {
            key: (checkpoint.get("config", {}).get(key), value)
            for key, value in config.items()
            if checkpoint.get("config", {}).get(key) != value
        }
        raise CheckpointError(
            f"{source} was written by a {method} model with another configuration "
            f"(stored vs requested: {diff}); use the stored configuration or a new checkpoint "
            "directory"
        )
