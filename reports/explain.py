"""Explanation reports: every selected explainer on a batch of images, its position prompt, and
the metrics of ``focusvit.explainers.metrics``; written as HTML (self-contained), PNG, JSON, CSV.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from focusvit.backbones import BackboneAdapter, FocusVitError
from focusvit.explainers import (
    Explainer,
    Explanation,
    attention_mass,
    cls_attention,
    coverage_count,
    deletion,
    explain,
    insertion,
    pointing_game,
    prompt_precision,
)
from focusvit.prompting import PositionPrompt
from focusvit.reports.figures import plot_explanation, save_overlay_grid
from focusvit.runs import mean_and_ci

from . import html as H

#: per-image metrics, in report order, with their meaning
METRICS = {
    "deletion_auc": "deletion AUC (lower = better)",
    "insertion_auc": "insertion AUC (higher = better)",
    "prompt_patches": "patches in the position prompt",
    "cls_attention_on_prompt": "share of the last-layer CLS attention on the prompt",
    "prompt_precision": "share of prompt patches inside the object mask",
    "pointing_game": "top patch on the object (1 hit, 0 miss)",
}


@dataclass
class ExplainResults:
    """Everything a report shows, as tensors (all per image in batch order)."""

    names: list[str]
    pictures: Tensor  # (B, 3, H, W) in [0, 1]
    explanations: dict[str, Explanation] = field(default_factory=dict)
    prompts: dict[str, PositionPrompt] = field(default_factory=dict)
    metrics: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    model_metrics: dict[str, Tensor] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    predictions: Tensor | None = None


def _concat(parts: Sequence[Explanation]) -> Explanation:
    targets = [p.targets for p in parts]
    return Explanation(
        scores=torch.cat([p.scores for p in parts]),
        method=parts[0].method,
        params=parts[0].params,
        image_size=parts[0].image_size,
        targets=None if any(t is None for t in targets) else torch.cat(targets),
    )


def explain_images(
    backbone: BackboneAdapter,
    batch: Tensor,
    names: Sequence[str],
    explainers: Mapping[str, Explainer],
    prompt_spec,
    target: int | None = None,
    masks: Tensor | None = None,
    deletion_steps: int = 16,
    baseline: str = "mean",
    batch_size: int = 8,
) -> ExplainResults:
    """Explain ``batch`` with every explainer, make prompts and compute the metrics.

    Args:
        backbone: any adapter; explainers that do not apply to its family are skipped (named
            in ``skipped`` with the reason), as are explainers that fail on this model.
        batch: ``(B, 3, H, W)`` preprocessed images.
        explainers: name -> :class:`Explainer` (e.g. from the ``explainer`` config group).
        prompt_spec: a :class:`focusvit.runconfig.PromptSpec` (or anything with ``make``).
        target: class to explain; None: each image's predicted class.
        masks: optional ``(B, H, W)`` bool object masks (adds precision and pointing game).
        deletion_steps: steps of the deletion / insertion curves; 0 skips them.
    """
    from focusvit.data.images import denormalise

    results = ExplainResults(
        names=list(names), pictures=denormalise(batch.cpu(), backbone.data_config)
    )
    chunks = batch.split(batch_size)
    with torch.no_grad(), backbone.evaluating():
        results.predictions = torch.cat([backbone.logits(c).argmax(dim=1).cpu() for c in chunks])
    attention = None
    if backbone.family == "vit" and backbone.num_prefix_tokens > 0:
        attention = torch.cat([cls_attention(backbone, c).cpu() for c in chunks])
        results.model_metrics["cls_coverage_95"] = coverage_count(attention, 0.95).float()
    for name, explainer in explainers.items():
        if backbone.family not in explainer.families:
            results.skipped[name] = (
                f"does not apply to {backbone.family} models (families: "
                f"{', '.join(explainer.families)})"
            )
            continue
        try:
            explanation = _concat(
                [explain(backbone, c, method=explainer, target=target) for c in chunks]
            )
        except (FocusVitError, ValueError, RuntimeError) as error:
            results.skipped[name] = f"failed on {backbone.name}: {error}"
            continue
        explanation = Explanation(
            scores=explanation.scores.cpu(),
            method=explanation.method,
            params=explanation.params,
            image_size=explanation.image_size,
            targets=None if explanation.targets is None else explanation.targets.cpu(),
        )
        prompt = prompt_spec.make(explanation)
        results.explanations[name] = explanation
        results.prompts[name] = prompt
        values: dict[str, Tensor] = {}
        if deletion_steps > 0:
            classes = explanation.targets if explanation.targets is not None else None
            if classes is not None and bool((classes < 0).any()):
                classes = None
            kwargs = {"steps": deletion_steps, "baseline": baseline, "target": classes}
            values["deletion_auc"] = torch.cat(
                [
                    deletion(
                        backbone, c, s, **{**kwargs, "target": _part(classes, i, batch_size)}
                    ).auc.cpu()
                    for i, (c, s) in enumerate(
                        zip(chunks, explanation.scores.split(batch_size), strict=True)
                    )
                ]
            )
            values["insertion_auc"] = torch.cat(
                [
                    insertion(
                        backbone, c, s, **{**kwargs, "target": _part(classes, i, batch_size)}
                    ).auc.cpu()
                    for i, (c, s) in enumerate(
                        zip(chunks, explanation.scores.split(batch_size), strict=True)
                    )
                ]
            )
        values["prompt_patches"] = prompt.mask.flatten(1).sum(dim=1).float()
        if attention is not None and attention.shape[1] == prompt.mask[0].numel():
            values["cls_attention_on_prompt"] = attention_mass(
                attention.view_as(prompt.mask), prompt.mask
            )
        if masks is not None:
            values["prompt_precision"] = prompt_precision(prompt.mask, masks)
            values["pointing_game"] = pointing_game(explanation.scores, masks)
        results.metrics[name] = {k: v.float().cpu() for k, v in values.items()}
    if not results.explanations:
        raise FocusVitError(
            f"no explainer could explain {backbone.name}: "
            + "; ".join(f"{k}: {v}" for k, v in results.skipped.items())
        )
    return results


def _part(classes: Tensor | None, index: int, size: int) -> Tensor | None:
    return None if classes is None else classes[index * size : (index + 1) * size]


def summary_rows(results: ExplainResults) -> list[list[Any]]:
    """``[explainer, metric, mean, ci95, n]`` over the images."""
    rows = []
    for name, values in results.metrics.items():
        for metric, tensor in values.items():
            finite = tensor[~torch.isnan(tensor)]
            if finite.numel() == 0:
                rows.append([name, metric, float("nan"), float("nan"), 0])
                continue
            mean, ci = mean_and_ci(finite)
            rows.append([name, metric, mean, ci, int(finite.numel())])
    return rows


def write_explain_report(
    out_dir: str | Path,
    results: ExplainResults,
    backbone_name: str,
    config_yaml: str = "",
    versions: Mapping[str, str] | None = None,
    dpi: int = 100,
) -> Path:
    """Write ``report.html`` plus ``figures/*.png``, ``metrics.json`` and ``metrics.csv``."""
    out = Path(out_dir)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    versions = dict(versions or H.software_versions())
    methods = list(results.explanations)
    save_overlay_grid(
        results.pictures, results.explanations, results.prompts, figures / "overlays.png", dpi=dpi
    )

    summary = summary_rows(results)
    sections = [
        f"<p>model <b>{H.esc(backbone_name)}</b>, {len(results.names)} images, explainers: "
        + ", ".join(f"<b>{H.esc(m)}</b>" for m in methods)
        + "</p>",
        "<h2>Summary (mean ± 95% interval over images)</h2>",
        _summary_table(summary),
        "<p>" + "; ".join(f"<i>{k}</i>: {H.esc(v)}" for k, v in METRICS.items()) + "</p>",
    ]
    if results.skipped:
        sections.append(
            "<p class='note'>skipped: "
            + "; ".join(f"<b>{H.esc(k)}</b> {H.esc(v)}" for k, v in results.skipped.items())
            + "</p>"
        )
    sections.append("<h2>Images</h2>")
    per_image = []
    for index, name in enumerate(results.names):
        stem = _safe(name)
        picture = results.pictures[index]
        from matplotlib.figure import Figure

        fig = Figure(figsize=(3, 3))
        ax = fig.add_subplot()
        ax.imshow(picture.permute(1, 2, 0).numpy())
        ax.set_axis_off()
        blocks = [
            H.figure_block(
                H.save_figure(fig, figures / f"{stem}_image.png", dpi), name, kind="image"
            )
        ]
        row_metrics: dict[str, Any] = {"image": name}
        if results.predictions is not None:
            row_metrics["predicted_class"] = int(results.predictions[index])
        for metric, values in results.model_metrics.items():
            row_metrics[metric] = float(values[index])
        for method in methods:
            explanation = results.explanations[method]
            fig = plot_explanation(
                picture,
                explanation.scores[index],
                results.prompts[method].mask[index],
                title=method,
            )
            png = H.save_figure(fig, figures / f"{stem}_{method}.png", dpi)
            caption = (
                method
                + " · "
                + ", ".join(
                    f"{k} {H.fmt(float(v[index]))}" for k, v in results.metrics[method].items()
                )
            )
            blocks.append(H.figure_block(png, caption, explainer=method))
            for metric, values in results.metrics[method].items():
                row_metrics[f"{method}.{metric}"] = float(values[index])
        per_image.append(row_metrics)
        extra = ", ".join(
            f"{k} {H.fmt(v)}" for k, v in row_metrics.items() if "." not in k and k != "image"
        )
        sections.append(
            f"<div class='row'><b>{H.esc(name)}</b> <small>{H.esc(extra)}</small><br>"
            + "".join(blocks)
            + "</div>"
        )
    sections.append(
        "<p>Heat maps: explainer scores upsampled to the image; white outline and dots: the "
        "position prompt (top-P patches).</p>"
    )
    sections.append(H.config_section(config_yaml))
    sections.append(H.versions_section(versions))
    report = out / "report.html"
    report.write_text(H.page(f"focusvit explanation report · {backbone_name}", sections))

    H.write_json(
        out / "metrics.json",
        {
            "model": backbone_name,
            "explainers": methods,
            "skipped": results.skipped,
            "summary": [
                dict(zip(["explainer", "metric", "mean", "ci95", "n"], r, strict=True))
                for r in summary
            ],
            "images": per_image,
            "versions": versions,
        },
    )
    columns = sorted({k for row in per_image for k in row}, key=lambda k: (k != "image", k))
    H.write_csv(
        out / "metrics.csv", columns, ([row.get(c, "") for c in columns] for row in per_image)
    )
    return report


def _summary_table(summary: list[list[Any]]) -> str:
    """Explainers as rows, metrics as columns, cells ``mean ± ci``."""
    metrics = [m for m in METRICS if any(row[1] == m for row in summary)]
    cells: dict[str, dict[str, str]] = {}
    for name, metric, mean, ci, n in summary:
        cells.setdefault(name, {})[metric] = f"{H.fmt(mean)} ± {H.fmt(ci)}" if n else "–"
    return H.table(
        ["explainer", *metrics],
        ([name, *(row.get(m, "–") for m in metrics)] for name, row in cells.items()),
    )


def _safe(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return keep.strip("._") or "image"
