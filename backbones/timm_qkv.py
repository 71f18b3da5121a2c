"""timm attention modules that apply their fused ``qkv`` projection as ``F.linear`` on its
weight (BEiT, EVA-02, Swin V2: ``q_bias`` / ``v_bias`` kept apart from the linear), shared by
their family files (docs/families.md).

On that path the ``qkv`` module itself never runs, so a LoRA layer wrapping it or an SSF hook on
it would act on nothing. timm's own ``qkv_bias_separate`` path computes the same function as
``qkv(x) + bias`` (equal up to float rounding) and does call the module: while a tuner is
attached, the adapters run the model on that path; the flags are restored afterwards, so an
untuned model always runs exactly its own code.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def bias_via_linear(attn: nn.Module) -> bool:
    """True when ``attn`` applies its fused ``qkv`` with ``F.linear`` on the weight (separate
    q/v biases, ``qkv_bias_separate=False``), bypassing the ``qkv`` module."""
    return (
        getattr(attn, "qkv", None) is not None
        and getattr(attn, "q_bias", None) is not None
        and not getattr(attn, "qkv_bias_separate", True)
    )


def is_attached(module: nn.Module) -> bool:
    """A peft layer wraps ``module`` or a hook listens to it."""
    return hasattr(module, "base_layer") or bool(module._forward_hooks or module._forward_pre_hooks)


def qkv_bias(attn: nn.Module) -> Tensor:
    """The ``(3 · width,)`` bias of a fused ``qkv`` with separate q/v biases (k: zeros)."""
    k_bias = getattr(attn, "k_bias", None)
    if k_bias is None:
        k_bias = torch.zeros_like(attn.v_bias)
    return torch.cat((attn.q_bias, k_bias, attn.v_bias))


def fused_qkv(attn: nn.Module, x: Tensor) -> Tensor:
    """``(..., 3 · width)`` as the module computes it on its current path."""
    if getattr(attn, "q_bias", None) is None:
        return attn.qkv(x)
    if getattr(attn, "qkv_bias_separate", False):
        return attn.qkv(x) + qkv_bias(attn)
    return F.linear(x, weight=attn.qkv.weight, bias=qkv_bias(attn))


@contextmanager
def qkv_module_called(attentions: Sequence[nn.Module]) -> Iterator[None]:
    """While inside: every ``F.linear``-path attention among ``attentions`` whose ``qkv`` a LoRA
    layer wraps or a hook listens to runs timm's ``qkv_bias_separate`` path, so the module is
    called; the flags are restored on exit, also on error."""
    switched = [a for a in attentions if bias_via_linear(a) and is_attached(a.qkv)]
    for attn in switched:
        attn.qkv_bias_separate = True
    try:
        yield
    finally:
        for attn in switched:
            attn.qkv_bias_separate = False
