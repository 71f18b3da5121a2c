"""Command-line entry points (Hydra): ``focusvit-explain`` and ``focusvit-fewshot``.

Both are thin: :func:`run_explain` and :func:`run_fewshot` take a composed config and an output
folder (use them from Python with ``hydra.compose``), the ``@hydra.main`` functions only add
Hydra's overrides, ``--multirun`` sweeps and launchers.

Order of checks: composing the config validates keys and types (structured schema), then
:func:`validate_fewshot` / :func:`validate_explain` build every node except the model, then the
output folder is checked (an existing run folder is resumed if its settings match, refused
otherwise); only then is the model loaded.

User errors (every :class:`~focusvit.errors.FocusVitError`) end the command with one line
``<command>: error: <what was wrong and how to fix it>`` on stderr and exit status 1; Ctrl-C ends
it with ``<command>: interrupted; rerun the same command to resume`` and status 130. Set the
environment variable ``FOCUSVIT_DEBUG=1`` to get the full traceback instead.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from focusvit.checks import is_whole_number
from focusvit.errors import ConfigError, UnsupportedMethodError
from focusvit.runconfig import (
    CONFIG_PATH,
    build,
    check_device,
    check_fraction,
    check_paths,
    explainer_nodes,
    instantiate,
    normalise_inputs,
)
from focusvit.runs import BackboneSpec, DistContext, EpisodeSpec, RunDir, validation_seed
from focusvit.runs.rundir import check_out_folder

#: keys of a run's settings that may change when its folder is resumed
RESUMABLE_KEYS = ("episodes.episodes", "methods", "progress", "report", "device", "out")


def run_dir(out: str | Path, cfg: DictConfig) -> RunDir:
    """The run folder of ``cfg`` (:class:`focusvit.runs.RunDir`): its settings record is the
    whole composed config, of which only :data:`RESUMABLE_KEYS` may change on resume."""
    return RunDir(out, OmegaConf.to_container(cfg, resolve=True), resumable=RESUMABLE_KEYS)


def prepare_output_dir(out: str | Path, cfg: DictConfig, write: bool = True) -> bool:
    """Check ``out`` for this run (True when an earlier run is resumed) and record the settings.

    A folder holding a run with other settings, or a non-empty folder that is not a focusvit
    run, raises :class:`~focusvit.errors.SettingsMismatchError` naming the settings.
    """
    folder = run_dir(out, cfg)
    resumed = folder.check()
    if write:
        folder.write_settings()
    return resumed


def _config_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def _say(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------- explain
@dataclass
class ExplainPlan:
    backbone: BackboneSpec
    explainers: dict[str, Any]
    prompts: Any
    inputs: list[str]


def validate_explain(cfg: DictConfig) -> ExplainPlan:
    """Build everything but the model; raises :class:`ConfigError` on a bad value."""
    if OmegaConf.is_missing(cfg, "inputs"):
        raise ConfigError(
            "inputs is required: inputs=path/to/folder, 'inputs=[a.jpg,b.jpg]', inputs=samples "
            "(scikit-image photos) or inputs=synthetic (scenes with object masks)"
        )
    inputs = normalise_inputs(cfg.inputs)
    check_synthetic_counts(inputs)
    check_paths(inputs)
    backbone = build(cfg, "backbone")
    explainers = {
        name: instantiate(node, f"explainer.{name}") for name, node in explainer_nodes(cfg).items()
    }
    prompts = build(cfg, "prompting")  # PromptSpec checks its sizes and fractions
    check_ranges(cfg.report, "report", EXPLAIN_REPORT_RANGES)
    check_device(cfg.device)
    return ExplainPlan(backbone, explainers, prompts, inputs)


#: ``key: (lowest, highest or None, a value that works)`` of the report options
EXPLAIN_REPORT_RANGES = {
    "max_images": (1, None, 32),
    "batch_size": (1, None, 8),
    "deletion_steps": (0, None, 16),
    "dpi": (1, None, 100),
}
FEWSHOT_REPORT_RANGES = {
    "focus_episodes": (0, None, 1),
    "max_queries": (1, None, 5),
    "dpi": (1, None, 100),
}


def check_ranges(node: Any, prefix: str, ranges: dict[str, tuple]) -> None:
    """Refuse a whole-number option of ``node`` outside its ``(lowest, highest)`` range."""
    for key, (low, high, example) in ranges.items():
        if key not in node:
            continue
        value = node[key]
        if not is_whole_number(value, low) or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in {low}..{high}"
            raise ConfigError(
                f"{prefix}.{key} must be a whole number {bound}, got {value!r}; e.g. "
                f"{prefix}.{key}={example}"
            )


def check_synthetic_counts(inputs: list[str]) -> None:
    """Refuse ``synthetic:N`` / ``samples:N`` where ``N`` is no whole number >= 1."""
    for item in inputs:
        kind, colon, count = item.partition(":")
        bad = not count.isdigit() or int(count) < 1
        if kind in ("synthetic", "samples") and colon and bad and not Path(item).exists():
            raise ConfigError(
                f"inputs={item} is not understood: use inputs=synthetic:N with N a whole "
                "number >= 1 (e.g. inputs=synthetic:4), or inputs=samples"
            )


def _load_inputs(inputs: list[str], limit: int):
    """``(images, names, masks or None, true class names or None)`` from paths, ``samples`` or
    ``synthetic[:N]`` (only the synthetic scenes know their class: its glyph name)."""
    import numpy as np

    from focusvit.data import SyntheticScenes, load_images, sample_photos

    images, names, masks, labels = [], [], [], []
    for item in inputs:
        kind, _, count = item.partition(":")
        if kind == "samples":
            photos = sample_photos()
            images += list(photos.values())
            names += list(photos)
            masks += [None] * len(photos)
            labels += [None] * len(photos)
        elif kind == "synthetic":
            scenes = SyntheticScenes("novel", images_per_class=1)
            for index in range(min(int(count or 8), len(scenes))):
                image, label, mask = scenes[index]
                images.append(image)
                names.append(f"scene{index}")
                masks.append(mask)
                labels.append(str(scenes.class_names[int(label)]))
        else:
            path = Path(item)
            from focusvit.data.images import list_images

            files = list_images(path) if path.is_dir() else [path]
            images += load_images(files)
            names += [f.stem for f in files]
            masks += [None] * len(files)
            labels += [None] * len(files)
    images, names, masks = images[:limit], names[:limit], masks[:limit]
    labels = labels[:limit]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    stacked = None
    if masks and all(m is not None for m in masks):
        stacked = np.stack(masks)
    return images, unique, stacked, (labels if any(x is not None for x in labels) else None)


def run_explain(cfg: DictConfig, out_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Explain the configured inputs with every selected explainer; returns the report path.

    ``progress``: a bar per image and explainer on stderr (only when stderr is a terminal).
    One line per image and explainer goes to the ``focusvit.explain`` logger as soon as it is
    done (under the command line: Hydra's ``out/focusvit-explain.log`` and the console).
    """
    import logging

    import torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    from focusvit.reports.explain import explain_images, write_explain_report
    from focusvit.reports.html import software_versions

    plan = validate_explain(cfg)
    out = Path(out_dir or cfg.out)
    check_out_folder(out)
    resumed = prepare_output_dir(out, cfg)
    if resumed:
        _say(f"focusvit-explain: {out} holds this run already; recomputing its report")
    images, names, masks, labels = _load_inputs(plan.inputs, int(cfg.report.max_images))
    start = time.perf_counter()
    backbone = plan.backbone.load()
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    backbone.to(device)
    batch = backbone.preprocess(images).to(device)
    if backbone.family == "vit":  # every explainer's map is the patch grid: check before work
        grid = backbone.grid_size(tuple(batch.shape[-2:]))
        plan.prompts.count(grid[0] * grid[1], f"the {grid[0]}x{grid[1]} patch grid")
    gt = backbone.preprocess_masks(list(masks)) if masks is not None else None
    log = logging.getLogger("focusvit.explain")
    log.info("explaining %d images with %s", len(names), ", ".join(plan.explainers))

    def log_image(method: str, index: int, name: str, metrics: dict[str, float]) -> None:
        shown = ", ".join(f"{key} {value:.4g}" for key, value in metrics.items())
        log.info("%s %d/%d %s: %s", method, index + 1, len(names), name, shown)

    with logging_redirect_tqdm():  # log lines print above the bar, not through it
        results = explain_images(
            backbone,
            batch,
            names,
            plan.explainers,
            plan.prompts,
            target=cfg.target,
            masks=gt,
            labels=labels,
            deletion_steps=int(cfg.report.deletion_steps),
            baseline=str(cfg.report.baseline),
            batch_size=int(cfg.report.batch_size),
            progress=progress,
            on_image=log_image,
        )
    report = write_explain_report(
        out,
        results,
        plan.backbone.spec,
        _config_yaml(cfg),
        software_versions(),
        dpi=int(cfg.report.dpi),
    )
    for name, reason in results.skipped.items():
        _say(f"focusvit-explain: skipped {name}: {reason}")
    _say(
        f"focusvit-explain: {len(names)} images x {len(results.explanations)} explainers in "
        f"{time.perf_counter() - start:.1f}s -> {report}"
    )
    return report


