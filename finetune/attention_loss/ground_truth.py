"""Ground-truth position prompts: the top-P patches by object-mask coverage
(``FortConfig(prompts="ground_truth")``).

A diagnostic of FORT (Wang, Jie, Deng, NeurIPS 2023; ``docs/concepts/loss.md``): the loss is
given the prompts an ideal explainer would give, so a study can tell the loss from the quality
of the explainer's prompts. The support images' object masks are average-pooled to the patch
grid (the coverage of each patch); the P patches of highest coverage are the prompt, weighted
by coverage and rescaled to sum to P (the official importance weighting; ``multi_hot``: 1 on
each). Swin: per stage, the coverage on the stage's grid, partitioned into windows, top-P per
window (binary, as the explainer prompts of Swin).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from focusvit.backbones import BackboneAdapter, WindowGeometry
from focusvit.errors import ConfigError

_NEEDS_MASKS = (
    "prompts='ground_truth' takes the position prompts from the object masks of the support images"
)


def check_masks(masks: Any, images: Tensor) -> Tensor:
    """``masks`` as a float ``(M, H, W)`` tensor on the CPU, or a one-line error.

    Args:
        masks: ``(M, H, W)`` object masks (bool, or coverage in [0, 1]) aligned with the
            preprocessed support images ``images (M, 3, H, W)`` (same resize / crop:
            ``backbone.preprocess_masks(raw_masks)``), or ``None``.

    Raises:
        ConfigError: no masks, or masks of another count or size than the images.
    """
    if masks is None:
        raise ConfigError(
            f"{_NEEDS_MASKS}, and none were given: pass fit_task(..., support_masks="
            "backbone.preprocess_masks([dataset.mask(i) for i in support])), evaluate a dataset "
            "with masks (SyntheticScenes, ImageFolderDataset(mask_root=...)), or use "
            "prompts='explainer'"
        )
    masks = torch.as_tensor(masks)
    expected = (images.shape[0], *images.shape[-2:])
    if tuple(masks.shape) != tuple(expected):
        raise ConfigError(
            f"support_masks must be (M, H, W) = {tuple(expected)}, aligned with the "
            f"preprocessed support images {tuple(images.shape)}, got {tuple(masks.shape)}; "
            "preprocess them with backbone.preprocess_masks(raw_masks)"
        )
    return masks.detach().to("cpu", torch.float32)


def dataset_masks(
    backbone: BackboneAdapter,
    dataset: Any,
    indices: Sequence[int],
    preprocessed: bool | None = None,
) -> Tensor:
    """Object masks ``(M, H, W)`` bool of the dataset items ``indices``, aligned with the
    preprocessed images (:meth:`~focusvit.backbones.BackboneAdapter.preprocess_masks`; a
    dataset of preprocessed tensors, ``preprocessed=True``, holds masks at their size;
    ``None``: told from the first item).

    Raises:
        ConfigError: the dataset has no masks (no ``mask`` method, or a mask is ``None``).
    """
    reader = getattr(dataset, "mask", None)
    masks = [reader(int(i)) for i in indices] if reader is not None else [None]
    if any(m is None for m in masks):
        raise ConfigError(
            f"{_NEEDS_MASKS}, and {type(dataset).__name__} has none: use a dataset with masks "
            "(SyntheticScenes, ImageFolderDataset(mask_root=...)), or prompts='explainer'"
        )
    if preprocessed is None:
        preprocessed = isinstance(dataset.load(int(indices[0])), Tensor)
    if preprocessed:
        return torch.stack([torch.as_tensor(m) != 0 for m in masks])
    return backbone.preprocess_masks(masks)


def masks_for_prompts(
    fort: Any,
    backbone: BackboneAdapter,
    dataset: Any,
    indices: Sequence[int],
    preprocessed: bool | None = None,
) -> Tensor | None:
    """The support masks ``fit_task(..., support_masks=)`` needs: :func:`dataset_masks` of
    ``indices`` when ``fort`` takes its prompts from the masks (``prompts="ground_truth"``),
    ``None`` otherwise (no loss, or the explainer's prompts)."""
    if getattr(fort, "prompts", "explainer") != "ground_truth":
        return None
    return dataset_masks(backbone, dataset, indices, preprocessed)


def ground_truth_targets(
    masks: Tensor,
    grid: tuple[int, int],
    top_k: int | None = None,
    top_fraction: float | None = None,
    weighting: str = "importance",
) -> Tensor:
    """Columnar-ViT targets ``(M, h·w)`` from object masks ``(M, H, W)``.

    Each mask is average-pooled to the patch grid ``grid = (h, w)`` (the share of each patch the
    object covers); the P patches of highest coverage are chosen (P =
    :func:`~focusvit.prompting.prompt_count` of ``top_k`` / ``top_fraction``), and weighted by
    their coverage rescaled to sum to P (``"importance"``; ``"multi_hot"``: 1 each).

    Returns:
        ``(M, h·w)`` float32 targets on the CPU.
    """
    from focusvit.prompting.prompts import prompt_count

    count = grid[0] * grid[1]
    size = prompt_count(count, top_k, top_fraction)
    masks = masks.to("cpu", torch.float32)
    targets = torch.zeros(len(masks), count)
    for row, mask in enumerate(masks):
        cover = F.adaptive_avg_pool2d(mask[None, None], grid).flatten()
        top = cover.topk(size).indices
        if weighting == "multi_hot":
            targets[row, top] = 1.0
        else:
            weights = cover[top].clamp_min(1e-6)
            targets[row, top] = weights / weights.sum() * size
    return targets


def swin_ground_truth_targets(
    masks: Tensor,
    geometries: Sequence[WindowGeometry],
    order: str,
    top_k: int | None = None,
    top_fraction: float | None = None,
) -> list[Tensor]:
    """Swin targets, per stage ``(M, windows, n)`` binary top-P per window, from object masks
    ``(M, H, W)``: the coverage on each stage's token grid, partitioned into the windows of
    the stage's last block (``geometries``, one per stage; ``order`` the adapter's partition
    order), top-P of the real tokens of every window (:func:`~focusvit.prompting.window_top_k`).
    """
    from focusvit.prompting.swin import grid_to_windows, window_top_k, window_valid_mask

    masks = masks.to("cpu", torch.float32)[:, None]
    targets = []
    for geometry in geometries:
        cover = F.adaptive_avg_pool2d(masks, geometry.grid)[:, 0]  # (M, h, w)
        scores = grid_to_windows(cover, geometry, order)  # type: ignore[arg-type]
        valid = window_valid_mask(geometry, order)  # type: ignore[arg-type]
        targets.append(window_top_k(scores, top_k, top_fraction, valid))
    return targets
