"""Few-shot evaluation of ViT methods: runners for the run layer and the explicit API.

A method is either a frozen-feature **solver** (``prototype``, ``knn``, ``ridge``, ``svm``,
``logistic``) or a **tuner** (``linear``, ``full``, ``lora``, ``ssf``, ``vpt``), the latter
optionally with the attention-enhancement loss (``fort=FortConfig(...)``). The strings
``"lora+fort"`` are a CLI shorthand only (:func:`parse_method`). Options that would be ignored
are refused: the attention loss on a solver, on the linear probe (its features are frozen) or on
a model without attention.

Episodes, resume, settings records and sharding are those of :mod:`focusvit.runs`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from focusvit.backbones import BackboneAdapter
from focusvit.checks import is_whole_number
from focusvit.data.datasets import check_dataset_kind
from focusvit.data.episodes import Episode
from focusvit.errors import ArgumentError, ConfigError
from focusvit.runs import (
    DistContext,
    EpisodeData,
    EpisodeSpec,
    EvaluationResult,
    preprocessing_key,
    to_plain,
    weights_fingerprint,
)
from focusvit.runs import evaluate as evaluate_runner
from focusvit.runs.spec import check_spec_kind

from .attention_loss import (
    FortConfig,
    check_fort_value,
    fort_settings,
    masks_for_prompts,
    refuse_fort,
    resolve_fort,
)
from .features import feature_cache
from .heads import DEFAULT_TRANSFORM, FEATURE_TRANSFORMS, SOLVERS, solve
from .recipes import FitOptions, recipe_for
from .recipes import fit_options as checked_fit_options
from .trainer import fit_task, support_features
from .tuners import TUNERS, TunerConfig, make_tuner

__all__ = [
    "MethodChoice",
    "SolverRunner",
    "TunerRunner",
    "backbone_settings",
    "episode_tensors",
    "evaluate",
    "make_runner",
    "parse_method",
]


# ----------------------------------------------------------------------------- CLI shorthand
@dataclass(frozen=True)
class MethodChoice:
    """A parsed method string: exactly one of ``tuner`` / ``solver``, and the attention loss."""

    tuner: str | None = None
    solver: str | None = None
    fort: bool = False

    @property
    def name(self) -> str:
        return (self.tuner or self.solver or "") + ("+fort" if self.fort else "")


def parse_method(method: str) -> MethodChoice:
    """``"lora+fort"`` -> ``MethodChoice(tuner="lora", fort=True)``; ``"ridge"`` -> a solver.

    The CLI shorthand of :func:`evaluate`'s ``tuner=`` / ``solver=`` / ``fort=``. Refuses what
    cannot be honoured (``+fort`` on a solver or the linear probe, unknown names).
    """
    name, plus, suffix = method.partition("+")
    if plus and suffix != "fort":
        raise ConfigError(f"unknown method suffix {suffix!r} in {method!r}; only '+fort' exists")
    fort = bool(plus)
    if name in SOLVERS:
        choice = MethodChoice(solver=name, fort=fort)
    elif name in TUNERS:
        choice = MethodChoice(tuner=name, fort=fort)
    else:
        raise ConfigError(
            f"unknown method {method!r}; solvers: {', '.join(SOLVERS)}; tuners (optionally "
            f"+fort): {', '.join(TUNERS)}"
        )
    refuse_fort(choice.tuner, choice.solver, fort)
    return choice


# ----------------------------------------------------------------------------- settings
def backbone_settings(backbone: BackboneAdapter) -> dict[str, Any]:
    """What identifies a backbone in a settings record: name, family, preprocessing and a hash
    of its weights (so another checkpoint of the same architecture is another setting)."""
    config = backbone.data_config
    return {
        "name": backbone.name,
        "family": backbone.family,
        "weights": weights_fingerprint(backbone.model),
        "input_size": list(config.get("input_size", ())),
        "mean": list(config.get("mean", ())),
        "std": list(config.get("std", ())),
        "crop_pct": config.get("crop_pct"),
        "interpolation": config.get("interpolation"),
        # the resize policy only when it is not the default centre crop, so records written
        # before the policy existed still match
        **({"resize": config["resize"]} if config.get("resize", "crop") != "crop" else {}),
    }


def episode_tensors(
    dataset, episode: Episode, backbone, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Preprocessed ``(support (M,3,H,W), support_labels (M,), query (Q,3,H,W), query_labels)``
    of an episode (``backbone.preprocess`` for image datasets; tensor datasets as they are)."""

    def load(indices: Sequence[int]) -> Tensor:
        items = [dataset.load(i) for i in indices]
        if isinstance(items[0], Tensor):
            return torch.stack(items)
        return backbone.preprocess(items)

    return (
        load(episode.support).to(device),
        episode.support_labels.to(device),
        load(episode.query).to(device),
        episode.query_labels.to(device),
    )