# ----------------------------------------------------------------------------- few-shot
@dataclass
class FewshotPlan:
    """Everything a few-shot run needs but the model, checked before it loads."""

    backbone: BackboneSpec
    dataset: Any
    episodes: EpisodeSpec
    tuner: Any
    fort: Any
    options: Any
    methods: list[str]
    tasks_per_batch: Any = 1  # an int >= 1 or "auto" (resolved by resolve_tasks_per_batch)
    validated_fort: Any = None  # the fort setting of the @validated rows, α chosen on validation


#: method-name suffix of a ``+fort`` row that uses the α chosen by ``select_alpha`` while the
#: same method without it keeps the fort group's (the recipe's, the authors') α
VALIDATED = "@validated"
#: ``tasks_per_batch: auto``: episodes fine-tuned together on CUDA (1 elsewhere)
AUTO_TASKS_PER_BATCH_CUDA = 8


def base_method(method: str) -> str:
    """``method`` without its :data:`VALIDATED` suffix (``lora+fort@validated`` -> ``lora+fort``)."""
    return method[: -len(VALIDATED)] if method.endswith(VALIDATED) else method


def fewshot_methods(cfg: DictConfig, tuner, fort) -> list[str]:
    """``methods``, or the tuner (and ``tuner+fort`` when ``fort`` is set). A ``+fort`` method
    may be listed twice, as ``lora+fort`` (the fort group's α) and ``lora+fort@validated`` (the
    α chosen by ``select_alpha``), to show both side by side."""
    from focusvit.finetune import check_method_names

    methods = list(cfg.methods) or ([tuner.name, f"{tuner.name}+fort"] if fort else [tuner.name])
    if len(set(methods)) != len(methods):
        raise ConfigError(f"methods lists a method twice: {methods}")
    for method in methods:
        if method.endswith(VALIDATED) and not base_method(method).endswith("+fort"):
            raise ConfigError(
                f"{method!r}: {VALIDATED} applies to a +fort method (the α of the attention "
                f"loss chosen on validation classes), e.g. {base_method(method)}+fort{VALIDATED}"
            )
    validated = [m for m in methods if m.endswith(VALIDATED)]
    if validated and not list(cfg.select_alpha.alphas or []):
        raise ConfigError(
            f"{validated[0]} uses the α chosen on validation classes: give the candidates, "
            "e.g. select_alpha.alphas=[0.05,0.5]"
        )
    try:
        check_method_names([m for m in methods if not m.endswith(VALIDATED)])
        check_method_names([base_method(m) for m in validated])
    except ConfigError as error:
        raise ConfigError(f"{error} (on the command line: fort=off turns the loss off)") from None
    if any(m.endswith("+fort") for m in methods) and fort is None:
        raise ConfigError(
            f"methods {methods} use +fort but fort is off; select fort=recipe (or drop +fort)"
        )
    return methods


