"""Where the attention-enhancement loss cannot act, refused once, with one error type
(:class:`AttentionLossUnsupportedError`), and the recipe that fills a :class:`FortConfig`.

FORT's loss (Wang, Jie, Deng, NeurIPS 2023; ``docs/concepts/loss.md``) changes the attention
of a transformer through the parameters a tuner trains, so it is refused on a frozen-feature
solver, on the linear probe (only the head trains), on a family without a registered
:class:`~focusvit.finetune.attention_loss.objectives.Objective` and where the recipe has no
weight α and none was given. The API (:func:`~focusvit.finetune.evaluate`,
:func:`~focusvit.finetune.fit_task`, the batched path) and the CLI all call these functions.
"""

from __future__ import annotations

from dataclasses import replace

from focusvit.backbones import BackboneAdapter
from focusvit.errors import ConfigError, UnsupportedMethodError

from .config import FortConfig
from .objectives import OBJECTIVES, Objective

_DROP = "drop fort (or '+fort', or fort=off on the command line)"


class AttentionLossUnsupportedError(UnsupportedMethodError, ConfigError):
    """The attention-enhancement loss cannot act with this method or model (a solver, the
    linear probe, a model without attention, a recipe without α). Raised before any model
    work; both an :class:`~focusvit.errors.UnsupportedMethodError` and a
    :class:`~focusvit.errors.ConfigError` (a setting that cannot work), so code that catches
    either sees it."""


def refuse_fort(
    tuner: str | None = None,
    solver: str | None = None,
    fort: object = True,
    family: str | None = None,
    name: str | None = None,
) -> None:
    """Refuse the attention loss where it cannot act (nothing to do when ``fort`` is falsy).

    Args:
        tuner: the tuner's name (refused when its :class:`~focusvit.finetune.tuners.TunerSpec`
            has ``supports_attention_loss`` False: the linear probe), or ``None``.
        solver: a frozen-feature solver's name (always refused), or ``None``.
        fort: whether the loss is asked for (a :class:`FortConfig`, ``True`` or a falsy value).
        family: the backbone family (``None``: not known yet); refused without an objective.
        name: the backbone's name, for the message.

    Raises:
        AttentionLossUnsupportedError: naming the fix.
    """
    if fort is None or fort is False:
        return
    if solver is not None:
        raise AttentionLossUnsupportedError(
            f"the attention-enhancement loss needs fine-tuning; solver {solver!r} fits frozen "
            f"features: {_DROP}, or choose a tuner: full, lora, ssf"
        )
    if tuner is not None:
        from focusvit.finetune.tuners import tuner_spec, tuner_specs

        if not tuner_spec(tuner).supports_attention_loss:
            able = [s.name for s in tuner_specs() if s.supports_attention_loss]
            raise AttentionLossUnsupportedError(
                f"tuner {tuner!r} cannot take the attention loss (the linear probe trains only "
                f"the head on frozen features, which the loss cannot change): {_DROP}, or choose "
                f"tuner {', '.join(able[:-1])} or {able[-1]}"
            )
    if family is not None and family not in OBJECTIVES:
        what = name or "this backbone"
        raise AttentionLossUnsupportedError(
            f"the attention-enhancement loss needs a transformer with attention; {what} is a "
            f"{family}: {_DROP}, or load a {' or '.join(_FAMILY_NAMES.get(f, f) for f in OBJECTIVES)}"
        )


_FAMILY_NAMES = {"vit": "ViT", "swin": "Swin"}


def objective_for(backbone: BackboneAdapter) -> Objective:
    """The registered :class:`Objective` of ``backbone.family``.

    Raises:
        AttentionLossUnsupportedError: a family without one (a CNN).
    """
    refuse_fort(family=backbone.family, name=backbone.name)
    return OBJECTIVES[backbone.family]


def check_fort_value(fort: object) -> None:
    """Refuse a ``fort`` argument that is not a :class:`FortConfig`, ``True``, ``False`` or
    ``None`` (a string such as ``"yes"``, a dict, a number), with the fix.

    Raises:
        ConfigError: naming the accepted values.
    """
    if fort is None or isinstance(fort, (bool, FortConfig)):
        return
    raise ConfigError(
        f"fort must be a FortConfig, True (the recipe), False or None (no attention loss), got "
        f"{type(fort).__name__} {fort!r:.60}; e.g. fort=FortConfig(alpha=0.5) or fort=True"
    )


