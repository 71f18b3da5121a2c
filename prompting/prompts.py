"""Position prompts from patch scores (docs/concepts/prompts.md).

FORT ("Focus Your Attention when Few-Shot Classification", Wang, Jie, Deng, NeurIPS 2023) marks
the class-related entity of each support image by the patches with the highest explainer scores:

- the **top-P** patches (official: P = 14 of 196 for /16 at 224, about 7%), or
- the **smallest set covering a mass fraction** (e.g. 0.95) of the scores.

The **target** ``t (B, N)`` over the N patch tokens, which the attention-enhancement loss pulls
the attention towards, is multi-hot (1 on the chosen patches) or importance-weighted (the scores
of the chosen patches rescaled to sum to P; the official choice).

Conventions shared by every function here:

- patch order is row-major over the ``(h, w)`` grid, the order of the patch tokens;
- ranking is a stable descending sort, so ties go to the lower patch index (deterministic);
- for mass coverage the scores are made non-negative by clamping at 0 and normalised per image;
  an image whose scores are all <= 0 is treated as uniform;
- scores holding NaN or +Inf raise :class:`~focusvit.errors.NonFiniteError` (they
  are never silently replaced); -Inf is a valid "no evidence" score.

Everything is a pure tensor function: no model, no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from focusvit.checks import is_finite_number, is_number
from focusvit.errors import ConfigError, NonFiniteError

if TYPE_CHECKING:
    from focusvit.explainers.base import Explanation

Weighting = Literal["importance", "multi_hot"]

#: Slack on cumulative mass comparisons (computed in float64), so that e.g. 19 of 20 uniform
#: patches count as covering 0.95 despite rounding.
MASS_TOLERANCE = 1e-9


@dataclass(frozen=True)
class PositionPrompt:
    """Position prompts of a batch of images.

    Attributes:
        mask: ``(B, h, w)`` bool, the chosen patches.
        target: ``(B, N)`` float with ``N = h * w`` in row-major order; zero outside the chosen
            patches, summing to the number of chosen patches per image.
        indices: per image, a 1-D long tensor of the chosen patch indices (row-major), sorted by
            descending score. All the same length for top-P; varying for mass coverage.
        grid: patch grid ``(h, w)``.
        image_size: ``(H, W)`` of the images the scores came from (``(0, 0)`` if unknown).
        method: name of the explainer whose scores made the prompt.
        weighting: ``"importance"`` or ``"multi_hot"``.
    """

    mask: Tensor
    target: Tensor
    indices: tuple[Tensor, ...]
    grid: tuple[int, int]
    image_size: tuple[int, int] = (0, 0)
    method: str = ""
    weighting: str = "importance"

    @property
    def counts(self) -> Tensor:
        """Number of chosen patches per image, ``(B,)`` long."""
        return self.mask.flatten(1).sum(dim=1)

    def pixel_mask(self, size: tuple[int, int] | None = None) -> Tensor:
        """The mask at pixel resolution ``(B, H, W)`` bool (nearest upsampling)."""
        size = size or self.image_size
        if not size or min(size) <= 0:
            raise ConfigError(
                "this prompt has no image_size; pass size=(H, W) to pixel_mask(size=...)"
            )
        return upsample_mask(self.mask, size)

    def __len__(self) -> int:
        return int(self.mask.shape[0])


# ----------------------------------------------------------------------------- shape helpers
def as_batch_scores(scores: Tensor, name: str = "scores") -> Tensor:
    """``(h, w)`` or ``(B, h, w)`` -> ``(B, h, w)`` (a single map behaves as B=1)."""
    if not isinstance(scores, Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.ndim == 2:
        return scores[None]
    if scores.ndim != 3:
        raise ConfigError(
            f"{name} must have shape (B, h, w) or (h, w) on the patch grid, got "
            f"{tuple(scores.shape)}; reshape flat (B, N) scores with .view(B, h, w)"
        )
    return scores


def as_flat_scores(scores: Tensor, name: str = "scores") -> Tensor:
    """``(N,)``, ``(B, N)`` or ``(B, h, w)`` -> ``(B, N)`` in row-major patch order."""
    if not isinstance(scores, Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.ndim == 1:
        return scores[None]
    if scores.ndim == 2:
        return scores
    if scores.ndim == 3:
        return scores.flatten(1)
    raise ConfigError(
        f"{name} must have shape (B, N) or (B, h, w), got {tuple(scores.shape)}; "
        "drop extra dimensions (e.g. average over heads) first"
    )


#: FORT's official prompt size: 14 of the 196 patches of ViT-B/16 at 224 px
DEFAULT_TOP_K = 14

#: the same prompt size as a fraction of the patches (14/196), so that other grids scale; the
#: one value the recipes, :class:`~focusvit.FortConfig` and the CLI hints share
VIT_TOP_FRACTION = DEFAULT_TOP_K / 196


def _whole_number(value: object) -> bool:
    """True for a whole number (``3`` or ``3.0``, not ``True``)."""
    return is_finite_number(value) and int(value) == value


def check_prompt_size(
    top_k: int | None,
    top_fraction: float | None,
    *,
    option: str = "",
    capacity: int | None = None,
    where: str | None = None,
    fix: str | None = None,
) -> None:
    """The one check of a prompt size (Wang, Jie, Deng, NeurIPS 2023: the top-P patches of
    each support image; see ``docs/concepts/loss.md``), shared by :func:`prompt_count`,
    :class:`~focusvit.FortConfig`, the CLI's ``prompting`` group and its ``fort`` group.

    Args:
        top_k: a count P (a whole number >= 1), or ``None``.
        top_fraction: a fraction of the patches in ``(0, 1]``, or ``None``; at most one of the
            two may be given (neither: the caller's default).
        option: prefix of the option names in messages (``"fort."``, ``"prompting."``).
        capacity: the patches (or window tokens) there are to choose from; a larger ``top_k``
            is refused. ``None``: not known here.
        where: what holds ``capacity``, e.g. ``"the 196 patches of vit_base at 224x224"``.
        fix: the advice appended after ``use top_k<=capacity`` (default: the official count and
            the fraction ``top_fraction=0.0714`` that fits any grid).

    Raises:
        ConfigError: both given, a count that is not a whole number >= 1 (or exceeds
            ``capacity``), or a fraction outside ``(0, 1]``; the message names the fix.
    """
    if top_k is not None and top_fraction is not None:
        raise ConfigError(
            f"give either {option}top_k (a patch count) or {option}top_fraction (a fraction of "
            f"the patches), not both (got top_k={top_k}, top_fraction={top_fraction})"
        )
    if top_fraction is not None and not (
        is_number(top_fraction) and 0.0 < float(top_fraction) <= 1.0
    ):
        raise ConfigError(
            f"{option}top_fraction must be a fraction of the patches in (0, 1], got "
            f"{top_fraction!r}; e.g. {option}top_fraction={VIT_TOP_FRACTION:.4f} (official FORT: "
            f"{DEFAULT_TOP_K} of 196), or {option}top_k for a patch count"
        )
    if top_k is None:
        return
    if not _whole_number(top_k) or top_k < 1:
        raise ConfigError(
            f"{option}top_k must be a whole number of patches >= 1, got {top_k!r}; e.g. "
            f"{option}top_k={DEFAULT_TOP_K} (official FORT: {DEFAULT_TOP_K} of 196)"
        )
    if capacity is not None and top_k > capacity:
        where = where or f"the {capacity} patches of the grid"
        fix = fix or (
            f"(official FORT: {DEFAULT_TOP_K} of 196), or "
            f"{option}top_fraction={VIT_TOP_FRACTION:.4f}"
        )
        raise ConfigError(
            f"{option}top_k={top_k} is more than {where}; use {option}top_k<={capacity} {fix}"
        )


def prompt_count(
    num_patches: int, top_k: int | None = None, top_fraction: float | None = None
) -> int:
    """Number of patches to choose: a count ``top_k``, or ``round(top_fraction · N)`` (at least
    1); neither given: :data:`DEFAULT_TOP_K` (capped at N).

    Raises:
        ConfigError: (a ``ValueError``) both given, a count outside ``1..N``, or a fraction
            outside ``(0, 1]`` (:func:`check_prompt_size`).
    """
    check_prompt_size(top_k, top_fraction, capacity=num_patches)
    if top_fraction is not None:
        return max(1, round(float(top_fraction) * num_patches))
    if top_k is None:
        return min(DEFAULT_TOP_K, num_patches)
    return int(top_k)


def check_finite_scores(scores: Tensor, name: str = "scores") -> None:
    """Raise :class:`NonFiniteError` when ``scores`` ``(B, N)`` hold NaN or +Inf.

    -Inf is allowed (it ranks last and clamps to zero mass).
    """
    bad = torch.isnan(scores) | torch.isposinf(scores)
    if bool(bad.any()):
        images = bad.reshape(bad.shape[0], -1).any(dim=1).nonzero()[:8, 0].tolist()
        raise NonFiniteError(
            f"{name} contain NaN or +Inf values (image(s) {images}); position prompts need "
            "finite scores: check the explainer's input images (NaN after preprocessing) and "
            "run the explainer in float32"
        )


# ----------------------------------------------------------------------------- selection
def rank_patches(scores: Tensor) -> Tensor:
    """Patch indices ``(B, N)`` by descending score; ties go to the lower index (stable)."""
    return torch.sort(as_flat_scores(scores), dim=1, descending=True, stable=True).indices


def top_k_mask(scores: Tensor, count: int) -> Tensor:
    """The top-P patches of each image as a ``(B, N)`` bool mask.

    Args:
        scores: ``(B, N)`` or ``(B, h, w)`` patch scores.
        count: number of patches P (see :func:`prompt_count`).
    """
    flat = as_flat_scores(scores)
    if not 1 <= count <= flat.shape[1]:
        raise ConfigError(f"count must lie in 1..{flat.shape[1]}, got {count}")
    order = rank_patches(flat)[:, :count]
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)


def mass_distribution(scores: Tensor) -> Tensor:
    """Non-negative normalised masses ``(B, N)`` float64 from scores ``(B, N)``.

    Negative scores are clamped to 0; an image with no positive score gets a uniform mass.

    Raises:
        NonFiniteError: the scores hold NaN or +Inf.
    """
    flat = as_flat_scores(scores).double()
    check_finite_scores(flat)
    flat = flat.clamp_min(0.0)
    total = flat.sum(dim=1, keepdim=True)
    uniform = torch.full_like(flat, 1.0 / flat.shape[1])
    return torch.where(total > 0, flat / total.clamp_min(1e-300), uniform)


def check_fraction(fraction: float, name: str = "fraction") -> float:
    if not is_number(fraction):
        raise ConfigError(f"{name} must be a float in (0, 1], got {fraction!r}")
    if not 0.0 < float(fraction) <= 1.0:
        raise ConfigError(f"{name} must lie in (0, 1] (e.g. 0.95), got {fraction}")
    return float(fraction)


def coverage_counts(scores: Tensor, fraction: float = 0.95) -> Tensor:
    """Size of the smallest patch set holding ``fraction`` of each image's mass, ``(B,)`` long.

    Sort descending, cumulative mass / total, first index reaching ``fraction``, plus one. Scores
    are made non-negative and normalised as in :func:`mass_distribution`.
    """
    fraction = check_fraction(fraction)
    mass = mass_distribution(scores)
    ordered = torch.sort(mass, dim=1, descending=True, stable=True).values
    reached = ordered.cumsum(dim=1) >= fraction - MASS_TOLERANCE
    first = reached.double().argmax(dim=1)  # first True (the last entry always reaches)
    return (first + 1).clamp_max(mass.shape[1]).long()


def coverage_mask(scores: Tensor, fraction: float = 0.95) -> Tensor:
    """The smallest set of highest-scoring patches covering ``fraction`` of the mass, ``(B, N)``.

    Among sets of that size, ties go to the lower patch index (same ranking as top-P).
    """
    flat = as_flat_scores(scores)
    counts = coverage_counts(flat, fraction)
    order = rank_patches(flat)
    rank = torch.arange(flat.shape[1], device=flat.device)[None]
    keep = rank < counts[:, None].to(flat.device)
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, keep)


# ----------------------------------------------------------------------------- targets
def multi_hot_targets(mask: Tensor) -> Tensor:
    """Multi-hot targets ``(B, N)`` float from a ``(B, N)`` or ``(B, h, w)`` bool mask."""
    return as_flat_scores(mask).float()


def importance_targets(scores: Tensor, mask: Tensor) -> Tensor:
    """Importance-weighted targets ``(B, N)`` (FORT's official choice).

    Inside the chosen set the scores are rescaled to sum to the set size P, zero outside:
    ``t_i = P · s_i / Σ_{j∈set} s_j``. Scores are clamped at 0 first; an image whose chosen
    scores sum to 0 falls back to multi-hot.

    Args:
        scores: ``(B, N)`` or ``(B, h, w)`` patch scores.
        mask: the chosen patches, same shape as ``scores``, bool.
    """
    flat = as_flat_scores(scores).float()
    chosen = as_flat_scores(mask, "mask").bool()
    if chosen.shape != flat.shape:
        raise ConfigError(
            f"mask {tuple(chosen.shape)} and scores {tuple(flat.shape)} must describe the same "
            "patches; build the mask from these scores"
        )
    inside = torch.where(chosen, flat.clamp_min(0.0), torch.zeros_like(flat))
    size = chosen.sum(dim=1, keepdim=True).float()
    total = inside.sum(dim=1, keepdim=True)
    weighted = inside * size / total.clamp_min(1e-30)
    return torch.where(total > 0, weighted, chosen.float())


# ----------------------------------------------------------------------------- prompts
def make_prompts(
    explanation: Explanation | Tensor,
    top_k: int | None = None,
    top_fraction: float | None = None,
    coverage: float | None = None,
    weighting: Weighting = "importance",
    image_size: tuple[int, int] | None = None,
    method: str | None = None,
) -> PositionPrompt:
    """Position prompts from an explanation's patch scores (FORT, Wang et al., NeurIPS 2023).

    Args:
        explanation: an :class:`~focusvit.explainers.Explanation` (scores ``(B, h, w)``), or a
            scores tensor ``(B, h, w)`` / ``(h, w)`` (a single map behaves as B=1).
        top_k: the number P of patches to choose (official 14; the default when neither size
            is given).
        top_fraction: instead, a fraction of the N patches (``round(fraction · N)``, at least 1).
        coverage: instead, the smallest set covering this fraction of the (clamped
            non-negative, normalised) score mass; refused together with a size.
        weighting: ``"importance"`` (scores in the set rescaled to sum to its size) or
            ``"multi_hot"``.
        image_size: ``(H, W)`` for a raw tensor (taken from the explanation otherwise).
        method: source method name for a raw tensor.

    Returns:
        :class:`PositionPrompt` with ``mask (B, h, w)`` and ``target (B, h*w)``.
    """
    if isinstance(explanation, Tensor):
        scores = as_batch_scores(explanation)
        size = tuple(image_size) if image_size else (0, 0)
        name = method or ""
    elif hasattr(explanation, "scores"):
        scores = as_batch_scores(explanation.scores)
        size = tuple(image_size or explanation.image_size)
        name = method or explanation.method
    else:
        raise ConfigError(
            "make_prompts expects an Explanation or a (B, h, w) scores tensor, got "
            f"{type(explanation).__name__}"
        )
    if weighting not in ("importance", "multi_hot"):
        raise ConfigError(f"weighting must be 'importance' or 'multi_hot', got {weighting!r}")
    scores = scores.detach()
    batch, h, w = scores.shape
    flat = scores.reshape(batch, h * w)
    check_finite_scores(flat)
    if coverage is not None and (top_k is not None or top_fraction is not None):
        raise ConfigError(
            "give a prompt size (top_k or top_fraction) or coverage, not both; coverage "
            "chooses the size itself"
        )
    if coverage is not None:
        chosen = coverage_mask(flat, coverage)
    else:
        chosen = top_k_mask(flat, prompt_count(flat.shape[1], top_k, top_fraction))
    target = importance_targets(flat, chosen) if weighting == "importance" else chosen.float()
    order = rank_patches(flat)
    counts = chosen.sum(dim=1).tolist()
    indices = tuple(order[i, : counts[i]].clone() for i in range(batch))
    return PositionPrompt(
        mask=chosen.view(batch, h, w),
        target=target,
        indices=indices,
        grid=(h, w),
        image_size=(int(size[0]), int(size[1])),
        method=name,
        weighting=weighting,
    )


# ----------------------------------------------------------------------------- upsampling
def _check_size(size: tuple[int, int] | int) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or min(size) <= 0:
        raise ConfigError(f"size must be (H, W) with positive entries, got {size!r}")
    return int(size[0]), int(size[1])


def upsample_scores(scores: Tensor, size: tuple[int, int] | int) -> Tensor:
    """Patch scores ``(B, h, w)`` or ``(h, w)`` -> pixel maps ``(B, H, W)`` (bilinear)."""
    batch = as_batch_scores(scores)
    up = F.interpolate(
        batch[:, None].float(), size=_check_size(size), mode="bilinear", align_corners=False
    )
    return up[:, 0]


def upsample_mask(mask: Tensor, size: tuple[int, int] | int) -> Tensor:
    """Patch mask ``(B, h, w)`` or ``(h, w)`` -> pixel mask ``(B, H, W)`` bool (nearest).

    With ``H = k·h`` every patch becomes an exact ``k × k`` pixel block.
    """
    batch = as_batch_scores(mask, "mask")
    up = F.interpolate(batch[:, None].float(), size=_check_size(size), mode="nearest")
    return up[:, 0] > 0.5


def patch_area_fraction(pixel_mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """Share of each patch's pixels inside a pixel mask: ``(B, H, W)`` -> ``(B, h, w)`` in [0, 1].

    Area pooling; exact block averages when H, W are multiples of h, w (adaptive pooling
    otherwise).
    """
    batch = as_batch_scores(pixel_mask, "pixel_mask").float()[:, None]
    h, w = grid
    height, width = batch.shape[-2:]
    if height % h == 0 and width % w == 0:
        pooled = F.avg_pool2d(batch, kernel_size=(height // h, width // w))
    else:
        pooled = F.adaptive_avg_pool2d(batch, (h, w))
    return pooled[:, 0]