# ----------------------------------------------------------------------------- runners
def _episode_tensors(data: EpisodeData, backbone: BackboneAdapter, device) -> tuple[Tensor, ...]:
    """The episode's preprocessed tensors, shared by every runner of the same preprocessing."""
    key = preprocessing_key(backbone.data_config)
    return data.tensors(backbone.preprocess, key, device)


@dataclass
class SolverRunner:
    """A frozen-feature solver (:data:`~focusvit.finetune.heads.SOLVERS`) on pooled features.

    Attributes:
        transform: SimpleShot feature transform before solving (``none``, ``l2n``, ``cl2n``;
            :func:`~focusvit.finetune.heads.transform_features`).
        cache_features: read each image's feature from a :class:`FeatureCache` (computed once
            per image and run) instead of running the backbone on every episode's images.
        cache_dir: optional folder where the feature cache persists between runs.
    """

    backbone: BackboneAdapter
    solver: str
    device: torch.device
    transform: str = DEFAULT_TRANSFORM
    cache_features: bool = True
    cache_dir: str | None = None

    @property
    def name(self) -> str:
        return self.solver

    def settings(self) -> dict[str, Any]:
        return {
            "solver": self.solver,
            "transform": self.transform,
            "backbone": backbone_settings(self.backbone),
        }

    def run(self, data: EpisodeData) -> tuple[Tensor, Tensor, dict]:
        episode = data.episode
        if self.cache_features:
            cache = feature_cache(self.backbone, data.dataset, self.device, self.cache_dir)
            feats_s, feats_q = cache(episode.support), cache(episode.query)
            labels = episode.support_labels.to(self.device)
            predictions = solve(self.solver, feats_s, labels, feats_q, transform=self.transform)
            return predictions, episode.query_labels.to(self.device), {}
        support, s_labels, query, q_labels = _episode_tensors(data, self.backbone, self.device)
        return self.predict(support, s_labels, query)[0], q_labels, {}

    def predict(
        self, support: Tensor, support_labels: Tensor, query: Tensor
    ) -> tuple[Tensor, dict]:
        """Query predictions ``(Q,)`` from preprocessed support ``(M,3,H,W)`` and query images."""
        feats_s = support_features(self.backbone, support)
        feats_q = support_features(self.backbone, query)
        return solve(self.solver, feats_s, support_labels, feats_q, transform=self.transform), {}


