"""The baseline configs (``configs/baseline/*.yaml``) read through the same path as every other
config: Hydra composes the file on the schema of its method, which is the library's own
dataclasses registered in Hydra's ``ConfigStore`` (never mirrored), then
:func:`omegaconf.OmegaConf.to_object` builds them.

The schema of method ``M`` is registered as ``baseline_M_schema``: ``method``, ``model`` (the
method's config dataclass: :class:`CANConfig`, :class:`CTXConfig`, :class:`PrototypeConfig`)
and ``train`` (:class:`TrainConfig`), each with its dataclass defaults, so a YAML file holds
only the values that differ from them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from focusvit.errors import ConfigError

from .can import CANConfig, CrossAttentionNetwork
from .common import EpisodicModel
from .ctx import CrossTransformerNetwork
from .prototype import PrototypeNetwork
from .training import TrainConfig

#: method name -> model class.
BASELINES: dict[str, type[EpisodicModel]] = {
    "can": CrossAttentionNetwork,
    "ctx": CrossTransformerNetwork,
    "prototype": PrototypeNetwork,
}

#: the ConfigStore package holding the baseline YAML files
CONFIG_MODULE = "focusvit.configs"


@dataclass
class BaselineConf:
    """Schema of a baseline config: the method, its model config and the training settings.

    ``model`` holds the method's own config dataclass (typed ``Any`` here because the class
    depends on ``method``; the node registered per method is of that class)."""

    method: str = "can"
    model: Any = field(default_factory=CANConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def schema_name(method: str) -> str:
    """The ConfigStore name of ``method``'s schema (``baseline_can_schema`` ...)."""
    return f"baseline_{method}_schema"


def model_class(method: str) -> type[EpisodicModel]:
    if method not in BASELINES:
        raise ConfigError(f"unknown baseline {method!r}; use one of {', '.join(BASELINES)}")
    return BASELINES[method]


def baseline_schema(method: str) -> BaselineConf:
    """The schema node of ``method``: its config dataclasses with their defaults."""
    return BaselineConf(method=method, model=model_class(method).config_class()())


def register_configs() -> None:
    """Register ``baseline_<method>_schema`` for every method in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for method in BASELINES:
        store.store(name=schema_name(method), node=baseline_schema(method))


register_configs()


def _compose(source: str | os.PathLike, overrides: list[str]) -> DictConfig:
    """Compose a baseline YAML with Hydra: a packaged method name (``can``, ``ctx``) or a path.
    Works inside a running Hydra app too (its global state is put back afterwards)."""
    from hydra import compose, initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.initialize import get_gh_backup, restore_gh_from_backup
    from omegaconf.errors import OmegaConfBaseException

    path = Path(source)
    packaged = isinstance(source, str) and source in BASELINES and not path.exists()
    if not packaged and not path.is_file():
        raise ConfigError(
            f"baseline config {str(source)!r} is neither a YAML file nor a packaged config; pass "
            f"a path or one of {', '.join(sorted(_packaged()))}"
        )
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        if packaged:
            context = initialize_config_module(CONFIG_MODULE, version_base="1.3")
            name = f"baseline/{source}"
        else:
            context = initialize_config_dir(str(path.resolve().parent), version_base="1.3")
            name = path.stem
        with context:
            return compose(name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        cause = error.__cause__
        detail = f" ({_one_line(cause)})" if cause is not None else ""
        raise ConfigError(
            f"baseline config {str(source)!r}: {_one_line(error)}{detail}; the keys and types are "
            "those of TrainConfig (train.*) and the method's config (model.*: CANConfig, "
            "CTXConfig or PrototypeConfig)"
        ) from None
    finally:
        restore_gh_from_backup(backup)


def _packaged() -> list[str]:
    from importlib import resources

    folder = resources.files(CONFIG_MODULE).joinpath("baseline")
    return [p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml")]


def _one_line(error: BaseException) -> str:
    skip = ("full_key:", "object_type=", "reference_type=", "Set the environment variable")
    lines = [line.strip() for line in str(error).splitlines()]
    return " ".join(line for line in lines if line and not line.startswith(skip))


def load_config(
    source: str | os.PathLike | Any, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[str, Any, TrainConfig]:
    """``(method, model config, TrainConfig)`` of a baseline config.

    Args:
        source: a packaged config name (``"can"``, ``"ctx"``: ``configs/baseline/<name>.yaml``),
            the path of a YAML file (composed by Hydra: ``defaults: [baseline_can_schema,
            _self_]`` names its schema), or a dict / OmegaConf node with ``method`` and
            optionally ``model`` and ``train``. Unset values take the dataclass defaults.
        overrides: Hydra overrides of a file, e.g. ``["train.episodes=20000"]``.

    Raises:
        ConfigError: an unknown method or key, a value of the wrong type, or a value the
            dataclass refuses (the message names it).
    """
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    if isinstance(source, dict | DictConfig):
        if overrides:
            raise ConfigError("overrides apply to a config file; merge them into the dict instead")
        node = OmegaConf.create(source) if isinstance(source, dict) else source
        where = "baseline config"
    else:
        node = _compose(source, list(overrides))
        where = f"baseline config {str(source)!r}"
    unknown = sorted(set(node) - {"method", "model", "train"})
    method = node.get("method")
    if unknown or method is None:
        raise ConfigError(
            f"{where} needs a 'method' key ({', '.join(BASELINES)}) and optionally 'model' and "
            f"'train'; got keys {sorted(node)}"
        )
    schema = baseline_schema(method)
    try:
        conf = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except OmegaConfBaseException as error:
        cause = error.__cause__
        if isinstance(cause, ConfigError):  # refused by the dataclass itself
            raise ConfigError(f"{where}: {cause}") from None
        key = str(getattr(error, "full_key", None) or getattr(error, "key", None) or "")
        cls = type(schema.model) if key.startswith("model") else TrainConfig
        valid = ", ".join(cls.__dataclass_fields__)
        if isinstance(error, ConfigKeyError):
            raise ConfigError(
                f"{where}: unknown {cls.__name__} keys [{key.split('.')[-1]!r}]; valid keys are "
                f"{valid}"
            ) from None
        field_name = key.split(".")[-1] or "?"
        raise ConfigError(
            f"{where}: {key or 'a value'} is invalid ({_one_line(error).rstrip('.')}); give it "
            f"a value of the type {cls.__name__}.{field_name} takes"
        ) from None
    return conf.method, conf.model, conf.train
