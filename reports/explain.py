"""Explanation reports: every selected explainer on a batch of images, its position prompt, and
the metrics of ``focusvit.explainers.metrics``; written as HTML (self-contained), PNG, JSON, CSV.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from focusvit.backbones import BackboneAdapter, FocusVitError
from focusvit.backbones.catalog import head_class_names
from focusvit.errors import ConfigError
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
from focusvit.reports.progress import progress_bar
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

#: per-image metrics of the model itself (not of an explainer), with their meaning
MODEL_METRICS = {
    "cls_coverage_95": "patches needed to cover 95% of the last-layer CLS attention (fewer = "
    "more focused; the model's, the same for every explainer)",
}

#: metrics that count patches: integers per image (their means: one decimal when not whole)
COUNTS = frozenset({"prompt_patches", "cls_coverage_95"})


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
    #: names of the head's classes, indexed like the logits (None: unknown, indices shown)
    class_names: list[str] | None = None
    #: per image, the name of its true class (e.g. its ImageFolder folder), or None
    labels: list[str | None] | None = None
    #: True when the model has no classification head: its "logits" are the pooled features
    logits_are_features: bool = False
    #: size of the logits (classes, or feature dimensions without a head)
    num_outputs: int = 0

    def class_label(self, index: int) -> str:
        """How class (or, without a head, feature) ``index`` is shown in the report."""
        if index < 0:
            return "a custom target"
        if self.logits_are_features:
            return f"feature {index}"
        if self.class_names is not None and index < len(self.class_names):
            return f"{self.class_names[index]} ({index})"
        return f"class {index}"


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
    class_names: Sequence[str] | None = None,
    labels: Sequence[str | None] | None = None,
    progress: bool = True,
    on_image: Callable[[str, int, str, dict[str, float]], None] | None = None,
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
        class_names: names of the head's classes, one per logit (e.g. the dataset's
            ``class_names`` for a head trained on it); default
            :func:`~focusvit.backbones.catalog.head_class_names` (the model's own labels, or
            the ImageNet names for ImageNet heads; None when unknown).
        labels: per image, the name of its true class (an ImageFolder folder name,
            ``SyntheticScenes.class_names[label]``) or None; shown next to the prediction.
        progress: a bar over explainers x images on stderr (shown only when stderr is a
            terminal); False: no bar.
        on_image: called as ``on_image(explainer, index, name, metrics)`` as soon as an
            image's metrics for an explainer are computed (chunk by chunk), e.g. to write a
            log line per image while the run goes on.

    Raises:
        ValueError: ``labels`` or ``class_names`` do not match the batch or the logits.
    """
    from focusvit.data.images import denormalise

    if labels is not None and len(labels) != len(batch):
        raise ConfigError(
            f"labels has {len(labels)} entries for {len(batch)} images; pass one class name "
            "(or None) per image, in batch order"
        )
    features = not backbone.head_name or isinstance(backbone.head, nn.Identity)
    results = ExplainResults(
        names=list(names),
        pictures=denormalise(batch.cpu(), backbone.data_config),
        labels=None if labels is None else [None if x is None else str(x) for x in labels],
        logits_are_features=features,
    )
    chunks = batch.split(batch_size)
    with torch.no_grad(), backbone.evaluating():
        logits = [backbone.logits(c) for c in chunks]
        results.num_outputs = int(logits[0].shape[1])
        results.predictions = torch.cat([part.argmax(dim=1).cpu() for part in logits])
    del logits
    if class_names is not None:
        if len(class_names) != results.num_outputs:
            raise ConfigError(
                f"class_names has {len(class_names)} names but the logits of {backbone.name} "
                f"have {results.num_outputs} entries; pass one name per output of the head "
                "(or None to use the model's own names)"
            )
        results.class_names = [str(name) for name in class_names]
    elif not features:
        results.class_names = head_class_names(backbone)
    attention = None
    if backbone.family == "vit" and backbone.num_prefix_tokens > 0:
        attention = torch.cat([cls_attention(backbone, c).cpu() for c in chunks])
        results.model_metrics["cls_coverage_95"] = coverage_count(attention, 0.95).float()
    applicable = [n for n, e in explainers.items() if backbone.family in e.families]
    bar = progress_bar(len(applicable) * len(batch), "explain", "image", progress)
    for name, explainer in explainers.items():
        if backbone.family not in explainer.families:
            results.skipped[name] = (
                f"does not apply to {backbone.family} models (families: "
                f"{', '.join(explainer.families)})"
            )
            continue
        bar.set_description(f"explain {name}")
        parts: list[Explanation] = []
        values: dict[str, list[Tensor]] = {}
        for index, chunk in enumerate(chunks):  # explain and score chunk by chunk, as it goes
            try:
                part = explain(backbone, chunk, method=explainer, target=target)
            except (FocusVitError, ValueError, RuntimeError) as error:
                results.skipped[name] = f"failed on {backbone.name}: {error}"
                break
            part = Explanation(
                scores=part.scores.cpu(),
                method=part.method,
                params=part.params,
                image_size=part.image_size,
                targets=None if part.targets is None else part.targets.cpu(),
            )
            first = index * batch_size
            rows = slice(first, first + len(chunk))
            chunk_values = _chunk_metrics(
                backbone,
                chunk,
                part,
                prompt_spec.make(part),
                None if attention is None else attention[rows],
                None if masks is None else masks[rows],
                deletion_steps,
                baseline,
            )
            parts.append(part)
            for metric, value in chunk_values.items():
                values.setdefault(metric, []).append(value)
            bar.update(len(chunk))
            if on_image is not None:
                for offset in range(len(chunk)):
                    row = {k: float(v[offset]) for k, v in chunk_values.items()}
                    on_image(name, first + offset, results.names[first + offset], row)
        if name in results.skipped:
            bar.update(len(batch) - sum(len(p.scores) for p in parts))
            continue
        explanation = _concat(parts)
        results.explanations[name] = explanation
        results.prompts[name] = prompt_spec.make(explanation)
        results.metrics[name] = {k: torch.cat(v) for k, v in values.items()}
    bar.close()
    if not results.explanations:
        raise FocusVitError(
            f"no explainer could explain {backbone.name}: "
            + "; ".join(f"{k}: {v}" for k, v in results.skipped.items())
        )
    return results


