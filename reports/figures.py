"""Overlay figures of explanations and position prompts (used by the reports; the public
:func:`focusvit.plot_explanation` and :func:`focusvit.save_overlay_grid`).

Figures are built as plain :class:`matplotlib.figure.Figure` objects (rendered with Agg when
saved), never through ``pyplot``: nothing is displayed, the global backend is untouched and no
figure stays registered in pyplot's figure manager, so calling these in a loop leaks nothing.
Returned figures display in notebooks as usual.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from focusvit.errors import ConfigError
from focusvit.prompting.prompts import (
    PositionPrompt,
    as_batch_scores,
    upsample_mask,
    upsample_scores,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from focusvit.explainers.base import Explanation


def image_to_array(image: Any) -> np.ndarray:
    """An image as a float ``(H, W, 3)`` array in [0, 1] for display.

    Accepts a PIL image, a tensor or array ``(3, H, W)`` / ``(H, W, 3)`` / ``(H, W)``. Values in
    [0, 1] are shown as they are, uint8 arrays are divided by 255, anything else (e.g. a
    normalised batch) is min-max rescaled.
    """
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    array = image.detach().cpu().float().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise ConfigError(
            f"image must be PIL, (3, H, W) or (H, W, 3), got shape {tuple(array.shape)}"
        )
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        array = (array - low) / max(high - low, 1e-12)
    return array


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _mask_of(prompt: PositionPrompt | Tensor | None, index: int | None) -> Tensor | None:
    if prompt is None:
        return None
    mask = prompt.mask if isinstance(prompt, PositionPrompt) else prompt
    return mask if index is None else as_batch_scores(mask, "prompt mask")[index]


def plot_explanation(
    image: Any,
    scores: Tensor,
    prompt_mask: Tensor | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Figure:
    """Draw an image, its patch-score heat map and the outlines of the prompt patches.

    Args:
        image: ``(3, H, W)`` tensor in [0, 1], an ``(H, W, 3)`` array, or a PIL image.
        scores: ``(h, w)`` patch scores; upsampled bilinearly to the image and min-max
            normalised per image before colouring.
        prompt_mask: optional ``(h, w)`` bool mask of chosen patches: their union is outlined
            and each chosen patch gets a marker at its centre.
        ax: axes to draw into; a new figure is made when None.
        title: axes title.
        alpha: opacity of the heat map.
        cmap: matplotlib colour map of the heat map.

    Returns:
        The figure that holds the axes.
    """
    picture = image_to_array(image)
    height, width = picture.shape[:2]
    scores = as_batch_scores(torch.as_tensor(scores).detach().cpu().float())
    if scores.shape[0] != 1:
        raise ConfigError(
            f"scores must be one (h, w) map, got {tuple(scores.shape)}; pass scores[i]"
        )
    if ax is None:
        ax = _new_figure(
            4.0 * width / max(height, width), 4.0 * height / max(height, width)
        ).add_subplot()
    heat = upsample_scores(scores, (height, width))[0]
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)
    ax.imshow(picture)
    ax.imshow(heat.numpy(), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    if prompt_mask is not None:
        _draw_prompt(ax, prompt_mask, scores.shape[-2:], (height, width))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax.figure


def _draw_prompt(ax: Axes, mask: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> None:
    mask = as_batch_scores(torch.as_tensor(mask).detach().cpu(), "prompt_mask").bool()
    if tuple(mask.shape[-2:]) != tuple(grid):
        raise ConfigError(
            f"prompt_mask grid {tuple(mask.shape[-2:])} differs from the scores grid "
            f"{tuple(grid)}; pass the mask made from these scores"
        )
    pixels = upsample_mask(mask, size)[0]
    (h, w), (height, width) = grid, size
    if int(pixels.sum()) > 0:  # zero border so outlines close at the image edge
        padded = np.pad(pixels.float().numpy(), 1)
        xs, ys = np.arange(-1, width + 1), np.arange(-1, height + 1)
        ax.contour(xs, ys, padded, levels=[0.5], colors="white", linewidths=1.2)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
    rows, cols = torch.nonzero(mask[0], as_tuple=True)
    ys = (rows.float() + 0.5) * height / h - 0.5
    xs = (cols.float() + 0.5) * width / w - 0.5
    ax.scatter(xs.numpy(), ys.numpy(), s=8, c="white", edgecolors="black", linewidths=0.5)


def save_overlay_grid(
    images: Tensor | Sequence[Any],
    explanations: Mapping[str, Explanation],
    prompts: Mapping[str, PositionPrompt | Tensor] | None,
    path: str | Path,
    cell_size: float = 2.5,
    dpi: int = 100,
    alpha: float = 0.5,
) -> Figure:
    """Save a grid figure: one row per image, columns = the image, then each method's overlay.

    Args:
        images: ``(B, 3, H, W)`` tensor in [0, 1] or a sequence of B images (PIL / tensors).
        explanations: method name -> :class:`~focusvit.explainers.Explanation` with B maps.
        prompts: optional method name -> :class:`PositionPrompt` or ``(B, h, w)`` bool mask;
            methods without an entry get no outline.
        path: output PNG path (parent folders are created).
        cell_size: size of one panel in inches.
        dpi: resolution of the PNG.
        alpha: opacity of the heat maps.

    Returns:
        The figure (not registered with pyplot; nothing to close).
    """
    if isinstance(images, Tensor) and images.ndim != 4:
        raise ConfigError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    batch = list(images)
    if not explanations:
        raise ConfigError("explanations is empty; pass {method_name: Explanation, ...}")
    for name, explanation in explanations.items():
        if len(explanation.scores) != len(batch):
            raise ConfigError(
                f"explanation {name!r} has {len(explanation.scores)} maps for {len(batch)} "
                "images; explain the same batch you plot"
            )
    prompts = prompts or {}
    rows, cols = len(batch), 1 + len(explanations)
    fig = _new_figure(cell_size * cols, cell_size * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for row, image in enumerate(batch):
        axes[row, 0].imshow(image_to_array(image))
        axes[row, 0].set_axis_off()
        if row == 0:
            axes[row, 0].set_title("image", fontsize=9)
        for col, (name, explanation) in enumerate(explanations.items(), start=1):
            plot_explanation(
                image,
                explanation.scores[row],
                _mask_of(prompts.get(name), row),
                ax=axes[row, col],
                title=name if row == 0 else None,
                alpha=alpha,
            )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return fig