def resolve_fort(
    backbone: BackboneAdapter, tuner: str, fort: FortConfig | bool | None
) -> FortConfig | None:
    """The attention-loss settings to train with, every ``None`` field filled from the recipe
    of ``backbone.family`` and ``tuner`` (:func:`~focusvit.finetune.recipe_for`);
    ``None``/``False`` -> no loss, ``True`` -> ``FortConfig()`` (the recipe).

    Raises:
        AttentionLossUnsupportedError: the loss cannot act here (linear probe: frozen features;
            a model without attention), or the recipe has no α and none was given.
        ConfigError: ``fort`` not a FortConfig / bool / None (:func:`check_fort_value`);
            explicit ``layers`` outside the backbone's blocks (columnar ViTs).
    """
    from focusvit.finetune.recipes import recipe_for

    check_fort_value(fort)
    if fort is None or fort is False:
        return None
    fort = FortConfig() if fort is True else fort
    refuse_fort(tuner=tuner, family=backbone.family, name=backbone.name)
    recipe = recipe_for(backbone.family, tuner)
    alpha = fort.alpha if fort.alpha is not None else recipe.alpha
    if alpha is None or (fort.alpha is None and recipe.alpha <= 0):
        raise AttentionLossUnsupportedError(
            f"the {backbone.family} {tuner} recipe has no attention-loss weight (the authors' "
            "code trains it without the loss); pass FortConfig(alpha=..., tau=...) explicitly "
            "(fort.alpha=... on the command line), or drop fort"
        )
    size = (
        {}
        if fort.top_k is not None or fort.top_fraction is not None
        else {"top_k": recipe.top_k, "top_fraction": recipe.top_fraction}
    )
    OBJECTIVES[backbone.family].check(backbone, fort)
    return replace(fort, alpha=alpha, tau=fort.tau if fort.tau is not None else recipe.tau, **size)


def prompt_settings(backbone: BackboneAdapter, fort: FortConfig | bool | None = None) -> FortConfig:
    """The settings to draw position prompts with on ``backbone``, whatever the tuner (e.g. to
    show prompts for plain fine-tuning or the linear probe): ``fort`` (``None`` / ``True``:
    ``FortConfig()``) with, when it sets no prompt size, the one every recipe of
    ``backbone.family`` uses (ViT: ``top_fraction``; Swin: ``top_k`` per window); checked
    against the backbone's blocks. α and τ are left unset (prompts do not use them).

    Raises:
        AttentionLossUnsupportedError: a family without an objective (a CNN).
        ConfigError: ``fort`` not a FortConfig / bool / None, explicit ``layers`` outside the
            blocks, or recipes of the family that disagree on the prompt size.
    """
    from focusvit.finetune.recipes import RECIPES

    check_fort_value(fort)
    objective = objective_for(backbone)
    config = fort if isinstance(fort, FortConfig) else FortConfig()
    if config.top_k is None and config.top_fraction is None:
        sizes = {
            (recipe.top_k, recipe.top_fraction)
            for (family, _), recipe in RECIPES.items()
            if family == backbone.family
            and (recipe.top_k is not None or recipe.top_fraction is not None)
        }
        if len(sizes) != 1:
            raise ConfigError(
                f"the {backbone.family} recipes give {len(sizes)} prompt sizes; pass one "
                "explicitly: FortConfig(top_k=...) or FortConfig(top_fraction=...)"
            )
        ((top_k, top_fraction),) = sizes
        config = replace(config, top_k=top_k, top_fraction=top_fraction)
    objective.check(backbone, config)
    return config


def check_fits(
    backbone: BackboneAdapter,
    fort: FortConfig | None,
    image_size: tuple[int, int],
    option: str = "fort.",
    where: str | None = None,
) -> None:
    """Refuse, before training, settings of ``fort`` the loaded ``backbone`` cannot honour at
    ``image_size`` pixels: a ``top_k`` larger than the patch grid (columnar ViT) or than the
    smallest attention window (Swin), explicit ``layers`` the model does not have.

    Raises:
        AttentionLossUnsupportedError: a family without an objective.
        ConfigError: naming the option (``option`` + name) and the fix.
    """
    if fort is None:
        return
    objective_for(backbone).check(backbone, fort, tuple(image_size), option, where)  # type: ignore[arg-type]