def validate_fewshot(cfg: DictConfig) -> FewshotPlan:
    """Build everything but the model (dataset index included); raises :class:`ConfigError`."""
    backbone = build(cfg, "backbone")
    episodes = build(cfg, "episodes")
    tuner = build(cfg, "tuner")
    fort = build(cfg, "fort")
    options = build(cfg, "trainer")
    methods = fewshot_methods(cfg, tuner, fort)
    check_ranges(cfg.report, "report", FEWSHOT_REPORT_RANGES)
    check_fraction(cfg.report.coverage, "report.coverage", 0.95)
    check_methods_apply(methods, backbone)
    if OmegaConf.is_missing(cfg.data, "path"):  # (`"path" in cfg.data` is False when missing)
        raise ConfigError(
            "data.path is required: give the dataset root holding one folder per class, e.g. "
            "data.path=/data/cub (data=hf: a hub name or a save_to_disk folder)"
        )
    check_device(cfg.device)
    tasks = check_tasks_per_batch(cfg.tasks_per_batch)
    dataset = instantiate(cfg.data, "data")
    try:
        episodes.check_dataset(dataset)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return FewshotPlan(backbone, dataset, episodes, tuner, fort, options, methods, tasks)


def check_tasks_per_batch(value: Any) -> int | str:
    """``tasks_per_batch``: a whole number >= 1, or ``"auto"``; else :class:`ConfigError`."""
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not is_whole_number(value, 1):
        raise ConfigError(
            f"tasks_per_batch must be a whole number >= 1 or 'auto' ({AUTO_TASKS_PER_BATCH_CUDA} "
            f"on CUDA, 1 elsewhere), got {value!r}"
        )
    return value


