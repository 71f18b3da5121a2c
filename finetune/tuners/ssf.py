"""SSF: scaling and shifting features (Lian et al., NeurIPS 2022).

A learnable per-channel scale γ (init 1) and shift β (init 0) is applied to the output of every
module named in ``backbone.ssf_targets`` through a forward hook: ``out · γ + β`` over the channel
dimension (the last one for token tensors ``(B, N, C)`` / ``(B, H, W, C)``; dimension 1 for a
convolution's ``(B, C, H, W)``). Tuple outputs (HF Swin's patch embeddings) are scaled in their
first element. γ and β live in a child module ``ssf`` of the hooked module, so their names read
``blocks.0.attn.qkv.ssf.scale``; at init the model's output is bit-identical to the original.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from focusvit.backbones.base import BackboneAdapter
from focusvit.errors import UnsupportedMethodError, UsageError

from .base import (
    SEQUENTIAL_FIX,
    BatchedVariant,
    BatchingUnsupportedError,
    TaskRouting,
    TunedModel,
    TunerConfig,
    TunerSpec,
    check_targets,
    iter_named_modules,
    register,
)

__all__ = [
    "SSF_CHILD",
    "SSFBatched",
    "SSFConfig",
    "SSFTuned",
    "ScaleShift",
    "channel_count",
    "ssf_channels",
]


@dataclass
class SSFConfig(TunerConfig):
    """SSF (Lian et al., NeurIPS 2022): per-channel ``out · γ + β`` after every site in
    ``backbone.ssf_targets`` (patch embedding, q/k/v, attention projection, both norms, both
    MLP linears, final norm). γ starts at 1 and β at 0, so the model starts unchanged.

    Attributes:
        targets: full module names overriding ``backbone.ssf_targets`` (``None``: the adapter's).
    """

    name: ClassVar[str] = "ssf"
    targets: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        self.targets = check_targets(
            self.targets, "SSF targets", "targets=['blocks.0.attn.qkv', 'blocks.0.mlp.fc1']"
        )


SSF_CHILD = "ssf"


def channel_count(module: nn.Module) -> int:
    """Output channels of ``module``: from a Linear / Conv / norm, else from its last such child."""
    for candidate in (module, *reversed(list(module.modules()))):
        for attr in ("out_features", "out_channels"):
            value = getattr(candidate, attr, None)
            if isinstance(value, int):
                return value
        shape = getattr(candidate, "normalized_shape", None)
        if shape is not None:
            return int(shape[-1]) if not isinstance(shape, int) else shape
        if isinstance(candidate, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
            return int(getattr(candidate, "num_features", 0) or candidate.num_channels)
    raise UnsupportedMethodError(
        f"cannot tell the output channels of {type(module).__name__} for SSF; target a Linear, "
        "convolution or norm module instead"
    )


class ScaleShift(nn.Module):
    """``x · scale + shift`` per channel; ``channel_dim`` -1 (tokens) or 1 (conv maps)."""

    def __init__(self, channels: int, channel_dim: int = -1, device=None, dtype=None):
        super().__init__()
        self.channel_dim = channel_dim
        self.scale = nn.Parameter(torch.ones(channels, device=device, dtype=dtype))
        self.shift = nn.Parameter(torch.zeros(channels, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        c = self.scale.shape[0]
        dim = self.channel_dim
        if x.shape[dim] != c and x.ndim >= 3 and x.shape[1 if dim == -1 else -1] == c:
            dim = 1 if dim == -1 else -1
        if x.shape[dim] != c:
            raise RuntimeError(
                f"SSF expected {c} channels, got an output of shape {tuple(x.shape)}"
            )
        if dim in (-1, x.ndim - 1):
            return x * self.scale + self.shift
        view = [1] * x.ndim
        view[dim] = c
        return x * self.scale.view(view) + self.shift.view(view)

    def extra_repr(self) -> str:
        return f"{self.scale.shape[0]}, channel_dim={self.channel_dim}"


def _ssf_hook(module: nn.Module, _inputs: tuple, output: Any) -> Any:
    ssf = module._modules[SSF_CHILD]
    if isinstance(output, tuple):
        return (ssf(output[0]), *output[1:])
    return ssf(output)


class SSFTuned(TunedModel):
    """SSF scale/shift after every site of ``backbone.ssf_targets``, plus the head."""

    config_class = SSFConfig

    @classmethod
    def not_applicable(cls, backbone: BackboneAdapter, config: TunerConfig) -> str:
        targets = getattr(config, "targets", None) or backbone.ssf_targets
        if not targets:
            return (
                "the model lists no SSF sites (ssf_targets is empty; SSF applies to the families "
                "'vit' and 'swin')"
            )
        return ""

    def _inject(self) -> None:
        config: SSFConfig = self.config  # type: ignore[assignment]
        model = self.backbone.model
        names = config.targets or self.backbone.ssf_targets
        self._sites: list[nn.Module] = []
        self.target_names = list(names)
        for name, module in iter_named_modules(model, names):
            if SSF_CHILD in module._modules or hasattr(module, SSF_CHILD):
                raise UsageError(f"{name} already has {SSF_CHILD!r}; load a fresh backbone")
            ref = next(module.parameters(), None)
            dim = 1 if isinstance(module, nn.modules.conv._ConvNd) else -1
            scale_shift = ScaleShift(
                channel_count(module),
                dim,
                device=ref.device if ref is not None else None,
                dtype=ref.dtype if ref is not None else None,
            )
            module.add_module(SSF_CHILD, scale_shift)
            self._sites.append(module)
            # prepend: other forward hooks on the module (attention capture on q/k) see the
            # scaled and shifted output that the model itself uses
            self._handles.append(module.register_forward_hook(_ssf_hook, prepend=True))

    def _eject(self) -> None:
        for module in getattr(self, "_sites", []):
            module._modules.pop(SSF_CHILD, None)
        self._sites = []

    @property
    def scale_shift_modules(self) -> list[ScaleShift]:
        """The :class:`ScaleShift` modules in ``ssf_targets`` order."""
        return [m._modules[SSF_CHILD] for m in self._sites]  # type: ignore[misc]


# ----------------------------------------------------------------------------- batched variant
def ssf_channels(backbone: BackboneAdapter) -> int:
    """Σ output channels over ``backbone.ssf_targets`` (0 when SSF does not apply)."""
    total = 0
    for name in backbone.ssf_targets:
        try:
            total += channel_count(backbone.model.get_submodule(name))
        except (AttributeError, UnsupportedMethodError):
            total += backbone.embed_dim
    return total


class SSFBatched(BatchedVariant):
    """SSF for T tasks at once: on each site ``out = out · γ_t + β_t`` with stacked
    ``γ, β (T, C)`` over the channel (last) dimension."""

    def site_names(self, backbone: BackboneAdapter, config: TunerConfig) -> list[str]:
        return list(getattr(config, "targets", None) or backbone.ssf_targets)

    def site_state(self, module: nn.Module, name: str) -> tuple[tuple[Tensor, Tensor], float]:
        """``(scale (C,), shift (C,))`` of the :class:`ScaleShift` on ``module``."""
        ssf = module._modules.get(SSF_CHILD)
        if not isinstance(ssf, ScaleShift) or ssf.channel_dim != -1:
            raise BatchingUnsupportedError(
                f"SSF site {name} does not scale the last (channel) dimension; {SEQUENTIAL_FIX}"
            )
        return (ssf.scale, ssf.shift), 1.0

    def hook(
        self, name: str, first: Tensor, second: Tensor, constant: float, routing: TaskRouting
    ) -> Callable[..., Any]:
        """``out · γ_t + β_t`` per image, ``γ = first``, ``β = second`` of shape ``(T, C)``."""
        return _batched_ssf_hook(name, first, second, routing)

    def activation_bytes(self, backbone: BackboneAdapter, tokens: int) -> int:
        """SSF keeps one more input per site (``out · γ`` needs ``out`` for γ's gradient):
        ``4 · tokens · Σ channels`` of ``backbone.ssf_targets``."""
        return 4 * tokens * ssf_channels(backbone)


def _batched_ssf_hook(
    name: str, scale: Tensor, shift: Tensor, routing: TaskRouting
) -> Callable[..., Any]:
    """``out · γ_t + β_t`` per image over the channel (last) dimension, ``γ, β (T, C)``."""
    channels = scale.shape[1]

    def apply(x: Tensor) -> Tensor:
        index = routing.current(x.shape[0], name)
        view = [x.shape[0]] + [1] * (x.ndim - 1)
        if x.shape[-1] == channels:
            view[-1] = channels
        elif x.ndim >= 3 and x.shape[1] == channels:  # what ScaleShift falls back to
            view[1] = channels
        else:
            raise RuntimeError(
                f"SSF at {name} expected {channels} channels, got an output of shape "
                f"{tuple(x.shape)}"
            )
        return x * scale[index].view(view) + shift[index].view(view)

    def hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):
            return (apply(output[0]), *output[1:])
        return apply(output)

    return hook


SPEC = register(TunerSpec(SSFConfig, SSFTuned, label="SSF", batched=SSFBatched()))