@dataclass
class TunerRunner:
    """Fine-tune a fresh copy of a tuner's parameters per task (:func:`fit_task`), optionally
    with the attention-enhancement loss.

    Attributes:
        tasks_per_batch: episodes fine-tuned together in one batched computation (LoRA and SSF
            on columnar ViTs; :mod:`focusvit.finetune.batched`); 1 fine-tunes one at a time.
    """

    backbone: BackboneAdapter
    tuner: TunerConfig
    fort: FortConfig | None
    options: FitOptions
    device: torch.device
    tasks_per_batch: int = 1
    label: str | None = None  # record name instead of tuner[+fort] (e.g. one per α candidate)

    @property
    def name(self) -> str:
        return self.label or self.tuner.name + ("+fort" if self.fort is not None else "")

    def settings(self) -> dict[str, Any]:
        family, name = self.backbone.family, self.tuner.name
        recipe = recipe_for(family, name).override(**self.options.recipe_overrides())
        fort = resolve_fort(self.backbone, name, self.fort)
        return {
            "tuner": {"name": name, **to_plain(asdict(self.tuner))},
            "fort": fort_settings(fort),
            "recipe": to_plain(asdict(recipe)),
            "head_init": self.options.head_init,
            "backbone": backbone_settings(self.backbone),
        }

    def run(self, data: EpisodeData) -> tuple[Tensor, Tensor, dict]:
        support, s_labels, query, q_labels = _episode_tensors(data, self.backbone, self.device)
        names = self._class_names(data)
        masks = self._support_masks(data)
        predictions, info = self.predict(support, s_labels, query, data.shared, names, masks)
        return predictions, q_labels, info

    def _support_masks(self, data: EpisodeData) -> Tensor | None:
        """The support images' object masks ``(M, H, W)``, aligned with their tensors, when
        the prompts come from them (``FortConfig(prompts="ground_truth")``; else None)."""
        if self.fort is None or self.fort.prompts != "ground_truth":
            return None
        support = data.episode.support
        preprocessed = isinstance(data.items(support[:1])[0], Tensor)
        return masks_for_prompts(self.fort, self.backbone, data.dataset, support, preprocessed)

    def _class_names(self, data: EpisodeData) -> list[str] | None:
        """The episode's class names in label order, for ``head_init="text"`` (else None)."""
        names = getattr(data.dataset, "class_names", None)
        if self.options.head_init != "text" or names is None:
            return None
        return [str(names[c]) for c in data.episode.classes]

    def run_batch(self, datas: list[EpisodeData]) -> list[tuple[Tensor, Tensor, dict]]:
        """Episodes ``tasks_per_batch`` at a time in one batched computation
        (:func:`~focusvit.finetune.batched.fit_predict_batched`); one at a time when
        ``tasks_per_batch`` is 1 or the tasks cannot be batched (e.g. other image sizes)."""
        from .batched import BatchingUnsupportedError, fit_predict_batched

        outcomes: list[tuple[Tensor, Tensor, dict]] = []
        size = max(1, self.tasks_per_batch)
        for start in range(0, len(datas), size):
            group = datas[start : start + size]
            tensors = [_episode_tensors(d, self.backbone, self.device) for d in group]
            results = None
            if len(group) > 1 and self.options.head_init != "text":  # batched: no class names
                try:
                    results = fit_predict_batched(
                        self.backbone, [t[0] for t in tensors], [t[1] for t in tensors],
                        [t[2] for t in tensors], self.tuner, self.fort, self.options,
                        [d.seed for d in group], shared=[d.shared for d in group],
                        support_masks=[self._support_masks(d) for d in group],
                    )  # fmt: skip
                except BatchingUnsupportedError:
                    results = None
            if results is None:
                results = []
                for data, (support, labels, query, _) in zip(group, tensors, strict=True):
                    torch.manual_seed(data.seed)
                    names, masks = self._class_names(data), self._support_masks(data)
                    results.append(self.predict(support, labels, query, data.shared, names, masks))
            outcomes.extend((p, t[3], info) for (p, info), t in zip(results, tensors, strict=True))
        return outcomes

    def predict(
        self,
        support: Tensor,
        support_labels: Tensor,
        query: Tensor,
        shared: dict | None = None,
        class_names: Sequence[str] | None = None,
        support_masks: Tensor | None = None,
    ) -> tuple[Tensor, dict]:
        """Fine-tune on the preprocessed support set ``(M,3,H,W)``; query predictions ``(Q,)``
        and the record's extra info (final losses, trainable parameter count). ``shared``: the
        episode's cache of pretrained-model results (:class:`~focusvit.runs.EpisodeData`);
        ``class_names``: one per support label (``head_init="text"``); ``support_masks``:
        ``(M, H, W)`` object masks aligned with ``support`` (``FortConfig(prompts=
        "ground_truth")``)."""
        with fit_task(
            self.backbone, support, support_labels, tuner=self.tuner, fort=self.fort,
            options=self.options, shared=shared, class_names=class_names,
            support_masks=support_masks,
        ) as task:  # fmt: skip
            predictions = task.predict(query)
            info = {
                "final_loss": task.losses[-1] if task.losses else None,
                "trainable": task.parameter_counts.get("trainable"),
            }
        return predictions, info


def _tuner_config(tuner: str | TunerConfig, tuner_options: dict | None) -> TunerConfig:
    if isinstance(tuner, TunerConfig):
        if tuner_options:
            raise ConfigError(
                "tuner_options are for a tuner given by name; set them on the config instead, "
                f"e.g. {type(tuner).__name__}(...)"
            )
        return tuner
    return make_tuner(tuner, **(tuner_options or {}))


_NOT_FIT_OPTIONS = {
    "method": "use tuner='lora' (and fort=FortConfig()) or solver='ridge'; 'lora+fort' strings "
    "are CLI shorthand (focusvit.finetune.parse_method)",
    "n_way": "pass episodes=EpisodeSpec(n_way=..., k_shot=..., n_query=..., episodes=..., seed=...)",
}
for _key in ("k_shot", "n_query", "seed"):
    _NOT_FIT_OPTIONS[_key] = _NOT_FIT_OPTIONS["n_way"]


def fit_options(options: FitOptions | None, overrides: dict[str, Any]) -> FitOptions:
    """``options`` with keyword overrides (``lr=``, ``steps=``, ``head_init=`` ...), checked by
    :func:`~focusvit.finetune.recipes.fit_options`; names the fix of a legacy keyword."""
    for key in overrides:
        if key in _NOT_FIT_OPTIONS:
            raise ArgumentError(f"evaluate() takes no {key}=: {_NOT_FIT_OPTIONS[key]}")
    return checked_fit_options(options, overrides, caller="evaluate")


