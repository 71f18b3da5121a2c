"""Per-family, per-tuner fine-tuning recipes of FORT (DESIGN.md section 6)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """Optimiser and prompt hyper-parameters for one (family, tuner) pair.

    Attributes:
        optimizer: ``"adamw"`` or ``"sgd"``.
        lr, weight_decay, momentum: optimiser settings.
        steps: optimiser steps per task (batch = the whole support set).
        top_p: prompt size (ViT: patches of 196 at 224/16 -> scaled to the grid; Swin: per window).
        tau, alpha: attention-loss temperature and weight (alpha 0 = no attention loss).
    """

    optimizer: str = "adamw"
    lr: float = 5e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    steps: int = 10
    top_p: int | float = 14
    tau: float = 1.0
    alpha: float = 0.0

    def override(self, **changes: Any) -> Recipe:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


#: ViT prompts are 14 of 196 patches (~7%); expressed as a fraction so other grids scale.
VIT_TOP_P = 14 / 196

RECIPES: dict[tuple[str, str], Recipe] = {
    ("vit", "full"): Recipe("adamw", 1e-5, 0.01, steps=5, top_p=VIT_TOP_P, tau=1.0, alpha=0.03),
    ("vit", "ssf"): Recipe("adamw", 5e-3, steps=10, top_p=VIT_TOP_P, tau=1.0, alpha=0.1),
    ("vit", "lora"): Recipe("adamw", 5e-3, steps=10, top_p=VIT_TOP_P, tau=1.0, alpha=0.5),
    ("swin", "full"): Recipe("adamw", 5e-5, steps=5, top_p=7, tau=10.0, alpha=0.3),
    ("swin", "ssf"): Recipe("adamw", 5e-3, steps=10, top_p=7, tau=20.0, alpha=0.5),
    ("swin", "lora"): Recipe("adamw", 5e-3, steps=10, top_p=7, tau=10.0, alpha=0.3),
    ("vit", "vpt"): Recipe("sgd", 1e-2, momentum=0.9, steps=10),
    ("vit", "linear"): Recipe("sgd", 1e-2, momentum=0.9, steps=20),
    ("swin", "linear"): Recipe("sgd", 1e-2, momentum=0.9, steps=20),
    ("cnn", "linear"): Recipe("sgd", 1e-2, momentum=0.9, steps=20),
    ("cnn", "full"): Recipe("adamw", 1e-5, 0.01, steps=5),
}


def recipe_for(family: str, tuner: str) -> Recipe:
    """The DESIGN.md recipe for ``family`` and ``tuner``, or a clear error listing what exists."""
    try:
        return RECIPES[(family, tuner)]
    except KeyError:
        known = sorted(t for f, t in RECIPES if f == family)
        raise ValueError(
            f"no recipe for tuner {tuner!r} on {family} models; tuners with recipes: {', '.join(known)}"
        ) from None
