"""Evaluation metrics for explanations and position prompts.

- **Deletion / insertion** (Petsiuk, Das, Saenko, "RISE", BMVC 2018): remove (or add) the most
  relevant patches first and follow the target-class probability; the area under the curve is
  low for a good explanation under deletion and high under insertion.
- **Attention focus** (FORT, Wang, Jie, Deng, NeurIPS 2023): the number of patches needed to
  cover 95% of the CLS attention (:func:`coverage_count`), and the share of the attention on a
  patch set (:func:`attention_mass`).
- **Localisation against a ground-truth mask** (the synthetic scenes, docs/concepts/data.md):
  :func:`prompt_precision` (share of prompt patches inside the object) and the pointing game
  (Zhang, Lin, Brandt, Shen, Sclaroff, "Top-down neural attention by excitation backprop",
  ECCV 2016).

Per-image functions take batches and return ``(B,)`` tensors. Patch grids are row-major, as the
patch tokens. Every shape problem raises ``ValueError`` saying which shape was expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusvit.backbones import BackboneAdapter, UnsupportedMethodError
from focusvit.checks import is_whole_number
from focusvit.errors import ConfigError
from focusvit.prompting.prompts import (
    PositionPrompt,
    as_flat_scores,
    check_fraction,
    coverage_counts,
    patch_area_fraction,
    rank_patches,
    upsample_mask,
)

from .base import Explanation

Model = BackboneAdapter | nn.Module | Callable[[Tensor], Tensor]
Baseline = Literal["mean", "blur", "zeros"] | Tensor

__all__ = [
    "CausalCurve",
    "attention_mass",
    "causal_curve",
    "cls_attention",
    "coverage_count",
    "deletion",
    "insertion",
    "pointing_game",
    "prompt_precision",
]


# ----------------------------------------------------------------------------- shape helpers
def _grid_scores(scores: Explanation | Tensor, name: str = "scores") -> Tensor:
    """Explanation or ``(B, h, w)`` / ``(h, w)`` tensor -> ``(B, h, w)`` float."""
    if isinstance(scores, Explanation):
        scores = scores.scores
    if not isinstance(scores, Tensor):
        raise ConfigError(f"{name} must be a tensor or an Explanation, got {type(scores).__name__}")
    if scores.ndim == 2:
        scores = scores[None]
    if scores.ndim != 3:
        raise ConfigError(
            f"{name} must be patch-grid maps of shape (B, h, w), got {tuple(scores.shape)}; "
            "reshape flat (B, N) scores with .view(B, h, w)"
        )
    return scores.detach().float()


def _pixel_mask(mask: Tensor, batch: int, name: str = "gt_mask") -> Tensor:
    """``(B, H, W)`` or ``(H, W)`` -> ``(B, H, W)`` bool with the expected batch size."""
    if not isinstance(mask, Tensor):
        raise ConfigError(f"{name} must be a bool tensor (B, H, W), got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or mask.shape[0] != batch:
        raise ConfigError(
            f"{name} must have shape (B, H, W) = ({batch}, H, W) at pixel resolution, got "
            f"{tuple(mask.shape)}; drop a channel dimension with mask[:, 0]"
        )
    return mask.bool()


def _check_grid_fits(grid: tuple[int, int], size: tuple[int, int], name: str) -> None:
    if grid[0] > size[0] or grid[1] > size[1]:
        raise ConfigError(
            f"{name} grid {grid} is finer than the pixel mask {size}; pass the ground-truth mask "
            "at image resolution (B, H, W)"
        )


def _non_negative(attention: Tensor, name: str) -> Tensor:
    flat = as_flat_scores(attention, name).detach().double()
    if (flat < 0).any():
        raise ConfigError(
            f"{name} has negative entries; pass attention probabilities (softmax, e.g. "
            "cls_attention(...)), not logits"
        )
    return flat


# ----------------------------------------------------------------------------- deletion / insertion
@dataclass(frozen=True)
class CausalCurve:
    """Result of a deletion or insertion run (Petsiuk et al., BMVC 2018).

    Attributes:
        auc: ``(B,)`` area under the curve (trapezoid rule over the fraction in [0, 1]).
        curve: ``(B, steps + 1)`` target-class softmax probability after each step; column 0 is
            the untouched image (deletion) or the pure baseline (insertion).
        fractions: ``(steps + 1,)`` fraction of the patches removed / inserted at each column.
        targets: ``(B,)`` class indices followed.
        mode: ``"deletion"`` or ``"insertion"``.
    """

    auc: Tensor
    curve: Tensor
    fractions: Tensor
    targets: Tensor
    mode: str


@contextmanager
def _inference(model: Model) -> Iterator[Callable[[Tensor], Tensor]]:
    """No-grad, eval-mode forward of an adapter, a module or a plain callable."""
    if isinstance(model, BackboneAdapter):
        with torch.no_grad(), model.evaluating():
            yield model.logits
    elif isinstance(model, nn.Module):
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            with torch.no_grad():
                yield model
        finally:
            for module, mode in modes.items():
                module.train(mode)
    elif callable(model):
        with torch.no_grad():
            yield model
    else:
        raise ConfigError(
            f"model must be a BackboneAdapter, an nn.Module or a callable images -> logits, got "
            f"{type(model).__name__}"
        )


def _gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` with replicate padding."""
    radius = max(1, math.ceil(2 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def make_baseline(images: Tensor, baseline: Baseline = "mean", blur_sigma: float = 5.0) -> Tensor:
    """The replacement image ``(B, C, H, W)`` for removed patches.

    Args:
        images: ``(B, C, H, W)`` batch (as fed to the model).
        baseline: ``"mean"`` (per-image mean colour), ``"blur"`` (Gaussian blur, RISE's
            insertion start), ``"zeros"``, or a tensor broadcastable to the batch.
        blur_sigma: Gaussian sigma in pixels for ``"blur"`` (RISE: 5 at 224 px).
    """
    if isinstance(baseline, Tensor):
        try:
            return baseline.to(images).expand_as(images)
        except RuntimeError as error:
            raise ConfigError(
                f"baseline tensor {tuple(baseline.shape)} does not broadcast to the images "
                f"{tuple(images.shape)}; pass (3, H, W) or (B, 3, H, W)"
            ) from error
    if baseline == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if baseline == "blur":
        return _gaussian_blur(images, blur_sigma)
    if baseline == "zeros":
        return torch.zeros_like(images)
    raise ConfigError(f"baseline must be 'mean', 'blur', 'zeros' or a tensor, got {baseline!r}")


def _given_targets(
    target: int | Tensor | None, scores: Explanation | Tensor, batch: int
) -> Tensor | None:
    """Class per image ``(B,)`` from ``target`` or the explanation; None: use the prediction."""
    explained = scores.targets if isinstance(scores, Explanation) else None
    if target is None and explained is not None and bool((explained >= 0).all()):
        target = explained
    if target is None:
        return None
    classes = torch.as_tensor(target).long().reshape(-1)
    if classes.numel() == 1:
        classes = classes.expand(batch)
    if classes.shape != (batch,):
        raise ConfigError(
            f"target must be an int or a ({batch},) tensor of classes, got shape "
            f"{tuple(classes.shape)}"
        )
    if (classes < 0).any():
        raise ConfigError(f"target classes must be >= 0, got {classes.tolist()}")
    return classes


def causal_curve(
    model: Model,
    images: Tensor,
    scores: Explanation | Tensor,
    mode: Literal["deletion", "insertion"] = "deletion",
    target: int | Tensor | None = None,
    steps: int | None = None,
    baseline: Baseline = "mean",
    blur_sigma: float = 5.0,
) -> CausalCurve:
    """Deletion or insertion curve and AUC (Petsiuk, Das, Saenko, RISE, BMVC 2018).

    Patches are ranked by descending score (ties: lower index first). Deletion replaces the top
    ``round(k · N / steps)`` patches of the image by the baseline at step k; insertion starts
    from the baseline and puts the top patches of the image back. The patch regions are the
    cells of the score grid ``(h, w)`` on the image (``H / h × W / w`` pixels each; nearest
    upsampling when not a multiple), so any model works, Swin's coarse grids included.
    One forward per step for the whole batch, under ``torch.no_grad`` and eval mode.

    Args:
        model: a :class:`~focusvit.backbones.BackboneAdapter`, an ``nn.Module`` or any callable
            ``images (B, 3, H, W) -> logits (B, C)``.
        images: ``(B, 3, H, W)`` batch the scores were computed on.
        scores: :class:`Explanation` or ``(B, h, w)`` patch scores.
        mode: ``"deletion"`` or ``"insertion"``.
        target: class per image (int or ``(B,)``); default the explanation's targets, else the
            class the model predicts on the untouched images.
        steps: number of steps; default one patch per step (``N``).
        baseline: what removed patches become: ``"mean"`` (per-image mean colour, default),
            ``"blur"``, ``"zeros"`` or a tensor.
        blur_sigma: Gaussian sigma in pixels for ``baseline="blur"``.

    Returns:
        :class:`CausalCurve` with ``auc (B,)`` and ``curve (B, steps + 1)``.
    """
    if mode not in ("deletion", "insertion"):
        raise ConfigError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ConfigError(f"images must have shape (B, 3, H, W), got {shape}")
    grid_scores = _grid_scores(scores).to(images.device)
    batch, h, w = grid_scores.shape
    if batch != images.shape[0]:
        raise ConfigError(
            f"scores have {batch} maps for {images.shape[0]} images; pass the explanation of "
            "this batch"
        )
    num_patches = h * w
    if steps is not None and not is_whole_number(steps, 1):
        raise ConfigError(
            f"steps must be a whole number >= 1 (or None: one patch per step), got {steps!r}; "
            f"pass e.g. steps={num_patches}"
        )
    steps = num_patches if steps is None else int(steps)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    rank = torch.argsort(rank_patches(grid_scores), dim=1)  # rank[b, patch] = position
    base = make_baseline(images, baseline, blur_sigma)
    start, end = (images, base) if mode == "deletion" else (base, images)
    counts = [round(k * num_patches / steps) for k in range(steps + 1)]
    classes = _given_targets(target, scores, batch)
    probs = []
    with _inference(model) as forward:
        for count in counts:
            moved = upsample_mask((rank < count).view(batch, h, w), size)[:, None]
            logits = forward(torch.where(moved, end, start)).float()
            if classes is None:  # the class predicted on the untouched images
                untouched = logits if mode == "deletion" else forward(images).float()
                classes = untouched.argmax(dim=1)
            classes = classes.to(logits.device)
            if int(classes.max()) >= logits.shape[1]:
                raise ConfigError(
                    f"target classes {classes.tolist()} out of range for {logits.shape[1]} logits"
                )
            probs.append(logits.softmax(dim=1).gather(1, classes[:, None])[:, 0])
    curve = torch.stack(probs, dim=1)
    fractions = torch.arange(steps + 1, dtype=curve.dtype, device=curve.device) / steps
    auc = torch.trapezoid(curve, x=fractions, dim=1)
    return CausalCurve(auc=auc, curve=curve, fractions=fractions, targets=classes, mode=mode)


def deletion(
    model: Model, images: Tensor, scores: Explanation | Tensor, **kwargs: Any
) -> CausalCurve:
    """Deletion curve and AUC (lower = better explanation); see :func:`causal_curve`."""
    return causal_curve(model, images, scores, mode="deletion", **kwargs)


def insertion(
    model: Model, images: Tensor, scores: Explanation | Tensor, **kwargs: Any
) -> CausalCurve:
    """Insertion curve and AUC (higher = better explanation); see :func:`causal_curve`."""
    return causal_curve(model, images, scores, mode="insertion", **kwargs)


# ----------------------------------------------------------------------------- attention focus
def cls_attention(backbone: BackboneAdapter, images: Tensor, layer: int = -1) -> Tensor:
    """CLS -> patch attention ``(B, N)`` of one block, mean over heads, renormalised over patches.

    For models without a CLS token (SigLIP, global-pool ViTs) the "CLS row" is the mean of the
    patch query rows.

    Prefix tokens (CLS, registers, distillation) and tokens a tuner inserted (VPT prompts) are
    dropped from the keys, so N is always the patch count of the input size. Runs under
    ``torch.no_grad`` and ``backbone.evaluating()``.

    Args:
        backbone: a columnar ViT adapter (``family == "vit"``).
        images: ``(B, 3, H, W)`` batch.
        layer: block index (negative allowed), default the last block.
    """
    if getattr(backbone, "family", None) != "vit":
        raise UnsupportedMethodError(
            f"cls_attention needs a columnar ViT, got {backbone.name} "
            f"({backbone.family}); for Swin use the per-window scores of "
            "focusvit.prompting.swin_window_prompts"
        )
    if images.ndim != 4:
        raise ConfigError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    with (
        torch.no_grad(),
        backbone.evaluating(),
        backbone.capture_attention(layers=layer, kind="probs") as record,
    ):
        backbone.logits(images)
        probs = record[0]
    start = backbone.num_tokens_before_patches
    if backbone.has_cls_token:
        cls_row = probs[:, :, 0, start:].float().mean(dim=1)
    else:  # no CLS token (SigLIP, GAP ViTs): the "CLS row" is the mean of the patch query rows
        cls_row = probs[:, :, start:, start:].float().mean(dim=(1, 2))
    return cls_row / cls_row.sum(dim=1, keepdim=True).clamp_min(1e-12)


def coverage_count(attention: Tensor, fraction: float = 0.95) -> Tensor:
    """Number of patches needed to cover ``fraction`` of the attention, ``(B,)`` long.

    FORT's attention-focus measure (Wang et al., NeurIPS 2023): sort descending, cumulative mass
    / total, first index reaching ``fraction``, plus one. Uniform attention over N patches gives
    ``ceil(fraction · N)``.

    Args:
        attention: ``(B, N)`` or ``(B, h, w)`` non-negative attention (e.g. :func:`cls_attention`).
        fraction: mass to cover, in (0, 1].
    """
    flat = _non_negative(attention, "attention")
    if bool((flat.sum(dim=1) <= 0).any()):
        raise ConfigError("attention sums to 0 for some image; pass attention probabilities")
    return coverage_counts(flat, check_fraction(fraction))


def attention_mass(attention: Tensor, mask: Tensor | PositionPrompt) -> Tensor:
    """Share of each image's attention mass on a patch set, ``(B,)`` in [0, 1].

    Args:
        attention: ``(B, N)`` or ``(B, h, w)`` non-negative attention.
        mask: same shape bool (or a :class:`PositionPrompt`), the patch set.

    Returns:
        ``Σ_{i∈set} a_i / Σ_i a_i``; 0 for an image whose attention sums to 0.
    """
    flat = _non_negative(attention, "attention")
    chosen = as_flat_scores(mask.mask if isinstance(mask, PositionPrompt) else mask, "mask")
    if chosen.shape != flat.shape:
        raise ConfigError(
            f"mask {tuple(chosen.shape)} must cover the same patches as attention "
            f"{tuple(flat.shape)} (both (B, N) or both (B, h, w))"
        )
    inside = (flat * chosen.to(flat.device).bool()).sum(dim=1)
    total = flat.sum(dim=1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), 0.0).float()


# ----------------------------------------------------------------------------- localisation
def prompt_precision(
    prompt_mask: Tensor | PositionPrompt, gt_mask: Tensor, min_overlap: float = 0.5
) -> Tensor:
    """Share of prompt patches inside the ground-truth object, ``(B,)`` in [0, 1].

    A patch counts as inside when at least ``min_overlap`` of its pixels are in the mask (its
    coverage is the area pooling of ``gt_mask`` onto the grid); ``min_overlap=0`` means any
    overlap. An image with an empty prompt gets NaN (omitted by :func:`focusvit.runs.mean_and_ci`).

    Args:
        prompt_mask: ``(B, h, w)`` bool chosen patches, or a :class:`PositionPrompt`.
        gt_mask: ``(B, H, W)`` bool object mask at pixel resolution.
        min_overlap: share of a patch's pixels that must lie inside, in [0, 1].
    """
    if isinstance(prompt_mask, PositionPrompt):
        prompt_mask = prompt_mask.mask
    chosen = _grid_scores(prompt_mask, "prompt_mask") > 0.5
    batch, h, w = chosen.shape
    gt = _pixel_mask(gt_mask, batch)
    _check_grid_fits((h, w), tuple(gt.shape[-2:]), "prompt_mask")
    if not 0.0 <= min_overlap <= 1.0:
        raise ConfigError(f"min_overlap must lie in [0, 1], got {min_overlap}")
    coverage = patch_area_fraction(gt, (h, w)).to(chosen.device)
    inside = (coverage >= min_overlap - 1e-6) & (coverage > 0)
    hits = (chosen & inside).flatten(1).sum(dim=1).float()
    size = chosen.flatten(1).sum(dim=1).float()
    return torch.where(size > 0, hits / size.clamp_min(1.0), float("nan"))


def _patch_boxes(index: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Pixel box ``(B, 4)`` = (y0, y1, x0, x1), end exclusive, of flat patch indices ``(B,)``."""
    (h, w), (height, width) = grid, size
    rows, cols = index // w, index % w
    y0 = torch.div(rows * height, h, rounding_mode="floor")
    y1 = torch.div((rows + 1) * height, h, rounding_mode="floor")
    x0 = torch.div(cols * width, w, rounding_mode="floor")
    x1 = torch.div((cols + 1) * width, w, rounding_mode="floor")
    return torch.stack([y0, y1, x0, x1], dim=1)


def pointing_game(
    scores: Explanation | Tensor,
    gt_mask: Tensor,
    tolerance: float = 0.0,
    point: Literal["area", "center"] = "area",
) -> Tensor:
    """Pointing game (Zhang et al., ECCV 2016) on patch scores, ``(B,)`` of 1.0 hit / 0.0 miss.

    The pointed location is the top-scoring patch (ties: lowest row-major index). With
    ``point="area"`` (default) it is that patch's pixel area: a hit when some mask pixel lies
    within ``tolerance`` pixels (Euclidean) of the area, i.e. the area overlaps the mask for
    ``tolerance=0``. With ``point="center"`` it is the patch's centre pixel (row
    ``(y0 + y1 - 1) // 2`` of the patch's pixel rows ``y0..y1-1``, likewise for columns, so
    pixel 3 of an 8 px patch): a hit when a mask
    pixel lies within ``tolerance`` of it (the classic game uses the maximum point and a 15 px
    tolerance). Images with an empty mask get NaN (omitted by :func:`focusvit.runs.mean_and_ci`).

    Args:
        scores: :class:`Explanation` or ``(B, h, w)`` patch scores.
        gt_mask: ``(B, H, W)`` bool object mask at pixel resolution.
        tolerance: distance in pixels, >= 0.
        point: ``"area"`` or ``"center"``.
    """
    grid_scores = _grid_scores(scores)
    batch, h, w = grid_scores.shape
    gt = _pixel_mask(gt_mask, batch).to(grid_scores.device)
    height, width = int(gt.shape[-2]), int(gt.shape[-1])
    _check_grid_fits((h, w), (height, width), "scores")
    if tolerance < 0:
        raise ConfigError(f"tolerance is a distance in pixels and must be >= 0, got {tolerance}")
    if point not in ("area", "center"):
        raise ConfigError(f"point must be 'area' or 'center', got {point!r}")
    boxes = _patch_boxes(grid_scores.flatten(1).argmax(dim=1), (h, w), (height, width))
    if point == "center":
        cy = (boxes[:, 0] + boxes[:, 1] - 1) // 2
        cx = (boxes[:, 2] + boxes[:, 3] - 1) // 2
        boxes = torch.stack([cy, cy + 1, cx, cx + 1], dim=1)
    ys = torch.arange(height, device=gt.device)[None, :, None]
    xs = torch.arange(width, device=gt.device)[None, None, :]
    y0, y1, x0, x1 = (boxes[:, i, None, None] for i in range(4))
    dy = (y0 - ys).clamp_min(0) + (ys - (y1 - 1)).clamp_min(0)
    dx = (x0 - xs).clamp_min(0) + (xs - (x1 - 1)).clamp_min(0)
    near = (dy.double() ** 2 + dx.double() ** 2) <= tolerance**2 + 1e-9
    hit = (near & gt).flatten(1).any(dim=1).float()
    return torch.where(gt.flatten(1).any(dim=1), hit, float("nan"))


# ----------------------------------------------------------------------------- summary
