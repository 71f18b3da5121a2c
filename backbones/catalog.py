"""Model and label catalogues of the libraries behind the adapters (timm), so that code outside
``focusvit.backbones`` never imports timm or transformers itself.

- :func:`is_timm_model` / :func:`suggest_model_names`: validate a timm architecture name and
  suggest close ones in an error message;
- :func:`imagenet_class_names`: the 1000 ImageNet-1k class descriptions in class-index order
  (what timm's ImageNet classifiers predict);
- :func:`head_class_names`: the class names of an adapter's head, indexed like its logits (the
  model's own labels, or ImageNet names for ImageNet-sized heads), for reports.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

__all__ = ["head_class_names", "imagenet_class_names", "is_timm_model", "suggest_model_names"]


def is_timm_model(name: str) -> bool:
    """True when ``name`` is a timm architecture (``timm.create_model`` accepts it); a pretrained
    tag (``vit_small_patch16_224.dino``) is allowed."""
    import timm

    return bool(timm.is_model(name))


def suggest_model_names(pattern: str, limit: int = 8) -> list[str]:
    """timm architecture names matching ``pattern``, for "did you mean" messages.

    Args:
        pattern: a glob (``"vit_small_*"``); a pattern without ``*`` / ``?`` / ``[`` is matched
            as a substring (``"swin"`` -> ``"*swin*"``). Matching is case-sensitive, as timm's.
        limit: at most this many names (sorted as timm lists them); ``<= 0`` for all.

    Returns:
        The names, possibly empty.
    """
    import timm

    glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    names = list(timm.list_models(glob))
    return names if limit <= 0 else names[:limit]


@lru_cache(maxsize=1)
def _imagenet_names() -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(info.num_classes()))


def imagenet_class_names() -> list[str]:
    """Descriptions of the 1000 ImageNet-1k classes, indexed by class (``[0] == "tench, Tinca
    tinca"``), as shipped with timm (no download)."""
    return list(_imagenet_names())


@lru_cache(maxsize=4)
def _imagenet_subset_names(subset: str) -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo(subset)
    return tuple(info.index_to_description(i) for i in range(info.num_classes()))


def head_class_names(backbone: Any) -> list[str] | None:
    """Names of the classes of ``backbone``'s head, indexed like its logits, or ``None``.

    In order: the model's own labels (Hugging Face ``config.id2label`` unless they are the
    placeholders ``LABEL_0, LABEL_1, ...``; timm ``pretrained_cfg["label_names"]``) when they
    match the head's size; otherwise, for a head of an ImageNet size (1000 classes:
    ImageNet-1k; 11821: ImageNet-12k; 21841 / 21843: ImageNet-22k / 21k, ...), the ImageNet
    class descriptions timm ships (``timm.data.ImageNetInfo``, no download), the convention
    every hub classifier of that size follows. ``None`` when the model has no linear head (its
    "logits" are then the pooled features) or the names are unknown (e.g. a few-shot task head:
    take the names from the dataset instead).

    Args:
        backbone: a :class:`~focusvit.backbones.BackboneAdapter`.
    """
    count = int(backbone.num_classes)
    if count <= 0:
        return None
    model = backbone.model
    labels = getattr(getattr(model, "config", None), "id2label", None)
    if isinstance(labels, dict) and len(labels) == count:
        names = [str(labels.get(i, labels.get(str(i), ""))) for i in range(count)]
        if all(names) and any(name != f"LABEL_{i}" for i, name in enumerate(names)):
            return names
    pretrained = getattr(model, "pretrained_cfg", None)
    label_names = pretrained.get("label_names") if isinstance(pretrained, dict) else None
    if label_names is not None and len(label_names) == count:
        return [str(name) for name in label_names]
    from timm.data import infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": count})
    return list(_imagenet_subset_names(subset)) if subset else None
