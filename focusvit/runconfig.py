"""The Hydra schema of the CLIs: the library's own config dataclasses, registered in Hydra's
``ConfigStore`` (never mirrored), plus the few run-level options of the CLIs.

- ``backbone``  -> :class:`focusvit.BackboneSpec`
- ``episodes``  -> :class:`focusvit.EpisodeSpec`
- ``tuner``     -> one of the tuner configs (``LoraConfig``, ``SSFConfig``, ``VPTConfig``,
  ``FullConfig``, ``LinearConfig``), registered as the options ``tuner=lora`` ... directly from
  the dataclasses
- ``fort``      -> :class:`focusvit.FortConfig` (``fort=recipe``: every value from docs/recipes.md
  recipe of the family and tuner; ``fort=off``: no attention loss)
- ``trainer``   -> :class:`focusvit.FitOptions` (recipe overrides and head init)
- ``data``      -> a few-shot dataset, built with ``_target_`` (``SyntheticScenes`` or
  :func:`image_folder`)
- ``explainer`` -> one ``Explainer`` per selected option (``explainer=[rollout_svd,gradcam]``)
- ``prompting`` -> :class:`PromptSpec`

A misspelt key or a value of the wrong type fails while the config is composed; a value the
dataclass refuses fails in :func:`build`, before any model is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from focusvit.checks import is_number
from focusvit.errors import ConfigError
from focusvit.finetune import TUNERS, FitOptions, FortConfig
from focusvit.prompting.prompts import check_prompt_size
from focusvit.runs import BackboneSpec, EpisodeSpec

CONFIG_MODULE = "focusvit.configs"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"

__all__ = [
    "CONFIG_PATH",
    "ConfigError",
    "ExplainConf",
    "FewshotConf",
    "PromptSpec",
    "build",
    "check_device",
    "check_paths",
    "explainer_nodes",
    "image_folder",
    "instantiate",
    "normalise_inputs",
    "register_configs",
]


def check_fraction(value: Any, name: str, example: float) -> None:
    """Refuse a fraction outside ``(0, 1]`` (NaN included); ``None`` is unset."""
    if value is None:
        return
    if not is_number(value) or not 0 < value <= 1:
        raise ConfigError(
            f"{name} must be a fraction in (0, 1], got {value!r}; e.g. {name}={example}"
        )


@dataclass
class PromptSpec:
    """Position prompts of ``focusvit-explain`` (arguments of :func:`focusvit.make_prompts`).

    Attributes:
        top_k: prompt size as a patch count (FORT: 14 of 196 at 224/16).
        top_fraction: prompt size as a fraction of the patches (give one of the two).
        coverage: instead, the fewest patches holding this fraction of the score mass.
        weighting: ``importance`` (official) or ``multi_hot`` targets.
    """

    top_k: int | None = 14
    top_fraction: float | None = None
    coverage: float | None = None
    weighting: str = "importance"

    def __post_init__(self) -> None:
        if self.top_fraction is not None and self.top_k is not None:
            self.top_k = None  # a fraction given on the command line replaces the default count
        if self.top_k is None and self.top_fraction is None and self.coverage is None:
            raise ConfigError("prompting needs top_k, top_fraction or coverage")
        check_prompt_size(self.top_k, self.top_fraction, option="prompting.")
        check_fraction(self.coverage, "prompting.coverage", 0.5)
        if self.weighting not in ("importance", "multi_hot"):
            raise ConfigError(
                f"prompting.weighting must be importance or multi_hot, got {self.weighting!r}"
            )

    def count(self, num_patches: int, where: str = "the map") -> int | None:
        """The prompt size on ``num_patches`` patches (``None`` for ``coverage``); a size the
        grid cannot hold raises :class:`ConfigError` naming the option to change."""
        if self.coverage is not None:
            return None
        from focusvit.prompting.prompts import prompt_count

        check_prompt_size(
            self.top_k, self.top_fraction, option="prompting.", capacity=num_patches,
            where=f"the {num_patches} patches of {where}",
            fix="(FORT: 14 of 196), or prompting=top_fraction (14/196 of any grid)",
        )  # fmt: skip
        return prompt_count(num_patches, self.top_k, self.top_fraction)

    def make(self, explanation):
        from focusvit.prompting import make_prompts

        self.count(int(explanation.scores[0].numel()), f"the {explanation.method} map")
        sizes = (
            {}
            if self.coverage is not None
            else {"top_k": self.top_k, "top_fraction": self.top_fraction}
        )
        return make_prompts(explanation, coverage=self.coverage, weighting=self.weighting, **sizes)


def image_folder(
    path: str,
    split: str | None = None,
    split_file: str | None = None,
    mask_root: str | None = None,
):
    """``focusvit.ImageFolderDataset`` from a config (``path`` = the dataset root; ``mask_root``
    = a parallel folder of object masks, for the attention-on-object report and
    ``fort.prompts=ground_truth``)."""
    from focusvit.data import ImageFolderDataset

    if split is not None and not split_file:
        raise ConfigError(
            f"data.split={split} needs data.split_file (a file of '<split> <class folder>' lines, "
            f"or a folder of <split>.txt files), e.g. data.split_file=/data/cub/splits; or drop "
            "data.split to use every class folder"
        )

    return ImageFolderDataset(path, split=split, split_file=split_file, mask_root=mask_root)


# ----------------------------------------------------------------------------- run-level schema
@dataclass
class ExplainReportConf:
    """Explanation report options."""

    deletion_steps: int = 16  # steps of the deletion / insertion curves (0 = skip them)
    baseline: str = "mean"  # what removed patches become: mean, blur, zeros
    max_images: int = 32
    batch_size: int = 8
    dpi: int = 100


@dataclass
class FewshotReportConf:
    """Few-shot report options."""

    focus_episodes: int = 1  # episodes analysed before/after fine-tuning (0 = none)
    max_queries: int = 5  # query images shown per episode
    coverage: float = 0.95  # attention mass the coverage count covers
    dpi: int = 100


@dataclass
class AlphaSelectionConf:
    """``select_alpha``: choose the attention-loss weight α on validation classes before the
    test episodes (docs/concepts/loss.md; :func:`focusvit.finetune.select_alpha`).

    The tuner is evaluated without the loss and with each candidate α on ``episodes`` episodes
    of the dataset's ``split`` (validation classes; the same data group with another split).
    ``rule: paired`` (default): an α > 0 is chosen only when its paired gain over α = 0 on those
    episodes has a 95% interval above zero (the largest such gain wins), else α = 0;
    ``rule: best_mean``: the highest mean, α = 0 winning ties (the earlier rule). The rule is in
    the run's ``settings.json``, so a run folder never mixes the two. Every ``+fort`` method
    then uses the chosen α (α = 0 trains exactly as without the loss). ``alphas: []`` turns the
    selection off (the fort group's α is used).
    """

    alphas: list[float] = field(default_factory=list)
    episodes: int = 20
    split: str = "val"
    rule: str = "paired"


@dataclass
class ExplainConf:
    backbone: BackboneSpec = MISSING
    explainer: Any = MISSING
    prompting: PromptSpec = MISSING
    inputs: Any = MISSING  # files / folders, "samples" (scikit-image photos) or "synthetic"
    target: int | None = None  # class to explain (None: the predicted class)
    device: str | None = None
    progress: bool = True  # a bar per image and explainer (only when stderr is a terminal)
    out: str = "outputs/explain"
    report: ExplainReportConf = field(default_factory=ExplainReportConf)


@dataclass
class FewshotConf:
    backbone: BackboneSpec = MISSING
    data: Any = MISSING
    episodes: EpisodeSpec = MISSING
    tuner: Any = MISSING  # one of the tuner dataclasses (tuner=lora, ...)
    fort: FortConfig | None = None  # fort=recipe, or fort=off for no attention loss
    trainer: FitOptions = field(default_factory=FitOptions)
    device: str | None = None  # cuda / cpu / cuda:1 (default: CUDA when available)
    methods: list[str] = field(default_factory=list)  # [] = the tuner, and tuner+fort if on
    # episodes fine-tuned together (LoRA / SSF on a columnar ViT): a whole number >= 1, or
    # "auto" = 8 on CUDA (where the tuner can be batched) and 1 elsewhere
    tasks_per_batch: Any = 1
    progress: bool = True
    out: str = "outputs/fewshot"
    report: FewshotReportConf = field(default_factory=FewshotReportConf)
    select_alpha: AlphaSelectionConf = field(default_factory=AlphaSelectionConf)


def register_configs() -> None:
    """Register the schemas and the tuner options with Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="explain_schema", node=ExplainConf)
    store.store(name="fewshot_schema", node=FewshotConf)
    for name, config_class in TUNERS.items():
        store.store(group="tuner", name=name, node=config_class)