def resolve_tasks_per_batch(plan: FewshotPlan, backbone, device, tuner) -> int:
    """Episodes fine-tuned together by ``tuner``: ``tasks_per_batch``, where ``auto`` is
    :data:`AUTO_TASKS_PER_BATCH_CUDA` on CUDA for a tuner the batched path takes (LoRA, SSF on
    a columnar ViT), else 1."""
    if plan.tasks_per_batch != "auto":
        return int(plan.tasks_per_batch)
    if getattr(device, "type", str(device)) != "cuda":
        return 1
    from focusvit.finetune.batched import BatchingUnsupportedError, check_batchable
    from focusvit.finetune.evaluate import _tuner_config

    try:
        check_batchable(backbone, _tuner_config(tuner, None))
    except BatchingUnsupportedError:
        return 1
    return AUTO_TASKS_PER_BATCH_CUDA


def make_runners(plan: FewshotPlan, backbone, device) -> dict[str, Any]:
    """One runner per method; the tuner group's options apply to its own tuner, other tuners
    named in ``methods`` use their defaults."""
    from dataclasses import replace

    from focusvit.finetune import make_runner, parse_method

    runners = {}
    for method in plan.methods:
        choice = parse_method(base_method(method))
        if choice.solver is not None:
            runners[method] = make_runner(backbone, solver=choice.solver, device=device)
            continue
        check_method_fits(choice.tuner, backbone, plan)
        tuner = plan.tuner if choice.tuner == plan.tuner.name else choice.tuner
        fort = plan.fort if choice.fort else None
        if method.endswith(VALIDATED):
            fort = plan.validated_fort
        runner = make_runner(
            backbone, tuner=tuner, fort=fort, options=plan.options, device=device,
            tasks_per_batch=resolve_tasks_per_batch(plan, backbone, device, tuner),
        )  # fmt: skip
        runners[method] = runner if runner.name == method else replace(runner, label=method)
    return runners


def check_methods_apply(methods: list[str], spec: BackboneSpec) -> None:
    """Refuse, before the model is downloaded or loaded, a tuner or the attention loss that the
    backbone's family cannot take, when :func:`focusvit.backbones.model_family` can tell the
    family from the spec alone (otherwise :func:`check_method_fits` refuses after loading)."""
    from focusvit.backbones import model_family
    from focusvit.finetune import parse_method
    from focusvit.finetune.attention_loss import refuse_fort

    family = model_family(spec.spec)
    if family is None:
        return
    for method in methods:
        choice = parse_method(base_method(method))
        if choice.tuner is not None:
            check_tuner_family(choice.tuner, family, spec.spec)
        refuse_fort(choice.tuner, choice.solver, choice.fort, family)


