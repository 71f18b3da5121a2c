"""Shared base of the explainers: the :class:`Explanation` result, the method registry and the
``explain`` entry point (one call shape for every method, in the spirit of captum's
``attribute(inputs, target=...)``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from focusvit.backbones import BackboneAdapter, UnsupportedMethodError
from focusvit.errors import ConfigError, NonFiniteError

Target = int | Tensor | Callable[[Tensor], Tensor] | None


@dataclass(frozen=True)
class Explanation:
    """Patch scores of one method on a batch of images.

    Attributes:
        scores: ``(B, h, w)`` patch-grid scores (higher = more evidence), float, finite.
        method: registered name of the explainer.
        params: the explainer's hyper-parameters.
        image_size: ``(H, W)`` of the input batch.
        targets: ``(B,)`` class indices explained (``-1`` when the target was a callable).
    """

    scores: Tensor
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    image_size: tuple[int, int] = (0, 0)
    targets: Tensor | None = None

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.scores.shape[-2]), int(self.scores.shape[-1])

    def maps(self, mode: str = "bilinear") -> Tensor:
        """Pixel-resolution maps ``(B, H, W)``, each normalised to [0, 1]."""
        up = F.interpolate(self.scores[:, None].float(), size=self.image_size, mode=mode)
        return normalise_per_image(up[:, 0])

    def flat(self) -> Tensor:
        """Scores as ``(B, h*w)`` in row-major patch order (the order of patch tokens)."""
        return self.scores.flatten(1)

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def normalise_per_image(maps: Tensor) -> Tensor:
    """Min-max normalise each ``(B, ...)`` map to [0, 1]; constant maps become 0."""
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    out = (flat - low) / (high - low).clamp_min(1e-12)
    return out.view_as(maps)


class Explainer:
    """Base of one explanation method. Subclasses set ``name``, ``families`` and implement
    :meth:`scores`. Instances hold the method's hyper-parameters."""

    name: ClassVar[str] = ""
    families: ClassVar[tuple[str, ...]] = ("vit", "swin", "cnn")
    needs_target: ClassVar[bool] = False

    def __init__(self, **params: Any):
        self.params = params

    def check(self, backbone: BackboneAdapter) -> None:
        if backbone.family not in self.families:
            usable = [n for n, cls in EXPLAINERS.items() if backbone.family in cls.families]
            raise UnsupportedMethodError(
                f"explainer {self.name!r} does not apply to {backbone.family} models like "
                f"{backbone.name}; use one of: {', '.join(usable)}"
            )

    def scores(
        self, backbone: BackboneAdapter, images: Tensor, target: Target
    ) -> tuple[Tensor, Tensor]:
        """Return ``(scores (B, h, w), targets (B,))``."""
        raise NotImplementedError

    def resolved_params(self, backbone: BackboneAdapter) -> dict:
        """The params recorded in the explanation, with choices that depend on the model
        resolved (e.g. ``query="auto"``); raises for a choice the model cannot take."""
        return dict(self.params)

    def __call__(
        self, backbone: BackboneAdapter, images: Tensor, target: Target = None
    ) -> Explanation:
        """Explain ``images`` ``(B, 3, H, W)``: an :class:`Explanation` with finite scores
        ``(B, h, w)``.

        Raises:
            NonFiniteError: ``images`` hold NaN / Inf values, or the method produced non-finite
                scores (nothing is replaced by zeros).
        """
        self.check(backbone)
        params = self.resolved_params(backbone)
        check_finite_images(images)
        scores, targets = self.scores(backbone, images, target)
        scores = scores.detach().float()
        bad = _non_finite_items(scores)
        if bad:
            raise NonFiniteError(
                f"explainer {self.name!r} produced NaN or Inf scores for image(s) {bad} of "
                f"{backbone.name} although the input batch is finite: the model's forward or "
                "backward overflowed or produced NaN (e.g. under float16 / bfloat16 autocast, "
                "or NaN weights after a diverged fine-tuning); explain in float32 and check the "
                "model's weights and logits"
            )
        return Explanation(
            scores=scores,
            method=self.name,
            params=params,
            image_size=(int(images.shape[-2]), int(images.shape[-1])),
            targets=None if targets is None else targets.detach(),
        )


