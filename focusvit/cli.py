"""Command-line entry points (Hydra): ``focusvit-explain`` and ``focusvit-fewshot``.

Both are thin: :func:`run_explain` and :func:`run_fewshot` take a composed config and an output
folder (use them from Python with ``hydra.compose``), the ``@hydra.main`` functions only add
Hydra's overrides, ``--multirun`` sweeps and launchers.

Order of checks: composing the config validates keys and types (structured schema), then
:func:`validate_fewshot` / :func:`validate_explain` build every node except the model, then the
output folder is checked (an existing run folder is resumed if its settings match, refused
otherwise); only then is the model loaded.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from focusvit.runconfig import (
    CONFIG_PATH,
    BackboneSpec,
    ConfigError,
    EpisodeSpec,
    TrainerSpec,
    check_paths,
    explainer_nodes,
    fewshot_methods,
    instantiate,
    normalise_inputs,
)

MARKER = "run.yaml"
#: keys that may change when a run folder is resumed
RESUMABLE_KEYS = ("episodes.episodes", "methods", "progress", "report", "trainer.device", "out")


# ----------------------------------------------------------------------------- output folders
def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def _comparable(config: dict) -> dict[str, Any]:
    return {
        key: value
        for key, value in _flatten(config).items()
        if not any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)
    }


def prepare_output_dir(out: str | Path, cfg: DictConfig, write: bool = True) -> bool:
    """Check ``out`` for this run; returns True when an earlier run is resumed.

    A folder holding ``run.yaml`` with the same settings (other than the episode count, the
    methods and report options) is resumed; different settings or a non-empty folder that is
    not a focusvit run raise :class:`ConfigError` (nothing is overwritten). Hydra's own
    ``.hydra/`` and ``*.log`` files do not count.
    """
    out = Path(out)
    current = OmegaConf.to_container(cfg, resolve=True)
    marker = out / MARKER
    resumed = False
    if marker.exists():
        previous = OmegaConf.to_container(OmegaConf.load(marker), resolve=True)
        old, new = _comparable(previous), _comparable(current)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            details = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
            raise ConfigError(
                f"{out} holds a run with other settings ({details}); it is never overwritten: "
                f"choose another out=..., or delete the folder to start again"
            )
        resumed = True
    elif out.exists():
        others = [
            p.name
            for p in out.iterdir()
            if p.name != ".hydra" and p.suffix != ".log" and not p.name.startswith("multirun")
        ]
        if others:
            raise ConfigError(
                f"{out} exists and is not a focusvit run folder (it holds {', '.join(sorted(others)[:5])}); "
                "choose another out=..."
            )
    if write:
        out.mkdir(parents=True, exist_ok=True)
        marker.write_text(OmegaConf.to_yaml(current))
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
    check_paths(inputs)
    backbone = instantiate(cfg.backbone, "backbone")
    explainers = {
        name: instantiate(node, f"explainer.{name}") for name, node in explainer_nodes(cfg).items()
    }
    prompts = instantiate(cfg.prompting, "prompting")
    if cfg.report.max_images < 1:
        raise ConfigError(f"report.max_images must be >= 1, got {cfg.report.max_images}")
    return ExplainPlan(backbone, explainers, prompts, inputs)


def _load_inputs(inputs: list[str], limit: int):
    """``(images, names, masks or None)`` from paths, ``samples`` or ``synthetic[:N]``."""
    import numpy as np

    from focusvit.data import SyntheticScenes, load_images, sample_photos

    images, names, masks = [], [], []
    for item in inputs:
        kind, _, count = item.partition(":")
        if kind == "samples":
            photos = sample_photos()
            images += list(photos.values())
            names += list(photos)
            masks += [None] * len(photos)
        elif kind == "synthetic":
            scenes = SyntheticScenes("novel", images_per_class=1)
            for index in range(min(int(count or 8), len(scenes))):
                image, _, mask = scenes[index]
                images.append(image)
                names.append(f"scene{index}")
                masks.append(mask)
        else:
            path = Path(item)
            from focusvit.data.images import list_images

            files = list_images(path) if path.is_dir() else [path]
            images += load_images(files)
            names += [f.stem for f in files]
            masks += [None] * len(files)
    images, names, masks = images[:limit], names[:limit], masks[:limit]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    stacked = None
    if masks and all(m is not None for m in masks):
        stacked = np.stack(masks)
    return images, unique, stacked


def _transform_masks(masks, data_config: dict):
    """Object masks through the same resize + centre crop as the images."""
    import torch
    import torchvision.transforms.functional as TF
    from PIL import Image

    from focusvit.data.images import _size_from_config

    out_h, out_w = _size_from_config(data_config, None)
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    result = []
    for mask in masks:
        image = Image.fromarray(mask.astype("uint8") * 255)
        resized = TF.resize(
            image, round(out_h / crop_pct), interpolation=TF.InterpolationMode.NEAREST
        )
        result.append(TF.pil_to_tensor(TF.center_crop(resized, [out_h, out_w]))[0] > 127)
    return torch.stack(result)


def run_explain(cfg: DictConfig, out_dir: str | Path | None = None) -> Path:
    """Explain the configured inputs with every selected explainer; returns the report path."""
    import torch

    from focusvit.reports.explain import explain_images, write_explain_report
    from focusvit.reports.html import software_versions

    plan = validate_explain(cfg)
    out = Path(out_dir or cfg.out)
    resumed = prepare_output_dir(out, cfg)
    if resumed:
        _say(f"focusvit-explain: {out} holds this run already; recomputing its report")
    images, names, masks = _load_inputs(plan.inputs, int(cfg.report.max_images))
    start = time.perf_counter()
    backbone = plan.backbone.load()
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    backbone.to(device)
    batch = backbone.preprocess(images).to(device)
    gt = _transform_masks(masks, backbone.data_config) if masks is not None else None
    results = explain_images(
        backbone,
        batch,
        names,
        plan.explainers,
        plan.prompts,
        target=cfg.target,
        masks=gt,
        deletion_steps=int(cfg.report.deletion_steps),
        baseline=str(cfg.report.baseline),
        batch_size=int(cfg.report.batch_size),
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
    backbone: BackboneSpec
    dataset: Any
    episodes: EpisodeSpec
    tuner_options: dict[str, Any]
    fort: Any
    trainer: TrainerSpec
    methods: list[str]
    tuner_name: str


def validate_fewshot(cfg: DictConfig) -> FewshotPlan:
    """Build everything but the model (dataset index included); raises :class:`ConfigError`."""
    backbone = instantiate(cfg.backbone, "backbone")
    episodes = instantiate(cfg.episodes, "episodes")
    tuner = instantiate(cfg.tuner, "tuner")
    fort = instantiate(cfg.fort, "fort")
    trainer = instantiate(cfg.trainer, "trainer")
    methods = fewshot_methods(cfg, fort)
    if any(m.endswith("+fort") for m in methods) and not fort.enabled:
        raise ConfigError(
            f"methods {methods} use +fort but fort.alpha is 0; set fort=vit (or fort.alpha > 0)"
        )
    if "path" in cfg.data and OmegaConf.is_missing(cfg.data, "path"):
        raise ConfigError("data.path is required for data=imagefolder: data.path=/data/cub")
    dataset = instantiate(cfg.data, "data")
    from focusvit.data.episodes import check_episode_spec

    check_episode_spec(
        dataset.labels, episodes.n_way, episodes.k_shot, episodes.n_query, dataset.class_names
    )
    tuner_options = {
        k: v for k, v in OmegaConf.to_container(cfg.tuner).items() if k not in ("_target_", "name")
    }
    tuner_options = {k: v for k, v in tuner_options.items() if v is not None}
    del tuner  # built only to validate
    return FewshotPlan(
        backbone, dataset, episodes, tuner_options, fort, trainer, methods, str(cfg.tuner.name)
    )


def _method_options(plan: FewshotPlan, method: str) -> dict[str, Any]:
    from focusvit.finetune import SOLVERS, parse_method

    name, with_fort = parse_method(method)
    if name in SOLVERS:
        return {}
    options = plan.trainer.fit_options()
    # the tuner group's options apply to its own tuner; other tuners in `methods` use defaults
    options["tuner_options"] = dict(plan.tuner_options) if name == plan.tuner_name else {}
    if with_fort:
        options["fort"] = plan.fort
    return options


def run_fewshot(cfg: DictConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate the configured methods on episodes (sharded across processes under a launcher)
    and write the report; returns ``{"results": {method: EvaluationResult}, "report": path}``
    (the report only on rank 0)."""
    from focusvit.distributed import DistContext, read_records, seed_shard, shard, write_records
    from focusvit.finetune import EvaluationResult, evaluate
    from focusvit.reports.fewshot import write_fewshot_report
    from focusvit.reports.html import software_versions

    plan = validate_fewshot(cfg)
    out = Path(out_dir or cfg.out)
    resumed = prepare_output_dir(out, cfg, write=False)
    context = DistContext.from_env(plan.trainer.device)
    try:
        context.barrier()  # every rank has checked the folder before rank 0 writes to it
        if context.is_main:
            prepare_output_dir(out, cfg, write=True)
            if resumed:
                _say(f"focusvit-fewshot: resuming {out}")
        context.barrier()
        device = context.device(plan.trainer.device)
        start = time.perf_counter()
        backbone = plan.backbone.load()
        spec = plan.episodes
        all_ids = list(range(spec.episodes))
        results: dict[str, EvaluationResult] = {}
        for method in plan.methods:
            merged_path = out / "episodes" / f"{_file_name(method)}.jsonl"
            options = _method_options(plan, method)
            common = dict(
                method=method,
                n_way=spec.n_way,
                k_shot=spec.k_shot,
                n_query=spec.n_query,
                seed=spec.seed,
                device=device,
                progress=bool(cfg.progress) and context.is_main,
                **options,
            )
            if not context.distributed:
                result = evaluate(
                    backbone, plan.dataset, episodes=spec.episodes, output=merged_path, **common
                )
                write_records(merged_path, result.records)
            else:
                ids = shard(all_ids, context.rank, context.world_size)
                shard_path = out / "shards" / f"{_file_name(method)}.rank{context.rank}.jsonl"
                seed_shard(merged_path, shard_path, ids, method)
                context.barrier()
                part = evaluate(
                    backbone,
                    plan.dataset,
                    episodes=spec.episodes,
                    output=shard_path,
                    episode_ids=ids,
                    **common,
                )
                gathered = context.gather(part.records)
                if context.is_main:
                    previous = read_records(merged_path, method)
                    wanted = set(all_ids)
                    records = [
                        r
                        for group in [*gathered, previous]
                        for r in group
                        if r["episode"] in wanted
                    ]
                    write_records(merged_path, records)
                context.barrier()
                records = read_records(merged_path, method) if context.is_main else part.records
                result = EvaluationResult(method)
                result.records = [r for r in records if r["episode"] in set(all_ids)]
                result.accuracies = [r["accuracy"] for r in result.records]
            results[method] = result
            if context.is_main:
                _say(f"focusvit-fewshot: {result}")
        report = None
        if context.is_main:
            focus_runs, notes = _focus_runs(cfg, plan, backbone, out, device)
            setting = (
                f"{plan.backbone.spec} · {type(plan.dataset).__name__} "
                f"({len(plan.dataset.class_names)} classes) · {spec.n_way}-way {spec.k_shot}-shot, "
                f"{spec.n_query} queries per class, {spec.episodes} episodes, seed {spec.seed}"
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


def _file_name(method: str) -> str:
    return method.replace("+", "_")


def _focus_runs(cfg, plan: FewshotPlan, backbone, out: Path, device) -> tuple[list, list[str]]:
    """Attention focus of the first ``report.focus_episodes`` episodes, cached in
    ``focus.pt`` so a resumed run does not fine-tune them again."""
    import torch

    from focusvit.reports.fewshot import attention_focus

    count = min(int(cfg.report.focus_episodes), plan.episodes.episodes)
    if count <= 0:
        return [], []
    if backbone.family != "vit" or backbone.num_prefix_tokens < 1:
        return [], [
            f"attention focus needs a columnar ViT with a CLS token; {plan.backbone.spec} is "
            f"{backbone.family}: section skipped"
        ]
    key = {
        "config": _comparable(OmegaConf.to_container(cfg, resolve=True)),
        "methods": plan.methods,
        "max_queries": int(cfg.report.max_queries),
        "coverage": float(cfg.report.coverage),
    }
    cache_path = out / "focus.pt"
    cache = torch.load(cache_path, weights_only=False) if cache_path.exists() else {}
    if cache.get("key") != key:
        cache = {"key": key, "runs": {}}
    runs = []
    for index in range(count):
        if index not in cache["runs"]:
            _say(
                f"focusvit-fewshot: attention focus on episode {index} (fine-tunes each method once)"
            )
            cache["runs"][index] = attention_focus(
                backbone,
                plan.dataset,
                {m: _method_options(plan, m) for m in plan.methods},
                index,
                plan.episodes,
                plan.fort,
                coverage=float(cfg.report.coverage),
                max_queries=int(cfg.report.max_queries),
                device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
            )
            torch.save(cache, cache_path)
        runs.append(cache["runs"][index])
    return runs, []


# ----------------------------------------------------------------------------- entry points
def _guard(name: str, function: Callable[[], Any]) -> Any:
    """Run ``function``; configuration and input errors exit with a one-line message."""
    from focusvit.backbones import FocusVitError

    try:
        return function()
    except (ConfigError, FocusVitError) as error:
        sys.exit(f"{name}: error: {error}")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="explain")
def explain_main(cfg: DictConfig) -> None:
    """``focusvit-explain``: explain images (files, folders, ``samples``, ``synthetic``)."""
    from hydra.core.hydra_config import HydraConfig

    out = HydraConfig.get().runtime.output_dir
    _guard("focusvit-explain", lambda: run_explain(cfg, out))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="fewshot")
def fewshot_main(cfg: DictConfig) -> None:
    """``focusvit-fewshot``: evaluate few-shot methods on episodes and write a report."""
    from hydra.core.hydra_config import HydraConfig

    out = HydraConfig.get().runtime.output_dir
    _guard("focusvit-fewshot", lambda: run_fewshot(cfg, out))