def check_tuner_family(tuner: str, family: str, spec: str) -> None:
    """Refuse a tuner without a recipe (docs/recipes.md) for ``family`` (CNN + lora, Swin + vpt, ...)."""
    from focusvit.finetune.recipes import RECIPES

    known = sorted(t for f, t in RECIPES if f == family)
    if tuner not in known:
        raise UnsupportedMethodError(
            f"tuner {tuner!r} does not apply to {family} backbones ({spec}); use "
            f"tuner={' or tuner='.join(known)}, or a backbone of another family"
            if known
            else f"no tuner applies to {family} backbones ({spec}); use a solver, "
            "e.g. methods=[prototype]"
        )


def check_method_fits(tuner: str, backbone, plan: FewshotPlan) -> None:
    """Refuse a tuner without a recipe for the backbone's family (CNN + lora, Swin + vpt, ...)
    and attention-loss settings the model cannot honour (a ViT prompt larger than the patch
    grid, a Swin prompt larger than a window:
    :func:`focusvit.finetune.attention_loss.check_fits`), before any training."""
    from focusvit.finetune.attention_loss import OBJECTIVES, check_fits

    family = backbone.family
    check_tuner_family(tuner, family, plan.backbone.spec)
    if plan.fort is not None and family in OBJECTIVES:
        size = tuple(backbone.data_config["input_size"][1:])
        check_fits(backbone, plan.fort, size, option="fort.", where=plan.backbone.spec)


def check_plan_fits(cfg: DictConfig, plan: FewshotPlan, backbone) -> None:
    """Refuse, once the model is loaded and before the run folder's ``settings.json`` is
    written, every method the model cannot run: a tuner without a recipe for its family, and
    attention-loss settings it cannot honour (``fort.layers=[5]`` on a 2-block model, a prompt
    larger than the patch grid, no α), through
    :func:`focusvit.finetune.attention_loss.resolve_fort` as training would. A refusal then
    leaves nothing behind, so the corrected command starts (or resumes) the same folder."""
    from dataclasses import replace

    from focusvit.finetune import parse_method
    from focusvit.finetune.attention_loss import resolve_fort

    alphas = [float(a) for a in cfg.select_alpha.alphas or []]
    if alphas and plan.fort is None:
        raise ConfigError(
            "select_alpha.alphas chooses the attention-loss weight, but fort is off; select "
            "fort=recipe, or set select_alpha.alphas=[]"
        )
    if alphas:
        from focusvit.finetune.selection import check_rule

        check_rule(str(cfg.select_alpha.rule))
    for method in plan.methods:
        choice = parse_method(base_method(method))
        if choice.solver is not None:
            continue
        check_method_fits(choice.tuner, backbone, plan)
        if choice.fort and plan.fort is not None:
            fort = plan.fort
            if alphas and fort.alpha is None:  # α is chosen on validation episodes
                fort = replace(fort, alpha=max(alphas))
            resolve_fort(backbone, choice.tuner, fort)