def make_runner(
    backbone: BackboneAdapter,
    tuner: str | TunerConfig | None = None,
    solver: str | None = None,
    fort: FortConfig | bool | None = None,
    options: FitOptions | None = None,
    tuner_options: dict | None = None,
    device: str | torch.device | None = None,
    feature_transform: str | None = None,
    cache_features: bool = True,
    feature_cache_dir: str | os.PathLike | None = None,
    tasks_per_batch: int = 1,
):
    """The runner of one method; refuses options it would ignore (see module docstring).

    Solver options: ``feature_transform`` (default :data:`~focusvit.finetune.heads.DEFAULT_TRANSFORM`),
    ``cache_features``, ``feature_cache_dir``; tuner option: ``tasks_per_batch``."""
    if (tuner is None) == (solver is None):
        raise ConfigError(
            "choose exactly one of tuner= (full, linear, lora, ssf, vpt) or solver= "
            f"({', '.join(SOLVERS)})"
        )
    check_fort_value(fort)
    fort = FortConfig() if fort is True else (None if fort is False else fort)
    device = resolve_device(device)
    if solver is not None:
        refuse_fort(None, solver, fort is not None)
        if options is not None or tuner_options:
            raise ConfigError(
                f"fine-tuning options do not apply to solver {solver!r} (it fits frozen "
                "features); drop them, or choose a tuner"
            )
        if solver not in SOLVERS:
            raise ConfigError(f"unknown solver {solver!r}; solvers: {', '.join(SOLVERS)}")
        if tasks_per_batch != 1:
            raise ConfigError("tasks_per_batch batches fine-tuning; a solver has none: drop it")
        transform = DEFAULT_TRANSFORM if feature_transform is None else feature_transform
        if transform not in FEATURE_TRANSFORMS:
            raise ConfigError(
                f"unknown feature_transform {transform!r}; use one of {', '.join(FEATURE_TRANSFORMS)}"
            )
        cache_dir = str(feature_cache_dir) if feature_cache_dir is not None else None
        return SolverRunner(backbone, solver, device, transform, cache_features, cache_dir)
    if feature_transform is not None or feature_cache_dir is not None:
        raise ConfigError(
            "feature_transform and feature_cache_dir apply to the frozen solvers (their features "
            "are fixed); a tuner changes its features every step: drop them"
        )
    if not is_whole_number(tasks_per_batch, 1):
        raise ConfigError(f"tasks_per_batch must be a whole number >= 1, got {tasks_per_batch!r}")
    if options is not None:
        options = checked_fit_options(options, {}, caller="make_runner")
    config = _tuner_config(tuner, tuner_options)
    if tasks_per_batch > 1:
        from .batched import BatchingUnsupportedError, check_batchable

        try:
            check_batchable(backbone, config)
        except BatchingUnsupportedError as error:
            raise ConfigError(f"tasks_per_batch={tasks_per_batch}: {error}") from None
    refuse_fort(config.name, None, fort is not None, backbone.family, backbone.name)
    recipe_for(backbone.family, config.name)  # refuses a tuner without a recipe for the family
    return TunerRunner(backbone, config, fort, options or FitOptions(), device, tasks_per_batch)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, or CUDA when available and the CPU otherwise. A device torch does not know,
    or CUDA / MPS where there is none, is refused with the fix (the one check of the API and
    the CLIs' ``device=``)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fix = (
        "use device=cpu, device=cuda or device=cuda:N, or leave device unset (CUDA when available)"
    )
    try:
        parsed = torch.device(str(device))
    except (RuntimeError, ValueError):
        raise ConfigError(f"device={device} is not a device; {fix}") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"device={device} but torch sees no CUDA GPU (torch.cuda.is_available() is False); "
                "use device=cpu, or leave device unset to use a GPU only when there is one"
            )
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(
                f"device={device} but torch sees {count} CUDA GPU(s) (cuda:0..cuda:{count - 1}); "
                "use one of those, or device=cuda"
            )
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device={device} but MPS is not available here; {fix}")
    elif parsed.type != "cpu":
        raise ConfigError(f"device={device} is not supported by focusvit; {fix}")
    return parsed


