"""``focusvit-pretrain``: the Hydra entry point of :mod:`focusvit.pretraining`.

Composes ``configs/pretrain.yaml`` (schema :class:`PretrainConf`, registered as
``pretrain_schema``; architecture group ``pretrain_model``: ``vit_small_cpu``,
``swin_small_cpu``, ``vit_gpu``), checks every value before any scene is rendered, then trains
into ``out`` (resuming an earlier run with the same settings there). :func:`run_pretrain` takes a
composed config, for use from Python with ``hydra.compose``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import MISSING, DictConfig, OmegaConf

from focusvit.pretraining import PretrainConfig
from focusvit.runconfig import CONFIG_PATH, check_device

#: keys of the composed config that are not :class:`PretrainConfig` options
RUN_KEYS = ("name", "progress", "out")


@dataclass
class PretrainConf(PretrainConfig):
    """Schema of ``pretrain.yaml``: the library's :class:`PretrainConfig` (every option, its type
    and default, defined once) plus the run keys of the CLI."""

    # empty, so that a pretrain_model option's model_kwargs replace rather than merge into it
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = MISSING  # label of the pretrain_model option (names the default out folder)
    progress: bool = True
    out: str = "outputs/pretrain/${name}"


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="pretrain_schema", node=PretrainConf)


register_configs()


def pretrain_config(cfg: DictConfig):
    """The :class:`~focusvit.pretraining.PretrainConfig` of a composed config."""
    values = OmegaConf.to_container(cfg, resolve=True)
    values = {k: v for k, v in values.items() if k not in (*RUN_KEYS, "hydra")}
    config = PretrainConfig.from_dict(values)  # ConfigError naming the value and its fix
    check_device(config.device)
    return config


def run_pretrain(cfg: DictConfig, out_dir: str | Path | None = None) -> Path:
    """Validate, train (or resume) into ``out_dir`` (default ``cfg.out``); returns the model path."""
    import json

    from focusvit.pretraining import pretrain
    from focusvit.runs.rundir import check_out_folder

    config = pretrain_config(cfg)
    out = Path(out_dir or cfg.out)
    check_out_folder(out)
    # a run folder with other settings raises SettingsMismatchError (one line, like ConfigError)
    path = pretrain(config, out, progress=bool(cfg.progress))
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    last = history[-1] if history else {}
    seconds = sum(h["seconds"] for h in history)
    print(
        f"focusvit-pretrain: {cfg.name}: train acc {last.get('train_acc', float('nan')):.3f}, "
        f"val acc {last.get('val_acc', float('nan')):.3f} after {last.get('epoch', 0)} epochs "
        f"({seconds:.0f}s of training) -> {path}\n"
        f"  use it: focusvit.load_backbone({str(path)!r}), or "
        f"focusvit-fewshot backbone.spec={path}",
        flush=True,
    )
    return path


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="pretrain")
def _pretrain_hydra(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from focusvit.cli import _guard

    out = HydraConfig.get().runtime.output_dir
    _guard("focusvit-pretrain", lambda: run_pretrain(cfg, out))


def pretrain_main() -> None:
    """``focusvit-pretrain``: pretrain a small ViT / Swin on the synthetic base classes (``out``
    checked before anything is written; every error one line, see :mod:`focusvit.cli`)."""
    from focusvit.cli import run_entry_point

    run_entry_point("focusvit-pretrain", _pretrain_hydra)
