"""The registry of backbone families (docs: docs/families.md).

Each family file (``timm_vit.py``, ``hf_clip.py``, ...) declares its adapter and registers it
with :func:`register_family`; :func:`adapt` wraps a built model in the adapter of the first
family (highest priority first) whose predicate accepts it. A model no family accepts is refused
with the supported list: it is never accepted and then left failing inside an explainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from focusvit.errors import ConfigError, UnsupportedFamilyError

from .base import IMAGENET_MEAN_STD, BackboneAdapter, default_data_config


@dataclass(frozen=True)
class FamilyEntry:
    """One registered model family.

    Attributes:
        name: what users read in errors and the families table (``"HF CLIP vision"``).
        matches: predicate on a built (peft-unwrapped) model.
        adapter: the adapter class.
        examples: hub specs of this family users load (``"hf:openai/clip-vit-base-patch16"``).
        tiny: names of the tiny random-weight test models of this family (``tiny:NAME``).
        cls_row: what the "CLS row" of rollout, raw attention and the loss is:
            ``"cls token"``, ``"mean of patch query rows"`` or ``"-"`` (no token rows: Swin's
            per-window prompts, CNNs).
        priority: higher is tried first (specific families before generic predicates).
    """

    name: str
    matches: Callable[[nn.Module], bool]
    adapter: type[BackboneAdapter]
    examples: tuple[str, ...] = ()
    tiny: tuple[str, ...] = ()
    cls_row: str = "cls token"
    priority: int = 0


FAMILIES: list[FamilyEntry] = []


def register_family(entry: FamilyEntry) -> FamilyEntry:
    """Add a family (a family file calls this once, at import). Entries are kept sorted by
    ``priority``, highest first; among equal priorities the earlier registration wins.

    Raises:
        ValueError: a family of that name is registered already.
    """
    if any(existing.name == entry.name for existing in FAMILIES):
        raise ConfigError(
            f"a backbone family named {entry.name!r} is registered already; pick another name"
        )
    FAMILIES.append(entry)
    FAMILIES.sort(key=lambda e: -e.priority)
    return entry


def register_adapter(
    name: str, matches: Callable[[nn.Module], bool], adapter: type[BackboneAdapter]
) -> None:
    """Add a family of your own; it is tried before the built-in ones."""
    top = max((e.priority for e in FAMILIES), default=0)
    register_family(FamilyEntry(name, matches, adapter, priority=top + 1))


def supported_families() -> list[str]:
    """Names of the registered families, in the order :func:`adapt` tries them."""
    return [entry.name for entry in FAMILIES]


def family_of(model: nn.Module) -> FamilyEntry | None:
    """The registered family that accepts ``model`` (peft wrappers stripped), or ``None``."""
    model = _unwrap(model)
    return next((e for e in FAMILIES if e.matches(model)), None)


def _unwrap(model: nn.Module) -> nn.Module:
    """Strip peft wrappers (``PeftModel``) to the model whose modules peft edited in place."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def adapt(
    model: nn.Module | BackboneAdapter, name: str = "", data_config: dict | None = None
) -> BackboneAdapter:
    """Wrap a built model in the adapter of its family.

    Raises:
        UnsupportedFamilyError: naming the supported families.
    """
    if isinstance(model, BackboneAdapter):
        return model
    model = _unwrap(model)
    entry = family_of(model)
    if entry is not None:
        config = data_config or _data_config_of(model, entry)
        return entry.adapter(model, name=name or type(model).__name__, data_config=config)
    raise UnsupportedFamilyError(
        f"no focusvit adapter for {type(model).__name__}; supported families: "
        f"{', '.join(supported_families())}. Register one with "
        "focusvit.backbones.register_adapter(name, predicate, AdapterClass) (see "
        "docs/families.md)"
    )


def _data_config_of(model: nn.Module, entry: FamilyEntry | None = None) -> dict:
    """Preprocessing from the model's own config (timm pretrained_cfg or HF config); the
    normalisation defaults of ``entry`` (looked up when not given) where the config has none."""
    if type(model).__module__.startswith("timm."):
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        cfg = {k: cfg[k] for k in ("input_size", "mean", "std", "crop_pct", "interpolation")}
        img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if img_size is not None:  # the size the model was built for wins over the weights' tag
            cfg["input_size"] = (3, int(img_size[0]), int(img_size[1]))
        return cfg
    config = getattr(model, "config", None)
    config = getattr(config, "vision_config", None) or config  # CLIP / SigLIP: the vision tower
    size = getattr(config, "image_size", None)
    if (
        size is None
        and getattr(config, "num_patches", None)
        and getattr(config, "patch_size", None)
    ):
        # SigLIP2 (NaFlex) configs give the patch count of the native grid, not a size
        size = math.isqrt(int(config.num_patches)) * int(config.patch_size)
    size = 224 if size is None else size if isinstance(size, int) else int(size[0])
    entry = entry or family_of(model)
    mean, std = entry.adapter.default_mean_std if entry is not None else IMAGENET_MEAN_STD
    return default_data_config(size, mean=mean, std=std)