def _non_finite_items(batch: Tensor, limit: int = 8) -> list[int]:
    """Indices (at most ``limit``) of the items of a batch ``(B, ...)`` holding NaN or Inf."""
    finite = torch.isfinite(batch.reshape(batch.shape[0], -1)).all(dim=1)
    if bool(finite.all()):
        return []
    return (~finite).nonzero()[:limit, 0].tolist()


def check_finite_images(images: Tensor) -> None:
    """Raise :class:`NonFiniteError` when an image of the batch ``(B, 3, H, W)`` holds NaN/Inf."""
    if images.ndim == 0 or images.shape[0] == 0:
        return
    bad = _non_finite_items(images.detach())
    if bad:
        raise NonFiniteError(
            f"input batch contains NaN or Inf values (image(s) {bad} of {images.shape[0]}); "
            "check the preprocessing (e.g. a division by a zero std) and the image decoding, or "
            "build the batch with backbone.preprocess"
        )


EXPLAINERS: dict[str, type[Explainer]] = {}


def register_explainer(cls: type[Explainer]) -> type[Explainer]:
    """Class decorator adding an explainer to the registry under ``cls.name``."""
    EXPLAINERS[cls.name] = cls
    return cls


def resolve_targets(logits: Tensor, target: Target) -> tuple[Tensor, Tensor]:
    """The explained scores ``s (B,)`` and their class indices ``(B,)`` (-1 for callables).

    ``target`` may be None (predicted class), an int, a ``(B,)`` tensor of classes, or a
    callable mapping logits ``(B, C)`` to scores ``(B,)`` (e.g. similarity to a prototype).
    """
    batch, num_classes = logits.shape
    if callable(target) and not isinstance(target, Tensor):
        scores = target(logits)
        if not isinstance(scores, Tensor) or scores.shape != (batch,):
            raise ConfigError(
                f"a callable target must map logits {tuple(logits.shape)} to scores of shape "
                f"({batch},), got {tuple(getattr(scores, 'shape', ())) or type(scores).__name__}"
            )
        return scores, torch.full((batch,), -1, dtype=torch.long, device=logits.device)
    if target is None:
        classes = logits.argmax(dim=1)
    else:
        classes = _target_classes(target, batch).to(logits.device)
    if (classes < 0).any() or (classes >= num_classes).any():
        raise ConfigError(
            f"target classes {classes.tolist()} out of range for a head with {num_classes} "
            f"classes (valid: 0..{num_classes - 1}); load the backbone with num_classes or pass "
            "a callable target on the features"
        )
    return logits.gather(1, classes[:, None])[:, 0], classes


def _target_classes(target: Any, batch: int) -> Tensor:
    """``target`` (an int, or a tensor / sequence of ints with 1 or ``batch`` entries) as
    ``(batch,)`` long class indices; strings, floats and bools are refused."""
    fix = (
        "pass target=None (the predicted class), a class index such as target=0, a (B,) tensor "
        "of class indices, or a callable on the logits"
    )
    if isinstance(target, bool | str | bytes):
        raise ConfigError(f"target must be a class index, got {target!r}; {fix}")
    if isinstance(target, int):
        return torch.full((batch,), target, dtype=torch.long)
    try:
        values = torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"target must be a class index, got {target!r}; {fix}") from None
    if values.dtype == torch.bool or values.is_floating_point() or values.is_complex():
        raise ConfigError(
            f"target must hold whole class indices, got {values.dtype} {target!r}; {fix}"
        )
    classes = values.long().reshape(-1)
    if classes.numel() == 1:
        classes = classes.expand(batch)
    if classes.shape != (batch,):
        raise ConfigError(
            f"target has {classes.numel()} entries for a batch of {batch} images; pass one class "
            "index, or one per image"
        )
    return classes
