"""Few-shot reports: accuracy table with 95% intervals, attention focus before and after
fine-tuning (FORT's 95%-coverage patch counts and the attention mass on the position prompts),
support / query attention maps before and after, the config and the software versions.

:func:`attention_focus` re-runs ``fit_task`` on a few episodes (seeded as in
``focusvit.evaluate``, so the tuned model is the one evaluated) and reads the last-layer CLS
attention of the pretrained and of the tuned backbone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from focusvit.backbones import BackboneAdapter
from focusvit.data.episodes import sample_episode
from focusvit.errors import ConfigError
from focusvit.explainers import attention_mass, cls_attention, coverage_count, explain
from focusvit.finetune import TunerRunner, fit_task, support_features
from focusvit.finetune.attention_loss import masks_for_prompts
from focusvit.finetune.evaluate import episode_tensors
from focusvit.prompting import make_prompts
from focusvit.reports.figures import plot_explanation
from focusvit.reports.progress import progress_bar
from focusvit.runs import episode_seed, mean_and_ci

from . import html as H


def _patch_attention(backbone: BackboneAdapter, images: Tensor, grid: tuple[int, int]) -> Tensor:
    """CLS attention ``(B, h, w)`` on the patches (``cls_attention`` drops the prefix tokens and
    any tokens a tuner inserted, e.g. VPT prompts, through the adapter's geometry)."""
    attention = torch.cat([cls_attention(backbone, chunk).cpu() for chunk in images.split(32)])
    return attention.view(-1, *grid)


def episode_prompts(backbone: BackboneAdapter, support: Tensor, labels: Tensor, fort) -> Tensor:
    """Position-prompt masks ``(K, h, w)`` of the support images, the same for every method.

    The explainer's target is the cosine similarity of each image's features to its class
    prototype (the backbone has no task head outside ``fit_task``).
    """
    features = F.normalize(support_features(backbone, support), dim=1)
    prototypes = torch.stack(
        [features[labels == c].mean(dim=0) for c in range(int(labels.max()) + 1)]
    )
    prototypes = F.normalize(prototypes, dim=1)[labels]

    def target(logits: Tensor) -> Tensor:
        if logits.shape[1] != prototypes.shape[1]:
            return logits.max(dim=1).values
        return (F.normalize(logits.float(), dim=1) * prototypes.to(logits.device)).sum(dim=1)

    explanation = explain(backbone, support, method=fort.explainer, target=target)
    return make_prompts(explanation, top_k=fort.top_k, top_fraction=fort.top_fraction).mask.cpu()


def attention_focus(
    backbone: BackboneAdapter,
    dataset,
    runners: Mapping[str, Any],
    episode_index: int,
    episodes,
    fort,
    coverage: float = 0.95,
    max_queries: int = 5,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Attention focus of one episode before and after fine-tuning with each method.

    Args:
        runners: method name (``lora``, ``lora+fort``, ...) -> its runner
            (:func:`focusvit.finetune.make_runner`); frozen-feature solvers are skipped (their
            attention is the pretrained one).
        episodes: an :class:`~focusvit.runs.EpisodeSpec` (n_way, k_shot, n_query, seed).
        fort: a resolved :class:`~focusvit.FortConfig` whose explainer and prompt size make the
            prompts shown (the same for every method).
        progress: a bar over the pretrained model and each fine-tuned method on stderr
            (shown only when stderr is a terminal); False: no bar.

    Returns a dict with ``grid``, ``support`` / ``query`` images in [0, 1] (the first
    ``max_queries`` queries), ``classes`` (the names of the episode's classes in episode-label
    order: ``dataset.class_names``, i.e. the folder names of an ImageFolder dataset or the
    glyph names of SyntheticScenes; indices when the dataset has none), ``support_labels`` /
    ``query_labels`` (episode labels of the shown images), ``prompts`` ``(K, h, w)``,
    ``maps`` ``{"pretrained" | method:
    {"support": (K, h, w), "query": (q, h, w)}}`` and ``numbers`` ``{stage: {metric: value}}``
    (mean 95%-coverage count on support and query images, mean attention mass on the prompts,
    and the episode accuracy of each method). When the dataset has object masks
    (``dataset.mask(i)``, e.g. SyntheticScenes or an ImageFolderDataset with ``mask_root``), also
    ``support_mass_on_object`` / ``query_mass_on_object``: the share of the CLS attention on the
    patches at least half covered by the class object (:func:`object_patches`), the quantity
    the attention-enhancement loss is meant to raise (docs/concepts/data.md).
    """
    from focusvit.data.images import denormalise

    if backbone.family != "vit" or backbone.num_prefix_tokens < 1:
        raise ConfigError(
            f"attention focus reads the CLS attention of a columnar ViT; {backbone.name} is a "
            f"{backbone.family} model"
        )
    episode = sample_episode(
        dataset.labels,
        episode_index,
        episodes.n_way,
        episodes.k_shot,
        episodes.n_query,
        episodes.seed,
    )
    support, s_labels, query, q_labels = episode_tensors(dataset, episode, backbone, device)
    grid = backbone.grid_size(tuple(support.shape[-2:]))
    prompts = episode_prompts(backbone, support, s_labels, fort)
    objects = {
        "support": object_patches(backbone, dataset, episode.support, grid),
        "query": object_patches(backbone, dataset, episode.query, grid),
    }

    def measure(model: BackboneAdapter) -> tuple[dict[str, Tensor], dict[str, float]]:
        maps = {
            "support": _patch_attention(model, support, grid),
            "query": _patch_attention(model, query, grid),
        }
        numbers = {
            f"support_coverage_{round(coverage * 100)}": float(
                coverage_count(maps["support"], coverage).float().mean()
            ),
            f"query_coverage_{round(coverage * 100)}": float(
                coverage_count(maps["query"], coverage).float().mean()
            ),
            "support_mass_on_prompt": float(attention_mass(maps["support"], prompts).mean()),
        }
        for part, patches in objects.items():
            if patches is not None:
                share = attention_mass(maps[part], patches).mean()
                numbers[f"{part}_mass_on_object"] = float(share)
        maps["query"] = maps["query"][:max_queries]
        return maps, numbers

    tuned = [m for m, r in runners.items() if isinstance(r, TunerRunner)]
    bar = progress_bar(
        1 + len(tuned), f"attention focus, episode {episode_index}", "model", progress
    )
    bar.set_postfix_str("pretrained")
    maps, numbers = {}, {}
    maps["pretrained"], numbers["pretrained"] = measure(backbone)
    bar.update()
    for method, runner in runners.items():
        if not isinstance(runner, TunerRunner):
            continue  # frozen features: the attention is the pretrained one
        bar.set_postfix_str(method)
        torch.manual_seed(episode_seed(episodes.seed, episode_index))  # as focusvit.evaluate
        masks = masks_for_prompts(runner.fort, backbone, dataset, episode.support)
        with fit_task(
            backbone, support, s_labels, tuner=runner.tuner, fort=runner.fort,
            options=runner.options, support_masks=masks,
        ) as task:  # fmt: skip
            maps[method], numbers[method] = measure(task.backbone)
            numbers[method]["accuracy"] = float(
                (task.predict(query).cpu() == q_labels.cpu()).float().mean()
            )
        bar.update()
    bar.close()
    return {
        "episode": episode_index,
        "grid": grid,
        "classes": episode_class_names(dataset, episode.classes),
        "support_labels": [int(label) for label in s_labels.cpu()],
        "query_labels": [int(label) for label in q_labels[:max_queries].cpu()],
        "support": denormalise(support.cpu(), backbone.data_config),
        "query": denormalise(query[:max_queries].cpu(), backbone.data_config),
        "prompts": prompts,
        "maps": maps,
        "numbers": numbers,
    }


def object_patches(
    backbone: BackboneAdapter, dataset, indices: Sequence[int], grid: tuple[int, int]
) -> Tensor | None:
    """``(B, h, w)`` bool: the patches at least half covered by each image's object mask.

    The masks (``dataset.mask(i)``) go through the backbone's own resize / crop
    (:meth:`~focusvit.backbones.BackboneAdapter.preprocess_masks`), then are average-pooled to
    the patch grid. ``None`` when the dataset has no masks (no ``mask`` method, or a mask is
    ``None``) or holds preprocessed tensors (their masks cannot be aligned).
    """
    reader = getattr(dataset, "mask", None)
    if reader is None or not len(indices):
        return None
    masks = [reader(int(i)) for i in indices]
    if any(m is None for m in masks) or isinstance(dataset.load(int(indices[0])), Tensor):
        return None
    pixels = backbone.preprocess_masks(masks).float()
    return F.adaptive_avg_pool2d(pixels[:, None], grid)[:, 0] >= 0.5


def episode_class_names(dataset, classes: Sequence[int]) -> list[str]:
    """Names of an episode's classes (dataset labels ``classes``) from ``dataset.class_names``
    (ImageFolder: folder names; SyntheticScenes: glyph names), or ``"class <label>"``."""
    names = getattr(dataset, "class_names", None)
    return [
        str(names[c]) if names is not None and 0 <= c < len(names) else f"class {c}"
        for c in classes
    ]


def _image_title(focus: Mapping[str, Any], kind: str, index: int) -> str:
    """``"support 0 · <class name>"`` (just ``"support 0"`` for focus runs without names)."""
    classes = focus.get("classes")
    labels = focus.get(f"{kind}_labels")
    if not classes or labels is None or index >= len(labels):
        return f"{kind} {index}"
    return f"{kind} {index} · {classes[int(labels[index])]}"


def focus_figure(focus: Mapping[str, Any]):
    """Rows: support images then queries; columns: the image (titled with its class name),
    pretrained attention, then the attention after each method. Prompt patches are outlined
    on the support rows."""
    from matplotlib.figure import Figure

    stages = list(focus["maps"])
    images = [("support", i, img) for i, img in enumerate(focus["support"])] + [
        ("query", i, img) for i, img in enumerate(focus["query"])
    ]
    cols = 1 + len(stages)
    fig = Figure(figsize=(2.2 * cols, 2.2 * len(images)))
    axes = fig.subplots(len(images), cols, squeeze=False)
    for row, (kind, index, image) in enumerate(images):
        axes[row, 0].imshow(image.permute(1, 2, 0).numpy())
        axes[row, 0].set_axis_off()
        axes[row, 0].set_title(_image_title(focus, kind, index), fontsize=8)
        for col, stage in enumerate(stages, start=1):
            prompt = focus["prompts"][index] if kind == "support" else None
            plot_explanation(
                image,
                focus["maps"][stage][kind][index],
                prompt,
                ax=axes[row, col],
                title=(f"{stage}" if row == 0 else None),
            )
    fig.tight_layout()
    return fig


def accuracy_figure(rows: Sequence[Mapping[str, Any]]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.2 + 1.1 * len(rows), 3.2))
    ax = fig.add_subplot()
    names = [r["method"] for r in rows]
    means = [100 * r["mean"] for r in rows]
    errors = [0.0 if r["ci95"] != r["ci95"] else 100 * r["ci95"] for r in rows]
    ax.bar(names, means, yerr=errors, capsize=4, color="#4c78a8")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    return fig


def accuracy_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per method: mean, 95% interval, episodes, trainable parameters, final loss."""
    rows = []
    for method, result in results.items():
        losses = [r.get("final_loss") for r in result.records if r.get("final_loss")]
        mean_loss = (
            sum(float(loss["total"]) for loss in losses) / len(losses) if losses else float("nan")
        )
        trainable = next((r.get("trainable") for r in result.records if r.get("trainable")), None)
        rows.append(
            {
                "method": method,
                "episodes": len(result.accuracies),
                "diverged": result.diverged,
                "mean": result.mean,
                "ci95": result.ci95,
                "trainable": trainable,
                "final_loss": mean_loss,
            }
        )
    return rows


def focus_rows(focus_runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± 95% interval of each focus number per stage over the analysed episodes."""
    stages: dict[str, dict[str, list[float]]] = {}
    for focus in focus_runs:
        for stage, numbers in focus["numbers"].items():
            for metric, value in numbers.items():
                stages.setdefault(stage, {}).setdefault(metric, []).append(value)
    rows = []
    for stage, metrics in stages.items():
        row: dict[str, Any] = {"stage": stage, "episodes": len(next(iter(metrics.values())))}
        for metric, values in metrics.items():
            row[metric], row[f"{metric}_ci95"] = mean_and_ci(values)
        rows.append(row)
    return rows


#: meaning of the attention-focus numbers, by the end of their name
FOCUS_METRICS = {
    "coverage_95": "patches needed to cover 95% of the attention (fewer = more focused)",
    "mass_on_prompt": "share of the attention on the images' position prompts",
    "mass_on_object": "share of the attention on the patches at least half covered by the "
    "class object (ground-truth masks)",
    "accuracy": "accuracy of the tuned model on the episode's queries",
}


def _focus_legend(metrics: Sequence[str]) -> str:
    """``<i>metric</i>: meaning`` for each shown metric (and only those)."""
    entries = []
    for metric in metrics:
        meaning = next((v for k, v in FOCUS_METRICS.items() if metric.endswith(k)), None)
        if meaning is not None:
            prefix = metric.split("_", 1)[0]
            if prefix in ("support", "query"):
                meaning = f"{meaning}, {prefix} images"
            entries.append(f"<i>{H.esc(metric)}</i>: {H.esc(meaning)}")
    return "; ".join(entries) + ("." if entries else "")


def _focus_cell(row: Mapping[str, Any], metric: str) -> str:
    """``mean ± ci`` (just the mean for one episode); patch counts without decimals where
    whole; ``–`` for a number the stage does not have (e.g. accuracy before fine-tuning)."""
    mean, ci = row.get(metric), row.get(f"{metric}_ci95")
    if mean is None:
        return "–"
    show = H.fmt_count if "coverage" in metric else H.fmt
    if ci is None or ci != ci or row.get("episodes") == 1:
        return show(float(mean))
    return f"{show(float(mean))} ± {show(float(ci))}"


def write_fewshot_report(
    out_dir: str | Path,
    results: Mapping[str, Any],
    focus_runs: Sequence[Mapping[str, Any]],
    title: str,
    setting: str,
    config_yaml: str = "",
    versions: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
    dpi: int = 100,
) -> Path:
    """Write ``report.html``, ``figures/*.png``, ``results.json``, ``accuracy.csv``, ``focus.csv``."""
    out = Path(out_dir)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    versions = dict(versions or H.software_versions())
    acc = accuracy_rows(results)
    focus = focus_rows(focus_runs)
    sections = [f"<p>{H.esc(setting)}</p>", "<h2>Accuracy (mean ± 95% interval over episodes)</h2>"]
    sections.append(
        H.table(
            ["method", "episodes", "accuracy %", "± 95%", "trainable params", "final loss"],
            (
                [
                    r["method"],
                    r["episodes"],
                    100 * r["mean"],
                    100 * r["ci95"],
                    r["trainable"],
                    r["final_loss"],
                ]
                for r in acc
            ),
        )
    )
    png = H.save_figure(accuracy_figure(acc), figures / "accuracy.png", dpi)
    sections.append(
        H.figure_block(png, "accuracy per method (error bars: 95% interval)", kind="accuracy")
    )
    if focus:
        metrics = list(
            dict.fromkeys(
                k
                for row in focus
                for k in row
                if k not in ("stage", "episodes") and not k.endswith("_ci95")
            )
        )
        sections.append(
            "<h2>Attention focus before / after fine-tuning</h2><p>Last-layer CLS attention "
            "(mean over heads); each cell: mean over images, ± 95% interval over episodes. "
            + _focus_legend(metrics)
            + "</p>"
        )
        sections.append(
            H.table(
                ["stage", "episodes", *metrics],
                ([r["stage"], r["episodes"], *(_focus_cell(r, m) for m in metrics)] for r in focus),
            )
        )
        for run in focus_runs:
            png = H.save_figure(
                focus_figure(run), figures / f"focus_episode{run['episode']}.png", dpi
            )
            classes = run.get("classes")
            named = f" (classes: {', '.join(map(str, classes))})" if classes else ""
            sections.append(
                f"<h3>Episode {run['episode']}{H.esc(named)}: support and query attention</h3>"
                + H.figure_block(
                    png,
                    "columns: image, pretrained attention, attention after each method; white: "
                    "the support images' position prompts",
                    wide=True,
                    kind="focus",
                )
            )
    for note in notes:
        sections.append(f"<p class='note'>{H.esc(note)}</p>")
    sections.append(H.config_section(config_yaml))
    sections.append(H.versions_section(versions))
    report = out / "report.html"
    report.write_text(H.page(title, sections))

    H.write_json(
        out / "results.json",
        {
            "setting": setting,
            "accuracy": acc,
            "focus": focus,
            "focus_episodes": [
                {"episode": r["episode"], "numbers": r["numbers"]} for r in focus_runs
            ],
            "notes": list(notes),
            "versions": versions,
        },
    )
    columns = ["method", "episodes", "mean", "ci95", "trainable", "final_loss"]
    H.write_csv(out / "accuracy.csv", columns, ([r[c] for c in columns] for r in acc))
    if focus:
        columns = list(focus[0])
        H.write_csv(out / "focus.csv", columns, ([r.get(c) for c in columns] for r in focus))
    return report
