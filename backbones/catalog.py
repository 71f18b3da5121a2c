"""Model and label catalogues of the libraries behind the adapters (timm), so that code outside
``focusvit.backbones`` never imports timm or transformers itself.

- :func:`is_timm_model` / :func:`suggest_model_names`: validate a timm architecture name and
  suggest close ones in an error message;
- :func:`imagenet_class_names`: the 1000 ImageNet-1k class descriptions in class-index order
  (what timm's ImageNet classifiers predict).
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["imagenet_class_names", "is_timm_model", "suggest_model_names"]


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
