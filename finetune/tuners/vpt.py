"""VPT: visual prompt tuning (Jia et al., ECCV 2022) for columnar ViTs.

``T = num_tokens`` learnable prompt tokens are inserted right after the ``P`` prefix tokens
(CLS, registers, distillation token) by a forward pre-hook on the first block; deep VPT replaces
them by the next block's own prompts with a pre-hook on every later block. A forward hook on the
last block strips them again, so the final norm, pooling, head and anything that uses
``num_prefix_tokens`` on the final tokens see the original layout.

Token layout *inside* the blocks while VPT is active (block inputs, ``track_block_input``,
hooks on block sub-modules and the maps of ``capture_attention``, which are
``(B, heads, P+T+N, P+T+N)``)::

    [ prefix (P) | prompts (T) | patches (N) ]

Other hooks on the blocks see this layout whenever they were registered (VPT's hooks are
prepended). The adapter carries the layout while VPT is active: ``backbone.inserted_tokens`` is
T, ``backbone.inserted_tokens_refreshed`` is True for deep VPT, and
``backbone.num_tokens_before_patches`` is P + T (``backbone.num_prefix_tokens`` stays P). Code
that slices patch tokens out of block inputs or captured attention (explainers, metrics, the
attention-enhancement loss) skips ``backbone.num_tokens_before_patches`` tokens;
``backbone.tokens_to_grid`` recognises both layouts. VPT declares them when applied and resets
them on removal, also when applying fails. (``TunedModel.extra_prefix_tokens`` and
``attention_prefix_tokens`` are the same numbers, kept for existing callers.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from focusvit.backbones.base import BackboneAdapter, parameter_device
from focusvit.checks import is_whole_number
from focusvit.errors import ConfigError, UnsupportedMethodError, UsageError

from .base import TunedModel, TunerConfig, TunerSpec, check_flag, check_number, register

__all__ = ["VPT_CHILD", "VPTConfig", "VPTPrompts", "VPTTuned"]


@dataclass
class VPTConfig(TunerConfig):
    """Visual Prompt Tuning (Jia et al., ECCV 2022), columnar ViTs only.

    Attributes:
        num_tokens: prompt tokens T per block (deep) or in total (shallow).
        deep: ``True``: new prompts at every block, replacing the previous block's prompt
            outputs; ``False``: prompts inserted once, before the first block.
        init_std: ``None`` (default) initialises the prompts uniformly in ``[-v, v]`` with
            ``v = sqrt(6 / (3·ph·pw + D))``, the Xavier-style rule of the official VPT code
            (patch size ``ph×pw``, width D); a float draws them from ``N(0, init_std²)``.
        dropout: dropout on the prompt tokens (official default 0).
    """

    name: ClassVar[str] = "vpt"
    num_tokens: int = 10
    deep: bool = True
    init_std: float | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        n = self.num_tokens
        if not is_whole_number(n, 1):
            raise ConfigError(f"VPT num_tokens must be a positive integer, got {n!r}")
        check_flag(self.deep, "VPT deep", "deep=True (prompts at every block)")
        if self.init_std is not None:
            check_number(
                self.init_std, "VPT init_std", "> 0 (or None)", lambda s: s > 0, "init_std=0.02"
            )
        check_number(self.dropout, "VPT dropout", "in [0, 1)", lambda p: 0 <= p < 1, "dropout=0.1")


VPT_CHILD = "vpt"


class VPTPrompts(nn.Module):
    """Prompt parameters ``(layers, T, D)``: one set per block (deep) or one set (shallow)."""

    def __init__(self, layers: int, tokens: int, dim: int, dropout: float = 0.0, device=None):
        super().__init__()
        self.prompts = nn.Parameter(torch.zeros(layers, tokens, dim, device=device))
        self.dropout = nn.Dropout(dropout)

    def batch(self, layer: int, batch_size: int, like: Tensor) -> Tensor:
        """Prompts of ``layer`` as ``(B, T, D)`` in the dtype of ``like``, with dropout."""
        prompts = self.prompts[layer].to(like.dtype).unsqueeze(0).expand(batch_size, -1, -1)
        return self.dropout(prompts)


def _split_call(args: tuple, kwargs: dict) -> tuple[Tensor, Any]:
    """The hidden states of a block call and a function that rebuilds the call with new ones."""
    if args:
        return args[0], lambda t: ((t, *args[1:]), kwargs)
    key = next((k for k in ("hidden_states", "x") if k in kwargs), None) or next(iter(kwargs))
    return kwargs[key], lambda t: (args, {**kwargs, key: t})


def _check_no_mask(tokens: Tensor, args: tuple, kwargs: dict) -> None:
    others = [*args[1:], *kwargs.values()]
    n = tokens.shape[1]
    for value in others:
        if isinstance(value, Tensor) and value.ndim >= 2 and value.shape[-1] == n:
            raise UnsupportedMethodError(
                "VPT cannot extend an attention mask passed to the blocks; run the model "
                "without attention_mask while VPT is active"
            )


class VPTTuned(TunedModel):
    """VPT prompts (deep or shallow) plus the head."""

    config_class = VPTConfig

    @classmethod
    def not_applicable(cls, backbone: BackboneAdapter, config: TunerConfig) -> str:
        if backbone.family != "vit":
            return (
                "VPT inserts prompt tokens into the token sequence of columnar ViTs (family "
                "'vit'); windowed Swin stages and CNN feature maps have no such sequence"
            )
        return ""

    @property
    def extra_prefix_tokens(self) -> int:  # type: ignore[override]
        return self.config.num_tokens  # type: ignore[attr-defined]

    def _inject(self) -> None:
        config: VPTConfig = self.config  # type: ignore[assignment]
        backbone = self.backbone
        model = backbone.model
        if VPT_CHILD in model._modules or hasattr(model, VPT_CHILD):
            raise UsageError(f"model already has {VPT_CHILD!r}; load a fresh backbone for VPT")
        blocks = backbone.blocks
        dim = backbone.embed_dim
        layers = len(blocks) if config.deep else 1
        prompts = VPTPrompts(
            layers, config.num_tokens, dim, config.dropout, device=parameter_device(model)
        )
        with torch.no_grad():
            if config.init_std is None:
                ph, pw = backbone.patch_size
                bound = math.sqrt(6.0 / (3 * ph * pw + dim))
                prompts.prompts.uniform_(-bound, bound)
            else:
                prompts.prompts.normal_(0.0, config.init_std)
        prompts.train(model.training)
        model.add_module(VPT_CHILD, prompts)
        self._prompts = prompts
        p, t = backbone.num_prefix_tokens, config.num_tokens

        def insert(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            tokens, rebuild = _split_call(args, kwargs)
            _check_no_mask(tokens, args, kwargs)
            new = prompts.batch(0, tokens.shape[0], tokens)
            return rebuild(torch.cat([tokens[:, :p], new, tokens[:, p:]], dim=1))

        def make_replace(layer: int):
            def replace(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
                tokens, rebuild = _split_call(args, kwargs)
                new = prompts.batch(layer, tokens.shape[0], tokens)
                return rebuild(torch.cat([tokens[:, :p], new, tokens[:, p + t :]], dim=1))

            return replace

        def strip(_module: nn.Module, _args: tuple, output: Any) -> Any:
            if isinstance(output, tuple):
                return (strip(_module, _args, output[0]), *output[1:])
            return torch.cat([output[:, :p], output[:, p + t :]], dim=1)

        # prepend: hooks on the blocks registered before VPT see the same layout as later ones
        # (N + T tokens entering every block, N leaving the last one).
        self._handles.append(
            blocks[0].register_forward_pre_hook(insert, with_kwargs=True, prepend=True)
        )
        if config.deep:
            for layer in range(1, len(blocks)):
                self._handles.append(
                    blocks[layer].register_forward_pre_hook(
                        make_replace(layer), with_kwargs=True, prepend=True
                    )
                )
        self._handles.append(blocks[-1].register_forward_hook(strip, prepend=True))
        backbone.set_inserted_tokens(t, refreshed=config.deep)

    @property
    def prompts(self) -> nn.Parameter:
        """The prompt parameter ``(layers, T, D)`` (layers = number of blocks if deep, else 1)."""
        return self._prompts.prompts

    def _eject(self) -> None:
        self.backbone.set_inserted_tokens(0)
        model = self.backbone.model
        if getattr(self, "_prompts", None) is not None and model._modules.get(VPT_CHILD) is (
            self._prompts
        ):
            del model._modules[VPT_CHILD]
        self._prompts = None


SPEC = register(TunerSpec(VPTConfig, VPTTuned, label="VPT", random_options=("dropout",)))
