"""Raw attention of the last layer, and the helpers the attention-based explainers share.

The helpers work on head-fused attention maps ``(B, T, T)`` with ``T = S + N`` tokens: the
``S = backbone.num_tokens_before_patches`` tokens before the patches (the model's own prefix
tokens, then any tokens a tuner such as VPT inserted; the CLS token is always token 0), then
``N`` patch tokens in row-major grid order. Attention is always read through ``backbone.capture_attention``, so the model keeps its
fused attention kernels and no module path of timm / Hugging Face is touched here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor

from focusvit.backbones import BackboneAdapter, InputSizeError, UnsupportedMethodError
from focusvit.errors import ConfigError, LayerIndexError, UsageError

from .base import Explainer, Target, register_explainer, resolve_targets

HEAD_FUSIONS = ("mean", "min", "max")
#: query rows of rollout / raw attention: ``"auto"`` is the model's "CLS row": the CLS token's
#: row, or the mean of the patch query rows for models without a CLS token (SigLIP, GAP ViTs)
QUERIES = ("auto", "cls", "mean")

Layers = int | Sequence[int] | None


def check_choice(option: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ``ValueError`` naming the valid values when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ConfigError(
            f"{option}={value!r} is not supported; use one of: {', '.join(map(repr, choices))}"
        )


def check_ratio(discard_ratio: float) -> float:
    """A discard ratio must lie in ``[0, 1)``."""
    ratio = float(discard_ratio)
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(
            f"discard_ratio={discard_ratio!r} must lie in [0, 1): it is the fraction of each "
            "attention row set to zero (0 keeps everything, 0.9 is the official FORT value)"
        )
    return ratio


def fuse_heads(attention: Tensor, head_fusion: str) -> Tensor:
    """Fuse heads: ``(B, heads, T, T)`` -> ``(B, T, T)`` by mean, min or max, in float32."""
    attention = attention.float()
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "min":
        return attention.amin(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
    raise AssertionError  # unreachable


def discard_lowest(attention: Tensor, ratio: float, keep_first: bool = False) -> Tensor:
    """Zero the lowest ``ratio`` fraction of every row of ``attention`` ``(B, T, T)``.

    With ``keep_first`` the first column (the CLS token) is never discarded and the fraction is
    taken over the other ``T - 1`` columns. ``k = floor(ratio · columns)`` entries per row are
    zeroed (ties broken by ``torch.topk``). Rows are not renormalised here.
    """
    columns = attention.shape[-1] - int(keep_first)
    k = int(columns * ratio)
    if k <= 0:
        return attention
    ranked = attention
    if keep_first:
        ranked = attention.clone()
        ranked[..., 0] = torch.inf
    lowest = ranked.topk(k, dim=-1, largest=False).indices
    return attention.scatter(-1, lowest, 0.0)


def block_indices(backbone: BackboneAdapter, layers: Layers) -> list[int]:
    """Sorted, non-negative block indices of ``layers`` (``None``: every block)."""
    count = backbone.num_layers
    if layers is None:
        return list(range(count))
    chosen = [layers] if isinstance(layers, int) else list(layers)
    if not chosen:
        raise ConfigError("layers is empty; pass None for every block or a list of block indices")
    for layer in chosen:
        if not -count <= int(layer) < count:
            raise LayerIndexError(
                f"layer {layer} out of range: {backbone.name} has {count} blocks "
                f"(use 0..{count - 1} or negative indices)"
            )
    return sorted({int(layer) % count for layer in chosen})


def resolve_query(backbone: BackboneAdapter, query: str) -> str:
    """``"auto"`` -> ``"cls"`` when the model has a CLS token, else ``"mean"`` (the mean of the
    patch query rows is then its "CLS row"); ``"cls"`` on a model without a CLS token raises.

    Raises:
        UnsupportedMethodError: ``query="cls"`` on a model without a CLS token.
    """
    check_choice("query", query, QUERIES)
    if query == "auto":
        return "cls" if backbone.has_cls_token else "mean"
    if query == "cls" and not backbone.has_cls_token:
        raise UnsupportedMethodError(
            f"{backbone.name} has no CLS token, so query='cls' has no row to read; use "
            "query='mean' (the mean of the patch query rows, what query='auto' picks for it)"
        )
    return query


def query_params(backbone: BackboneAdapter, params: dict) -> dict:
    """``params`` with ``query`` resolved for ``backbone`` and ``cls_row`` saying what the row is
    (recorded in the explanation)."""
    query = resolve_query(backbone, params["query"])
    row = "cls token" if query == "cls" else "mean of patch query rows"
    return {**params, "query": query, "cls_row": row}


def query_rows(attention: Tensor, num_prefix: int, query: str) -> Tensor:
    """Attention paid by the query to every token: ``(B, T, T)`` -> ``(B, T)``.

    ``query="cls"`` takes row 0 (the CLS token, also with register / distillation tokens);
    ``query="mean"`` averages the rows of the patch queries, which start at ``num_prefix``
    (pass ``backbone.num_tokens_before_patches``).
    """
    if query == "cls":
        return attention[:, 0]
    if query == "mean":
        return attention[:, num_prefix:].mean(dim=1)
    check_choice("query", query, QUERIES)
    raise AssertionError  # unreachable


def to_patch_grid(
    backbone: BackboneAdapter, patch_scores: Tensor, image_size: tuple[int, int]
) -> Tensor:
    """Patch scores ``(B, N)`` -> ``(B, h, w)`` on the patch grid of ``image_size``."""
    h, w = backbone.grid_size(image_size)
    if patch_scores.shape[1] != h * w:
        raise InputSizeError(
            f"{patch_scores.shape[1]} patch scores do not fill the {h}x{w} grid of input "
            f"{image_size}; this model's token layout is not supported by attention explainers"
        )
    return patch_scores.reshape(patch_scores.shape[0], h, w)


def image_size_of(images: Tensor) -> tuple[int, int]:
    return int(images.shape[-2]), int(images.shape[-1])


@contextmanager
def streamed_attention(
    backbone: BackboneAdapter,
    layers: Sequence[int],
    reduce: Callable[[int, Tensor], Any],
    chunk: int = 4,
) -> Iterator[list[Any]]:
    """``backbone.capture_attention(layers, reduce=reduce, chunk=chunk)``, as a list.

    As soon as block ``layer`` has run, its probabilities, ``chunk`` images at a time
    ``(chunk, heads, T, T)`` (detached), are passed to ``reduce(layer, probs)`` under
    ``torch.no_grad``; the full multi-head map of a layer is never built, so the reduction works
    in cache and at most ``chunk`` images' maps are alive at a time. Yields the list of the
    reduce results (concatenated over chunks) in ``layers`` order, filled by the forward pass
    run inside the block. Every hook is removed on exit, also on error.
    """
    layers = list(layers)
    with backbone.capture_attention(layers=layers, reduce=reduce, chunk=chunk) as record:
        yield record.maps
    missing = [layer for layer, value in zip(layers, record.maps, strict=True) if value is None]
    if missing:
        raise UsageError(
            f"no attention was recorded for blocks {missing} of {backbone.name}: run one forward "
            "pass of the backbone inside streamed_attention"
        )


@register_explainer
class AttentionExplainer(Explainer):
    """Raw attention of one layer (default the last), head-fused, from the CLS query or the
    mean of the patch queries, restricted to the patch keys. The explanation's params record
    the resolved ``query`` and ``cls_row``.

    No gradient is taken (the forward runs under ``torch.no_grad``); ``target`` is only resolved
    (validated and reported). Columnar ViTs only.

    Args:
        head_fusion: ``"mean"`` | ``"min"`` | ``"max"`` over heads.
        query: ``"auto"`` (default: the CLS row, or the mean over patch query rows for models
            without a CLS token), ``"cls"`` (row of the CLS token) or ``"mean"``.
        layer: block whose attention is read (default ``-1``, the last).
    """

    name: ClassVar[str] = "attention"
    families: ClassVar[tuple[str, ...]] = ("vit",)

    def __init__(self, head_fusion: str = "mean", query: str = "auto", layer: int = -1):
        check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
        check_choice("query", query, QUERIES)
        super().__init__(head_fusion=head_fusion, query=query, layer=int(layer))

    def resolved_params(self, backbone: BackboneAdapter) -> dict:
        return query_params(backbone, self.params)

    def scores(
        self, backbone: BackboneAdapter, images: Tensor, target: Target
    ) -> tuple[Tensor, Tensor]:
        """``(scores (B, h, w), targets (B,))`` from one no-grad forward."""
        layer = block_indices(backbone, self.params["layer"])
        with (
            backbone.evaluating(),
            torch.no_grad(),
            backbone.capture_attention(layers=layer) as record,
        ):
            logits = backbone.logits(images)
            _, classes = resolve_targets(logits, target)
            fused = fuse_heads(record[0], self.params["head_fusion"])
        start = backbone.num_tokens_before_patches
        rows = query_rows(fused, start, resolve_query(backbone, self.params["query"]))
        patches = rows[:, start:]
        return to_patch_grid(backbone, patches, image_size_of(images)), classes