def evaluate(
    backbone: BackboneAdapter,
    dataset,
    *,
    tuner: str | TunerConfig | None = None,
    solver: str | None = None,
    fort: FortConfig | bool | None = None,
    episodes: EpisodeSpec | None = None,
    options: FitOptions | None = None,
    tuner_options: dict | None = None,
    output: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    on_episode: Callable[[dict], None] | None = None,
    episode_ids: Sequence[int] | None = None,
    context: DistContext | None = None,
    feature_transform: str | None = None,
    cache_features: bool = True,
    feature_cache_dir: str | os.PathLike | None = None,
    tasks_per_batch: int = 1,
    **fit_overrides: Any,
) -> EvaluationResult:
    """Evaluate one few-shot method on the episodes of ``episodes`` drawn from ``dataset``.

    Args:
        backbone: the pretrained backbone (restored bit-identically after every task).
        dataset: a few-shot dataset (``labels``, ``class_names``, ``load``).
        tuner: ``"full"``, ``"linear"``, ``"lora"``, ``"ssf"``, ``"vpt"`` or a tuner config
            (e.g. ``LoraConfig(rank=8)``); exclusive with ``solver``.
        solver: a frozen-feature solver: ``prototype``, ``knn``, ``ridge``, ``svm``, ``logistic``.
        fort: the attention-enhancement loss: a :class:`FortConfig` (``None`` fields take the
            recipe of the backbone family and tuner, docs/recipes.md), ``True`` for the recipe, or
            ``None`` (plain fine-tuning). Refused on solvers, the linear probe and CNNs.
        episodes: the :class:`~focusvit.runs.EpisodeSpec` (default ``EpisodeSpec()``).
        options: :class:`FitOptions` (recipe overrides and head init); keyword overrides such
            as ``lr=1e-3, steps=5, head_init="ridge"`` are merged into it.
        tuner_options: options of a tuner given by name (``{"rank": 8}``).
        output: the ``.jsonl`` episode file: streamed, resumed on rerun, refused (naming the
            setting) when it holds results of any other setting.
        device: ``"cuda"`` / ``"cpu"`` (default: CUDA when available).
        episode_ids, context: evaluate a subset / shard across processes (see
            :func:`focusvit.runs.evaluate`).
        feature_transform: solvers only: SimpleShot ``none`` / ``l2n`` / ``cl2n`` (default
            :data:`~focusvit.finetune.heads.DEFAULT_TRANSFORM`).
        cache_features: solvers only: compute each image's feature once per run and backbone
            (default) instead of once per episode; results are the same.
        feature_cache_dir: solvers only: keep the feature cache on disk, keyed by the weights
            hash, the preprocessing and the dataset.
        tasks_per_batch: tuners only: fine-tune this many episodes in one batched computation
            (LoRA / SSF on columnar ViTs; results equal the one-at-a-time path).

    Returns:
        :class:`~focusvit.runs.EvaluationResult` named ``tuner[+fort]`` or ``solver``.

    Example::

        spec = focusvit.EpisodeSpec(n_way=5, k_shot=1, n_query=15, episodes=600)
        plain = focusvit.evaluate(backbone, scenes, tuner="lora", episodes=spec)
        fort = focusvit.evaluate(backbone, scenes, tuner="lora", fort=focusvit.FortConfig(), episodes=spec)
    """
    if episodes is not None:
        check_spec_kind(episodes, "episodes")
    check_dataset_kind(dataset)
    if fit_overrides:
        if solver is not None:
            fit_options(None, fit_overrides)  # names the legacy keyword when there is one
            raise ConfigError(
                f"fine-tuning options {sorted(fit_overrides)} do not apply to solver {solver!r}; "
                "drop them, or choose a tuner"
            )
        options = fit_options(options, fit_overrides)
    elif options is not None:
        options = fit_options(options, {})
    runner = make_runner(
        backbone, tuner, solver, fort, options, tuner_options, device,
        feature_transform, cache_features, feature_cache_dir, tasks_per_batch,
    )  # fmt: skip
    backbone.to(runner.device)
    result = evaluate_runner(
        runner,
        dataset,
        episodes or EpisodeSpec(),
        output=output,
        progress=progress,
        on_episode=on_episode,
        episode_ids=episode_ids,
        context=context,
    )
    if isinstance(runner, SolverRunner) and runner.cache_features and runner.cache_dir:
        feature_cache(backbone, dataset, runner.device, runner.cache_dir).save()
    return result


def check_method_names(methods: Sequence[str]) -> list[MethodChoice]:
    """Parse CLI method strings, refusing duplicates."""
    if len(set(methods)) != len(methods):
        raise ConfigError(f"methods lists a method twice: {list(methods)}")
    return [parse_method(m) for m in methods]
