"""Per-family, per-tuner fine-tuning recipes of FORT (docs/recipes.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from focusvit.checks import is_finite_number, is_number
from focusvit.errors import ArgumentError, ConfigError

#: ViT prompts are 14 of 196 patches (~7%), as a fraction so other grids scale: the one value
#: shared with FortConfig and the CLI (focusvit.prompting.prompts.VIT_TOP_FRACTION)
from focusvit.prompting.prompts import VIT_TOP_FRACTION


@dataclass(frozen=True)
class Recipe:
    """Optimiser and prompt hyper-parameters for one (family, tuner) pair.

    Attributes:
        optimizer: ``"adamw"`` or ``"sgd"``.
        lr, weight_decay, momentum, dampening: optimiser settings (AdamW keeps PyTorch's
            default weight decay 0.01, as the official code).
        steps: epochs over the support set per task; an epoch is one step at 1-shot and K
            steps at K-shot (mini-batches of n_way images, reshuffled every epoch).
        head_scale: the head is stored ×head_scale and its logits divided by it (official
            for LoRA, SSF and VPT: 20, an effectively 20× smaller head step under Adam);
            initial predictions are unchanged.
        top_k: prompt size as a patch count (Swin: tokens per window, official 7 of 49).
        top_fraction: prompt size as a fraction of the patches (ViT: 14/196, scaled to the grid).
        tau, alpha: attention-loss temperature and weight (alpha 0 = no attention loss).
    """

    optimizer: str = "adamw"
    lr: float = 5e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    dampening: float = 0.0
    head_scale: float = 1.0
    steps: int = 10
    top_k: int | None = None
    top_fraction: float | None = None
    tau: float = 1.0
    alpha: float = 0.0

    def override(self, **changes: Any) -> Recipe:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


RECIPES: dict[tuple[str, str], Recipe] = {
    ("vit", "full"): Recipe(
        "adamw", 1e-5, 0.01, steps=5, top_fraction=VIT_TOP_FRACTION, tau=1.0, alpha=0.03
    ),
    ("vit", "ssf"): Recipe(
        "adamw",
        5e-3,
        0.01,
        steps=10,
        top_fraction=VIT_TOP_FRACTION,
        tau=1.0,
        alpha=0.1,
        head_scale=20.0,
    ),
    ("vit", "lora"): Recipe(
        "adamw",
        5e-3,
        0.01,
        steps=10,
        top_fraction=VIT_TOP_FRACTION,
        tau=1.0,
        alpha=0.5,
        head_scale=20.0,
    ),
    ("swin", "full"): Recipe("adamw", 5e-5, 0.01, steps=5, top_k=7, tau=10.0, alpha=0.3),
    ("swin", "ssf"): Recipe(
        "adamw", 5e-3, 0.01, steps=10, top_k=7, tau=20.0, alpha=0.5, head_scale=20.0
    ),
    ("swin", "lora"): Recipe(
        "adamw", 5e-3, 0.01, steps=10, top_k=7, tau=10.0, alpha=0.3, head_scale=20.0
    ),
    # VPT: no attention loss in the official code (alpha 0: FortConfig(alpha=...) only when
    # asked explicitly, which is not from the paper)
    ("vit", "vpt"): Recipe(
        "sgd", 1e-2, 1e-3, momentum=0.9, dampening=0.9, steps=10, head_scale=20.0
    ),
    ("vit", "linear"): Recipe("sgd", 1e-2, momentum=0.9, steps=20),
    ("swin", "linear"): Recipe("sgd", 1e-2, momentum=0.9, steps=20),
    ("cnn", "linear"): Recipe("sgd", 1e-2, momentum=0.9, steps=20),
    ("cnn", "full"): Recipe("adamw", 1e-5, 0.01, steps=5),
}


@dataclass
class FitOptions:
    """Overrides of the recipe of docs/recipes.md (``None`` keeps the recipe's value) and the head init.

    The one definition of these settings and their defaults: :func:`focusvit.evaluate`,
    :func:`~focusvit.finetune.fit_task` and the CLI's ``trainer`` group all use it.

    Attributes:
        lr, steps, optimizer, weight_decay, momentum: optimiser settings (``None`` = recipe).
        head_init: how the task head is initialised from the support features: ``svm``
            (FORT's margin-1 Crammer-Singer SVM, the default), ``ridge`` (a fast close
            substitute), ``prototype`` or ``logistic`` (fits the support set: little gradient),
            or ``text``: the zero-shot head of a CLIP / SigLIP model with its text tower, built
            from the episode's class names (:func:`~focusvit.finetune.heads.text_head`; not
            from the paper).
    """

    lr: float | None = None
    steps: int | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    head_init: str = "svm"

    def __post_init__(self) -> None:
        if self.lr is not None and not (is_finite_number(self.lr) and self.lr > 0):
            raise ConfigError(
                f"lr must be > 0 and finite, got {self.lr!r} (0 does not train, inf and nan "
                "diverge); e.g. lr=5e-3, or None for the recipe"
            )
        if self.steps is not None and (
            not is_finite_number(self.steps) or self.steps % 1 or self.steps < 0
        ):
            raise ConfigError(f"steps must be a whole number >= 0, got {self.steps!r}")
        if self.steps is not None:
            self.steps = int(self.steps)
        if self.optimizer not in (None, "adamw", "sgd"):
            raise ConfigError(
                f"optimizer must be 'adamw' or 'sgd' (or None), got {self.optimizer!r}"
            )
        if self.weight_decay is not None and not (
            is_finite_number(self.weight_decay) and self.weight_decay >= 0
        ):
            raise ConfigError(
                f"weight_decay must be >= 0 and finite, got {self.weight_decay!r}; e.g. 0.01"
            )
        if self.momentum is not None and not (is_number(self.momentum) and 0 <= self.momentum < 1):
            raise ConfigError(f"momentum must lie in [0, 1), got {self.momentum!r}; e.g. 0.9")
        if self.head_init not in HEAD_INITS:
            raise ConfigError(
                f"head_init must be one of {', '.join(HEAD_INITS)}, got {self.head_init!r}"
            )

    def recipe_overrides(self) -> dict[str, Any]:
        """The optimiser overrides that are set (for :meth:`Recipe.override`)."""
        keys = ("lr", "steps", "optimizer", "weight_decay", "momentum")
        return {key: getattr(self, key) for key in keys if getattr(self, key) is not None}


def fit_options(
    options: FitOptions | None, overrides: dict[str, Any], caller: str = "fit_task"
) -> FitOptions:
    """``options`` (a :class:`FitOptions` or None) with keyword overrides (``lr=``, ``steps=``,
    ``head_init=`` ...) merged in; refuses another ``options`` type and unknown keywords, naming
    the option names (the one builder of :func:`~focusvit.finetune.fit_task` and
    :func:`focusvit.evaluate`)."""
    names = ", ".join(FitOptions.__dataclass_fields__)
    if options is not None and not isinstance(options, FitOptions):
        raise ArgumentError(
            f"{caller}() options must be a FitOptions, got {type(options).__name__}; use "
            f"options=FitOptions(lr=1e-3, steps=5) or keywords (lr=1e-3); options are {names}"
        )
    unknown = sorted(set(overrides) - set(FitOptions.__dataclass_fields__))
    if unknown:
        raise ArgumentError(
            f"{caller}() got unknown keyword(s) {', '.join(unknown)}; fine-tuning options are "
            f"{names}"
        )
    base = asdict(options) if options is not None else {}
    return FitOptions(**{**base, **overrides})


#: head initialisations: those of :func:`~focusvit.finetune.heads.init_head` and ``text``
#: (:func:`~focusvit.finetune.heads.text_head`, from class names)
HEAD_INITS = ("svm", "prototype", "ridge", "logistic", "text")


def recipe_for(family: str, tuner: str) -> Recipe:
    """The recipe (docs/recipes.md) for ``family`` and ``tuner``, or a clear error listing what exists."""
    try:
        return RECIPES[(family, tuner)]
    except KeyError:
        known = sorted(t for f, t in RECIPES if f == family)
        raise ConfigError(
            f"no recipe for tuner {tuner!r} on {family} models; tuners with recipes: {', '.join(known)}"
        ) from None
