"""Typed schema of the Hydra configs (``focusvit.configs``) and the small objects they build.

The YAML files under ``configs/`` are merged into the dataclasses below (registered in Hydra's
``ConfigStore`` as ``explain_schema`` and ``fewshot_schema``), so a misspelt key or a value of
the wrong type fails while the config is composed, before any model is loaded. Groups whose
options differ in shape (``data``, ``explainer``) are checked by :func:`validate`, which
instantiates every node except the backbone (all cheap: specs, dataclasses, dataset indexes).

Every group node carries a ``_target_`` so ``hydra.utils.instantiate(cfg.<group>)`` builds it:

- ``backbone``  -> :class:`BackboneSpec` (``.load()`` loads the weights)
- ``data``      -> a few-shot dataset (``SyntheticScenes`` or :func:`image_folder`)
- ``episodes``  -> :class:`EpisodeSpec`
- ``tuner``     -> a tuner config (``focusvit.finetune.make_tuner``)
- ``fort``      -> ``focusvit.FortConfig`` (``alpha: 0`` = off)
- ``trainer``   -> :class:`TrainerSpec` (recipe overrides; ``null`` = the DESIGN.md recipe)
- ``explainer`` -> one ``Explainer`` per selected option (``explainer=[rollout_svd,gradcam]``)
- ``prompting`` -> :class:`PromptSpec`
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

CONFIG_MODULE = "focusvit.configs"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"


# ----------------------------------------------------------------------------- built objects
@dataclass(frozen=True)
class BackboneSpec:
    """What to load: ``spec`` as for :func:`focusvit.load_backbone`.

    Attributes:
        spec: ``offline:NAME``, ``timm:NAME``, ``hf:NAME_OR_DIR``, ``tiny:NAME`` or a path.
        num_classes: ``None`` keeps the pretrained head, ``0`` removes it (few-shot runs).
        image_size: square input size replacing the model's own (``None`` keeps it); a
            multiple of the patch size (e.g. 112 for the 112 px synthetic scenes at patch 14).
    """

    spec: str
    num_classes: int | None = None
    image_size: int | None = None

    def load(self):
        from focusvit.backbones import load_backbone

        backbone = load_backbone(self.spec, num_classes=self.num_classes)
        if self.image_size:
            backbone.data_config = dict(
                backbone.data_config, input_size=(3, self.image_size, self.image_size)
            )
        return backbone


@dataclass(frozen=True)
class EpisodeSpec:
    """N-way K-shot episodes with Q queries per class (DESIGN.md section 6)."""

    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15
    episodes: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_way", "k_shot", "n_query", "episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"episodes.{name} must be >= 1, got {getattr(self, name)}")

    def as_kwargs(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class TrainerSpec:
    """Overrides of the per-family recipe (``None`` keeps the recipe's value) and the device."""

    lr: float | None = None
    steps: int | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    head_init: str = "logistic"
    device: str | None = None

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"trainer.steps must be >= 0, got {self.steps}")
        if self.optimizer not in (None, "adamw", "sgd"):
            raise ValueError(f"trainer.optimizer must be adamw or sgd, got {self.optimizer!r}")
        if self.head_init not in ("prototype", "ridge", "logistic"):
            raise ValueError(
                f"trainer.head_init must be prototype, ridge or logistic, got {self.head_init!r}"
            )

    def fit_options(self) -> dict[str, Any]:
        """Keyword options for ``focusvit.evaluate`` / ``fit_task`` (``None`` values dropped)."""
        options = {
            key: getattr(self, key)
            for key in ("lr", "steps", "optimizer", "weight_decay", "momentum")
            if getattr(self, key) is not None
        }
        options["head_init"] = self.head_init
        return options


@dataclass(frozen=True)
class PromptSpec:
    """Position prompts from an explanation (``focusvit.make_prompts``)."""

    top_p: float = 14
    coverage: float | None = None
    weighting: str = "importance"

    def __post_init__(self) -> None:
        if self.weighting not in ("importance", "multi_hot"):
            raise ValueError(
                f"prompting.weighting must be importance or multi_hot, got {self.weighting!r}"
            )

    def make(self, explanation):
        from focusvit.prompting import make_prompts

        top_p = int(self.top_p) if float(self.top_p).is_integer() else float(self.top_p)
        return make_prompts(
            explanation, top_p=top_p, coverage=self.coverage, weighting=self.weighting
        )


def image_folder(path: str, split: str | None = None, split_file: str | None = None):
    """``focusvit.ImageFolderDataset`` from a config (``path`` = the dataset root)."""
    from focusvit.data import ImageFolderDataset

    return ImageFolderDataset(path, split=split, split_file=split_file)


def tuner_config(name: str, **options: Any):
    """A tuner config (``focusvit.finetune.make_tuner``); options set to ``null`` are dropped."""
    from focusvit.finetune import make_tuner

    return make_tuner(name, **{k: v for k, v in options.items() if v is not None})