def run_fewshot(cfg: DictConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate the configured methods on episodes (sharded across processes under a launcher)
    and write the report; returns ``{"results": {method: EvaluationResult}, "report": path}``
    (the report only on rank 0)."""
    from focusvit.reports.fewshot import write_fewshot_report
    from focusvit.reports.html import software_versions
    from focusvit.runs import DistContext, evaluate_many

    plan = validate_fewshot(cfg)
    out = Path(out_dir or cfg.out)
    check_out_folder(out)
    folder = run_dir(out, cfg)
    resumed = folder.check()
    context = DistContext.from_env(cfg.device)
    try:
        context.barrier()  # every rank has checked the folder before rank 0 writes to it
        device = context.device(cfg.device)
        start = time.perf_counter()
        backbone = plan.backbone.load()
        check_plan_fits(cfg, plan, backbone)  # refused before settings.json is written
        if context.is_main:
            folder.write_settings()
            if resumed:
                _say(f"focusvit-fewshot: resuming {out}")
        selection_notes = []
        side_by_side = any(m.endswith(VALIDATED) for m in plan.methods)
        if cfg.select_alpha.alphas and side_by_side and not has_validation_split(cfg):
            note = (
                f"{', '.join(m for m in plan.methods if m.endswith(VALIDATED))} skipped: "
                f"data.split={cfg.data.get('split')} uses every class, so there are no "
                "validation classes to choose α on (the +fort rows use the recipe's α)"
            )
            if context.is_main:
                _say(f"focusvit-fewshot: {note}")
            plan.methods = [m for m in plan.methods if not m.endswith(VALIDATED)]
            selection_notes = [note]
        elif cfg.select_alpha.alphas:
            fort, selection_notes = choose_alpha(cfg, plan, backbone, folder, device, context)
            if side_by_side:  # lora+fort keeps the recipe's α, lora+fort@validated the chosen
                plan.validated_fort = fort
            else:
                plan.fort = fort
        runners = make_runners(plan, backbone, device)
        backbone.to(next(iter(runners.values())).device)
        results = evaluate_many(  # every episode decoded and preprocessed once for all methods
            list(runners.values()),
            plan.dataset,
            plan.episodes,
            outputs={method: folder.episode_file(method) for method in runners},
            progress=bool(cfg.progress) and context.is_main,
            context=context,
            on_estimate=(lambda line: _say(f"focusvit-fewshot: {line}"))
            if context.is_main
            else None,
        )
        if context.is_main:
            for result in results.values():
                _say(f"focusvit-fewshot: {result}")
        report = None
        if context.is_main:
            focus_runs, notes = _focus_runs(cfg, plan, backbone, folder, runners)
            notes = selection_notes + notes
            setting = (
                f"{plan.backbone.spec} · {type(plan.dataset).__name__} "
                f"({len(plan.dataset.class_names)} classes) · {plan.episodes.describe()}"
                + (f" · {context.world_size} processes" if context.distributed else "")
            )
            report = write_fewshot_report(
                out,
                results,
                focus_runs,
                f"focusvit few-shot report · {', '.join(plan.methods)}",
                setting,
                _config_yaml(cfg),
                software_versions(),
                notes,
                dpi=int(cfg.report.dpi),
            )
            _say(f"focusvit-fewshot: {time.perf_counter() - start:.1f}s -> {report}")
        context.barrier()
        return {"results": results, "report": report}
    finally:
        context.close()


def has_validation_split(cfg: DictConfig) -> bool:
    """Whether the data group keeps one class split (so other classes can validate α): not
    for a dataset without splits or ``data.split`` ``all`` / null (every class)."""
    return "split" in cfg.data and cfg.data.split not in (None, "all")


def validation_data(cfg: DictConfig, split: str):
    """The data group with ``split`` instead of the test split (for :func:`choose_alpha`)."""
    if "split" not in cfg.data:
        raise ConfigError(
            "select_alpha needs a dataset with class splits (e.g. data=synthetic or "
            "data=imagefolder with data.split_file=...), to choose α on validation classes; "
            "or turn the selection off with select_alpha.alphas=[]"
        )
    if cfg.data.split in (None, "all"):
        raise ConfigError(
            f"select_alpha needs validation classes, but data.split={cfg.data.split} uses every "
            "class; set data.split=novel (test classes) or select_alpha.alphas=[]"
        )
    if split == cfg.data.split or split in ("novel", "test"):
        raise ConfigError(
            f"select_alpha.split is {split!r}: α must be chosen on other classes than the test "
            f"split ({cfg.data.split!r}); use select_alpha.split=val (or base)"
        )
    node = OmegaConf.merge(cfg.data, {"split": split})
    return instantiate(node, "data")


def choose_alpha(
    cfg: DictConfig, plan: FewshotPlan, backbone, folder: RunDir, device, context: DistContext
) -> tuple[Any, list[str]]:
    """α of the attention loss chosen on validation episodes (resumable in the run folder's
    ``validation/``); returns the fort setting with that α and the report notes."""
    from dataclasses import replace

    from focusvit.finetune import select_alpha

    selection = cfg.select_alpha
    if plan.fort is None:
        raise ConfigError(
            "select_alpha.alphas chooses the attention-loss weight, but fort is off; select "
            "fort=recipe, or set select_alpha.alphas=[]"
        )
    if int(selection.episodes) < 1:
        raise ConfigError(f"select_alpha.episodes must be >= 1, got {selection.episodes}")
    validation = validation_data(cfg, str(selection.split))
    spec = replace(  # validation episodes: the one seed rule of focusvit.runs.validation_seed
        plan.episodes, episodes=int(selection.episodes), split=str(selection.split),
        seed=validation_seed(plan.episodes.seed),
    )  # fmt: skip
    if context.is_main:
        _say(f"focusvit-fewshot: choosing α on {spec.describe()} (validation classes)")
    chosen = select_alpha(  # under torchrun each process takes its share of the episodes
        backbone, validation, plan.tuner, [float(a) for a in selection.alphas], spec,
        fort=plan.fort, options=plan.options, device=device,
        output_dir=folder.path / "validation", progress=bool(cfg.progress), context=context,
        rule=str(selection.rule),
    )  # fmt: skip
    if context.is_main:
        for line in chosen.table().splitlines():
            _say(f"focusvit-fewshot: {line}")
    from focusvit.finetune.selection import RULE_TEXT

    gains = "; ".join(
        f"{a:g}: " + ("skipped" if p is None else f"{100 * p.mean:+.1f} ± {100 * p.ci95:.1f}, "
                      f"w/t/l {p.wtl}")
        for a, p in chosen.paired.items()
    )  # fmt: skip
    note = (
        f"α of the attention loss chosen on {spec.describe()}: {chosen.alpha:g} "
        f"(candidates 0, {', '.join(f'{a:g}' for a in selection.alphas)}; rule {chosen.rule}: "
        f"{RULE_TEXT[chosen.rule]}; paired gain over α = 0 in points: {gains}"
        + ("; so +fort trains exactly as without the loss)" if chosen.alpha == 0 else ")")
    )
    return replace(plan.fort, alpha=chosen.alpha), [note]


def _focus_runs(
    cfg, plan: FewshotPlan, backbone, folder: RunDir, runners
) -> tuple[list, list[str]]:
    """Attention focus of the first ``report.focus_episodes`` episodes, kept in the run
    folder's ``focus`` checkpoint so a resumed run does not fine-tune them again."""
    from focusvit.finetune import resolve_fort
    from focusvit.finetune.attention_loss import prompt_settings
    from focusvit.runs import FocusProbe, ProbeCache, fingerprint, flatten

    count = min(int(cfg.report.focus_episodes), plan.episodes.episodes)
    if count <= 0:
        return [], []
    if backbone.family != "vit" or backbone.num_prefix_tokens < 1:
        return [], [
            f"attention focus needs a columnar ViT with a CLS token; {plan.backbone.spec} is "
            f"{backbone.family}: section skipped"
        ]
    prompt_fort = resolve_fort(backbone, plan.tuner.name, plan.fort) if plan.fort else None
    if prompt_fort is None:  # prompts are shown all the same, with the family's prompt size
        prompt_fort = prompt_settings(backbone)
    irrelevant = ("episodes.episodes", "progress", "device", "out")
    key = fingerprint({k: v for k, v in flatten(folder.settings).items() if k not in irrelevant})
    probe = FocusProbe(
        backbone, plan.dataset, runners, plan.episodes, prompt_fort,
        coverage=float(cfg.report.coverage), max_queries=int(cfg.report.max_queries),
        device=next(iter(runners.values())).device, progress=bool(cfg.progress),
        numbers_only=False,
    )  # fmt: skip

    def measure(index: int) -> dict:
        _say(f"focusvit-fewshot: attention focus on episode {index} (fine-tunes each method once)")
        return probe(index)

    # the one focus cache (focusvit.runs.ProbeCache), here with the maps the report draws
    runs = ProbeCache(folder.checkpoint_file("focus"), key=key).measure(range(count), measure)
    return [runs[index] for index in range(count)], []


# ----------------------------------------------------------------------------- entry points
def debug_enabled() -> bool:
    """``FOCUSVIT_DEBUG`` set (and not ``0``): errors keep their full traceback."""
    return os.environ.get("FOCUSVIT_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _guard(name: str, function: Callable[[], Any]) -> Any:
    """Run ``function``; a user error (:class:`FocusVitError`) exits with one line naming the fix
    (status 1), Ctrl-C with ``interrupted; rerun the same command to resume`` (status 130).
    ``FOCUSVIT_DEBUG=1`` re-raises instead, with Hydra's full traceback."""
    from focusvit.errors import FocusVitError

    try:
        return function()
    except FocusVitError as error:
        if debug_enabled():
            os.environ.setdefault("HYDRA_FULL_ERROR", "1")
            raise
        message = re.sub(r"\s*\n\s*", " ", str(error)).strip()
        sys.exit(f"{name}: error: {message} (FOCUSVIT_DEBUG=1 shows the traceback)")
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        print(f"{name}: interrupted; rerun the same command to resume", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


def one_line(error: BaseException) -> str:
    """``error`` (and the OmegaConf / Hydra error that caused it) as one line."""
    parts = [str(error)]
    cause = error.__cause__
    if cause is not None and type(cause).__module__.startswith(("omegaconf", "hydra")):
        parts.append(f"({str(cause).strip().splitlines()[0] if str(cause).strip() else ''})")
    text = " ".join(parts)
    lines = [line.strip() for line in text.splitlines()]
    skip = ("full_key:", "object_type=", "reference_type=", "Set the environment variable")
    return " ".join(line for line in lines if line and not line.startswith(skip))


def _hydra_report(name: str) -> Callable[[Callable[[], Any]], Any]:
    """A stand-in for Hydra's ``run_and_report``: every error Hydra itself meets (unknown or
    mistyped overrides, a value of the wrong type, an output folder it cannot create) ends the
    command with one line, as :func:`_guard` does for focusvit's own errors."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    def report(function: Callable[[], Any]) -> Any:
        try:
            return function()
        except Exception as error:
            if debug_enabled():
                raise
            known = isinstance(error, HydraException | OmegaConfBaseException | OSError)
            fix = f"; see {name} --help" if isinstance(error, HydraException) else ""
            what = "" if known else f"unexpected {type(error).__name__}: "
            message = f"{name}: error: {what}{one_line(error)}{fix}"
            print(f"{message} (FOCUSVIT_DEBUG=1 shows the traceback)", file=sys.stderr)
            raise SystemExit(1) from None

    return report


def _out_override(argv: list[str]) -> str | None:
    """The ``out=...`` override of a command line (the last one), ``None`` when there is none
    or it is interpolated / swept."""
    values = [m.group(1) for a in argv if (m := re.fullmatch(r"\+{0,2}out=(.*)", a))]
    if not values or "${" in values[-1] or "," in values[-1]:
        return None
    return values[-1].strip("'\"")


def run_entry_point(name: str, hydra_main: Callable[[], Any]) -> Any:
    """Run a ``@hydra.main`` function as the console script ``name``: ``out`` is checked before
    Hydra creates or writes anything, and every error, Hydra's own included, is one line."""
    import hydra._internal.utils as hydra_utils

    out = _out_override(sys.argv[1:])
    if out is not None:
        _guard(name, lambda: check_out_folder(out))
    original = hydra_utils.run_and_report
    hydra_utils.run_and_report = _hydra_report(name)
    try:
        return hydra_main()
    finally:
        hydra_utils.run_and_report = original


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="explain")
def _explain_hydra(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    out = HydraConfig.get().runtime.output_dir
    _guard("focusvit-explain", lambda: run_explain(cfg, out, progress=bool(cfg.progress)))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="fewshot")
def _fewshot_hydra(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    out = HydraConfig.get().runtime.output_dir
    _guard("focusvit-fewshot", lambda: run_fewshot(cfg, out))


def explain_main() -> None:
    """``focusvit-explain``: explain images (files, folders, ``samples``, ``synthetic``)."""
    run_entry_point("focusvit-explain", _explain_hydra)


def fewshot_main() -> None:
    """``focusvit-fewshot``: evaluate few-shot methods on episodes and write a report."""
    run_entry_point("focusvit-fewshot", _fewshot_hydra)