register_configs()


# ----------------------------------------------------------------------------- building
def instantiate(node: DictConfig | dict, what: str) -> Any:
    """``hydra.utils.instantiate`` for ``_target_`` nodes (datasets, explainers), or the
    library dataclass of a structured node; errors name the config group."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate
    from omegaconf.errors import MissingMandatoryValue

    try:
        if isinstance(node, DictConfig) and "_target_" not in node:
            return OmegaConf.to_object(node)
        return hydra_instantiate(node, _convert_="all")
    except MissingMandatoryValue as error:
        key = getattr(error, "full_key", None) or what
        raise ConfigError(f"{key} is required: give it on the command line, {key}=VALUE") from None
    except InstantiationException as error:
        cause = error.__cause__ or error
        raise ConfigError(f"config '{what}' is invalid: {cause}") from error
    except (ValueError, TypeError) as error:
        raise ConfigError(f"config '{what}' is invalid: {error}") from error


def build(cfg: DictConfig, group: str) -> Any:
    """The library object of ``cfg.<group>`` (``None`` for a deselected optional group)."""
    node = cfg[group]
    return None if node is None else instantiate(node, group)


def explainer_nodes(cfg: DictConfig) -> dict[str, DictConfig]:
    """The selected explainers, ``{name: node}`` (``explainer=[rollout_svd,gradcam]``)."""
    node = cfg.explainer
    if not isinstance(node, DictConfig) or not node:
        raise ConfigError("select at least one explainer, e.g. explainer=[rollout_svd,gradcam]")
    if "_target_" in node:  # a single explainer without a package per option
        return {str(node.method): node}
    return {str(name): value for name, value in node.items()}


def normalise_inputs(inputs: Any) -> list[str]:
    if isinstance(inputs, str | os.PathLike):
        return [str(inputs)]
    if OmegaConf.is_list(inputs) or isinstance(inputs, list | tuple):
        return [str(item) for item in inputs]
    raise ConfigError(
        f"inputs must be a path, a list of paths, 'samples' or 'synthetic', got {inputs!r}"
    )


def check_device(device: str | None) -> None:
    """Refuse a ``device`` torch does not know, or CUDA / MPS where there is none
    (:func:`focusvit.finetune.evaluate.resolve_device`); ``None`` picks one later."""
    if device is not None:
        from focusvit.finetune.evaluate import resolve_device

        resolve_device(device)


def check_paths(paths: list[str]) -> None:
    special = {"samples", "synthetic"}
    for item in paths:
        if item.split(":")[0] not in special and not Path(item).exists():
            raise ConfigError(
                f"input {item!r} does not exist; pass image files or folders, 'samples' or "
                "'synthetic'"
            )