def fort_config(**options: Any):
    """``focusvit.FortConfig`` from a config (lists of layers become tuples)."""
    from focusvit.finetune import FortConfig

    if isinstance(options.get("layers"), list | tuple):
        options["layers"] = tuple(int(i) for i in options["layers"])
    top_p = options.get("top_p")
    if isinstance(top_p, float) and top_p.is_integer():
        options["top_p"] = int(top_p)
    return FortConfig(**options)


# ----------------------------------------------------------------------------- schema
@dataclass
class BackboneConf:
    _target_: str = "focusvit.runconfig.BackboneSpec"
    spec: str = MISSING
    num_classes: int | None = None
    image_size: int | None = None


@dataclass
class EpisodesConf:
    _target_: str = "focusvit.runconfig.EpisodeSpec"
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15
    episodes: int = 100
    seed: int = 0


@dataclass
class TunerConf:
    _target_: str = "focusvit.runconfig.tuner_config"
    name: str = MISSING
    rank: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    targets: list[str] | None = None
    num_tokens: int | None = None
    deep: bool | None = None
    init_std: float | None = None


@dataclass
class FortConf:
    _target_: str = "focusvit.runconfig.fort_config"
    alpha: float = 0.0
    tau: float = 1.0
    layers: Any = "last"
    query_rows: str = "all"
    top_p: float = 14
    weighting: str = "importance"
    explainer: str = "rollout_svd"


@dataclass
class TrainerConf:
    _target_: str = "focusvit.runconfig.TrainerSpec"
    lr: float | None = None
    steps: int | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    head_init: str = "logistic"
    device: str | None = None


@dataclass
class PromptingConf:
    _target_: str = "focusvit.runconfig.PromptSpec"
    top_p: float = 14
    coverage: float | None = None
    weighting: str = "importance"


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
class ExplainConf:
    backbone: BackboneConf = MISSING
    explainer: Any = MISSING
    prompting: PromptingConf = MISSING
    inputs: Any = MISSING  # files / folders, "samples" (scikit-image photos) or "synthetic"
    target: int | None = None  # class to explain (None: the predicted class)
    device: str | None = None
    out: str = "outputs/explain"
    report: ExplainReportConf = field(default_factory=ExplainReportConf)


@dataclass
class FewshotConf:
    backbone: BackboneConf = MISSING
    data: Any = MISSING
    episodes: EpisodesConf = MISSING
    tuner: TunerConf = MISSING
    fort: FortConf = MISSING
    trainer: TrainerConf = MISSING
    methods: list[str] = field(default_factory=list)  # [] = the tuner, and tuner+fort if on
    progress: bool = True
    out: str = "outputs/fewshot"
    report: FewshotReportConf = field(default_factory=FewshotReportConf)


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="explain_schema", node=ExplainConf)
    store.store(name="fewshot_schema", node=FewshotConf)


register_configs()


# ----------------------------------------------------------------------------- validation
class ConfigError(ValueError):
    """A config value that cannot work; raised before any model loads."""


def instantiate(node: DictConfig | dict, what: str) -> Any:
    """``hydra.utils.instantiate`` with errors that name the config group."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, _convert_="all")
    except InstantiationException as error:
        cause = error.__cause__ or error
        raise ConfigError(f"config '{what}' is invalid: {cause}") from error


def explainer_nodes(cfg: DictConfig) -> dict[str, DictConfig]:
    """The selected explainers, ``{name: node}`` (``explainer=[rollout_svd,gradcam]``)."""
    node = cfg.explainer
    if not isinstance(node, DictConfig) or not node:
        raise ConfigError("select at least one explainer, e.g. explainer=[rollout_svd,gradcam]")
    if "_target_" in node:  # a single explainer without a package per option
        return {str(node.method): node}
    return {str(name): value for name, value in node.items()}


def fewshot_methods(cfg: DictConfig, fort) -> list[str]:
    """The methods a few-shot run evaluates (``methods`` or the tuner with/without ``+fort``)."""
    from focusvit.finetune import SOLVERS, TUNERS, parse_method

    methods = list(cfg.methods) or (
        [cfg.tuner.name, f"{cfg.tuner.name}+fort"] if fort.enabled else [cfg.tuner.name]
    )
    for method in methods:
        try:
            name, _ = parse_method(method)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if name not in SOLVERS and name not in TUNERS:
            raise ConfigError(
                f"unknown method {method!r} in methods; solvers: {', '.join(SOLVERS)}; tuners "
                f"(optionally +fort): {', '.join(TUNERS)}"
            )
    if len(set(methods)) != len(methods):
        raise ConfigError(f"methods lists a method twice: {methods}")
    return methods


def normalise_inputs(inputs: Any) -> list[str]:
    if isinstance(inputs, str | os.PathLike):
        return [str(inputs)]
    if OmegaConf.is_list(inputs) or isinstance(inputs, list | tuple):
        return [str(item) for item in inputs]
    raise ConfigError(
        f"inputs must be a path, a list of paths, 'samples' or 'synthetic', got {inputs!r}"
    )


def check_paths(paths: list[str]) -> None:
    special = {"samples", "synthetic"}
    for item in paths:
        if item.split(":")[0] not in special and not Path(item).exists():
            raise ConfigError(
                f"input {item!r} does not exist; pass image files or folders, 'samples' or "
                "'synthetic'"
            )