def _chunk_metrics(
    backbone: BackboneAdapter,
    chunk: Tensor,
    explanation: Explanation,
    prompt: PositionPrompt,
    attention: Tensor | None,
    masks: Tensor | None,
    deletion_steps: int,
    baseline: str,
) -> dict[str, Tensor]:
    """The per-image metrics of one chunk of images (every metric is per image, so a batch's
    values are the concatenation of its chunks' values)."""
    values: dict[str, Tensor] = {}
    if deletion_steps > 0:
        classes = explanation.targets
        if classes is not None and bool((classes < 0).any()):
            classes = None  # a custom target has no class to delete / insert evidence for
        kwargs = {"steps": deletion_steps, "baseline": baseline, "target": classes}
        values["deletion_auc"] = deletion(backbone, chunk, explanation.scores, **kwargs).auc
        values["insertion_auc"] = insertion(backbone, chunk, explanation.scores, **kwargs).auc
    values["prompt_patches"] = prompt.mask.flatten(1).sum(dim=1).float()
    if attention is not None and attention.shape[1] == prompt.mask[0].numel():
        values["cls_attention_on_prompt"] = attention_mass(
            attention.view_as(prompt.mask), prompt.mask
        )
    if masks is not None:
        values["prompt_precision"] = prompt_precision(prompt.mask, masks)
        values["pointing_game"] = pointing_game(explanation.scores, masks)
    return {k: v.float().cpu() for k, v in values.items()}


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
    """Write ``report.html`` plus ``figures/*.png``, ``metrics.json`` and ``metrics.csv``.

    Classes are shown by name where known (``results.class_names``, ``results.labels``); a
    model without a classification head is stated as such (its "logits" are pooled features);
    patch counts are integers; the legend lists only the metrics that were computed.
    """
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
        _head_note(results, backbone_name),
        "<h2>Summary (mean ± 95% interval over images)</h2>",
        _summary_table(summary),
        _legend(results),
    ]
    if results.skipped:
        sections.append(
            "<p class='note'>skipped: "
            + "; ".join(f"<b>{H.esc(k)}</b> {H.esc(v)}" for k, v in results.skipped.items())
            + "</p>"
        )
    sections.append("<h2>Images</h2>")
    per_image = []
    stems = unique_stems(results.names)
    for index, name in enumerate(results.names):
        stem = stems[index]
        picture = results.pictures[index]
        from matplotlib.figure import Figure

        fig = Figure(figsize=(3, 3))
        ax = fig.add_subplot()
        ax.imshow(picture.permute(1, 2, 0).numpy())
        ax.set_axis_off()
        label = results.labels[index] if results.labels is not None else None
        blocks = [
            H.figure_block(
                H.save_figure(fig, figures / f"{stem}_image.png", dpi),
                name if label is None else f"{name} · {label}",
                kind="image",
            )
        ]
        row_metrics: dict[str, Any] = {"image": name}
        shown: list[str] = []
        if label is not None:
            row_metrics["label"] = label
            shown.append(f"label {label}")
        predicted = None
        if results.predictions is not None:
            predicted = int(results.predictions[index])
            row_metrics["predicted_class"] = predicted
            if results.class_names is not None and not results.logits_are_features:
                row_metrics["predicted_name"] = results.class_names[predicted]
            what = "largest feature" if results.logits_are_features else "predicted"
            shown.append(f"{what} {results.class_label(predicted)}")
        for metric, values in results.model_metrics.items():
            row_metrics[metric] = _per_image(metric, values[index])
            shown.append(f"{metric} {_fmt(metric, values[index])}")
        for method in methods:
            explanation = results.explanations[method]
            fig = plot_explanation(
                picture,
                explanation.scores[index],
                results.prompts[method].mask[index],
                title=method,
            )
            png = H.save_figure(fig, figures / f"{stem}_{method}.png", dpi)
            parts = [method]
            if explanation.targets is not None:
                explained = int(explanation.targets[index])
                row_metrics[f"{method}.explained_class"] = explained
                if explained != predicted:
                    parts.append(f"explains {results.class_label(explained)}")
            parts.append(
                ", ".join(f"{k} {_fmt(k, v[index])}" for k, v in results.metrics[method].items())
            )
            blocks.append(H.figure_block(png, " · ".join(p for p in parts if p), explainer=method))
            for metric, values in results.metrics[method].items():
                row_metrics[f"{method}.{metric}"] = _per_image(metric, values[index])
        per_image.append(row_metrics)
        sections.append(
            f"<div class='row'><b>{H.esc(name)}</b> <small>{H.esc(', '.join(shown))}</small><br>"
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
            "logits": "pooled features" if results.logits_are_features else "classes",
            "num_outputs": results.num_outputs,
            "class_names": results.class_names,
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


def _per_image(metric: str, value: Tensor | float) -> float | int | None:
    """A per-image value for JSON / CSV: counts as int, NaN as None (JSON has no NaN)."""
    number = float(value)
    if number != number:
        return None
    return round(number) if metric in COUNTS else number


def _fmt(metric: str, value: Tensor | float) -> str:
    """A per-image value for the page: counts as integers, other metrics with 3 decimals."""
    number = float(value)
    return H.fmt_count(number) if metric in COUNTS else H.fmt(number)


def _head_note(results: ExplainResults, backbone_name: str) -> str:
    """What the model's outputs are: classes (named or not) or, without a head, features."""
    if results.logits_are_features:
        return (
            f"<p class='note'><b>No classification head:</b> {H.esc(backbone_name)} has no "
            f"head, so its &quot;logits&quot; are its {results.num_outputs} pooled features. "
            "&quot;Largest feature&quot; is the index of the largest feature, and explainers "
            "without a target explain that feature, not a class. For class evidence, load the "
            "model with a classifier head (load_backbone(spec, num_classes=K) with trained "
            "weights) or pass a callable target (e.g. the similarity to a class prototype).</p>"
        )
    if results.class_names is None:
        return (
            f"<p class='note'>The {results.num_outputs} classes of this head have no known "
            "names, so they are shown by index; pass class_names (e.g. the dataset's "
            "class_names) to explain_images to name them.</p>"
        )
    return f"<p>{results.num_outputs} classes, shown by name with their index.</p>"


def _legend(results: ExplainResults) -> str:
    """The meaning of each metric that was computed (and only those)."""
    computed = {metric for values in results.metrics.values() for metric in values}
    entries = [(k, v) for k, v in METRICS.items() if k in computed]
    entries += [(k, v) for k, v in MODEL_METRICS.items() if k in results.model_metrics]
    if not entries:
        return ""
    return "<p>" + "; ".join(f"<i>{k}</i>: {H.esc(v)}" for k, v in entries) + "</p>"


def _summary_table(summary: list[list[Any]]) -> str:
    """Explainers as rows, metrics as columns, cells ``mean ± ci`` (counts without decimals
    where whole)."""
    metrics = [m for m in METRICS if any(row[1] == m for row in summary)]
    cells: dict[str, dict[str, str]] = {}
    for name, metric, mean, ci, n in summary:
        if not n:
            cells.setdefault(name, {})[metric] = "–"
        elif metric in COUNTS:
            cells.setdefault(name, {})[metric] = f"{H.fmt_count(mean)} ± {H.fmt_count(ci)}"
        else:
            cells.setdefault(name, {})[metric] = f"{H.fmt(mean)} ± {H.fmt(ci)}"
    return H.table(
        ["explainer", *metrics],
        ([name, *(row.get(m, "–") for m in metrics)] for name, row in cells.items()),
    )


def _safe(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return keep.strip("._") or "image"


def unique_stems(names: list[str]) -> list[str]:
    """One file-name stem per image name, unique within the report (also on case-insensitive
    file systems): a name that had to be changed (``a b``, ``a:b`` -> ``a_b``) gets a short hash
    of the original, so images never overwrite each other's figures; a stem still taken gets
    ``_2``, ``_3``, ..."""
    import hashlib

    stems, taken = [], set()
    for name in names:
        stem = _safe(name)
        if stem != name:
            stem = f"{stem}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"
        candidate, count = stem, 1
        while candidate.lower() in taken:
            count += 1
            candidate = f"{stem}_{count}"
        taken.add(candidate.lower())
        stems.append(candidate)
    return stems
