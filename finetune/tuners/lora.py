"""LoRA through peft, injected in place into ``backbone.model``.

peft's ``LoraModel`` (what ``peft.inject_adapter_in_model`` uses) replaces each targeted linear by
a ``peft.tuners.lora.Linear`` that wraps the original module as ``base_layer``. The adapter's
attention capture resolves the q/k modules at capture time, so it hooks the LoRA layers and the
captured attention includes the LoRA update. Removal uses peft's ``unload()`` (no merge), which
puts the original module objects back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from focusvit.backbones.base import BackboneAdapter
from focusvit.checks import is_whole_number
from focusvit.errors import ConfigError, UnsupportedMethodError

from .base import (
    SEQUENTIAL_FIX,
    BatchedVariant,
    BatchingUnsupportedError,
    TaskRouting,
    TunedModel,
    TunerConfig,
    TunerSpec,
    check_number,
    check_targets,
    register,
)

__all__ = ["LoraBatched", "LoraConfig", "LoraTuned", "lora_target_names"]


@dataclass
class LoraConfig(TunerConfig):
    """LoRA (Hu et al., ICLR 2022) through peft.

    Attributes:
        rank: rank r of the update ``B A``.
        alpha: peft's ``lora_alpha``; the update is scaled by ``alpha / rank``.
        dropout: dropout on the LoRA branch input.
        targets: module-name suffixes to adapt, matched only inside the transformer blocks
            (so ``proj`` never hits timm's ``patch_embed.proj``); ``None`` uses the adapter's
            ``lora_targets`` (attention qkv and output projection).
    """

    name: ClassVar[str] = "lora"
    rank: int = 4
    alpha: float = 1.0
    dropout: float = 0.0
    targets: list[str] | None = None

    def __post_init__(self) -> None:
        if not is_whole_number(self.rank, 1):
            raise ConfigError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        check_number(self.alpha, "LoRA alpha", "> 0", lambda a: a > 0, "alpha=1.0")
        check_number(self.dropout, "LoRA dropout", "in [0, 1)", lambda p: 0 <= p < 1, "dropout=0.1")
        self.targets = check_targets(self.targets, "LoRA targets", "targets=['qkv', 'proj']")


def lora_target_names(backbone: BackboneAdapter, suffixes: list[str]) -> list[str]:
    """Full names in ``backbone.model`` of the modules inside the blocks whose name is one of
    ``suffixes`` or ends with ``"." + suffix`` (peft's suffix rule, restricted to the blocks)."""
    names = {id(m): n for n, m in backbone.model.named_modules(remove_duplicate=False)}
    out: list[str] = []
    for block in backbone.blocks:
        prefix = names[id(block)]
        for name, _ in block.named_modules():
            if name and any(name == s or name.endswith("." + s) for s in suffixes):
                out.append(f"{prefix}.{name}")
    return out


class LoraTuned(TunedModel):
    """LoRA adapters (rank, alpha, dropout from :class:`LoraConfig`) plus the head."""

    config_class = LoraConfig

    @classmethod
    def not_applicable(cls, backbone: BackboneAdapter, config: TunerConfig) -> str:
        if backbone.family == "cnn" or not backbone.lora_targets:
            return (
                "the model has no attention projections for LoRA (LoRA applies to the families "
                "'vit' and 'swin')"
            )
        return ""

    def _inject(self) -> None:
        import peft
        from peft.tuners.lora import LoraModel

        config: LoraConfig = self.config  # type: ignore[assignment]
        suffixes = config.targets or self.backbone.lora_targets
        targets = lora_target_names(self.backbone, suffixes)
        if not targets:
            linears = sorted(
                {
                    n.rpartition(".")[2]
                    for b in self.backbone.blocks
                    for n, m in b.named_modules()
                    if isinstance(m, nn.Linear)
                }
            )
            raise UnsupportedMethodError(
                f"LoRA targets {suffixes} match no module inside the blocks of "
                f"{self.backbone.name}; linear layers there are named: {', '.join(linears)}"
            )
        peft_config = peft.LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=targets,
            bias="none",
        )
        self._merged_saved: list = []
        self._lora = LoraModel(self.backbone.model, peft_config, "default")
        self.target_names = targets

    def merge(self) -> None:
        """Merge ``W += (alpha/rank) B A`` into the targeted layers (peft ``merge_adapter``).

        For inference: the forward then skips the LoRA branch. The base weights are cloned
        first and :meth:`unmerge` copies them back, so unmerging (and removal) is exact.
        Do not train while merged.
        """
        self._check_alive()
        if self._merged_saved:
            return
        base = [
            p
            for m in self._lora.model.modules()
            if hasattr(m, "base_layer") and hasattr(m, "lora_A")
            for p in m.get_base_layer().parameters(recurse=False)
        ]
        self._merged_saved = [(p, p.detach().clone()) for p in base]
        with torch.no_grad():
            self._lora.merge_adapter()

    def unmerge(self) -> None:
        """Undo :meth:`merge` exactly (the saved base weights are copied back)."""
        self._check_alive()
        self._unmerge()

    @property
    def merged(self) -> bool:
        return bool(self._merged_saved)

    def _unmerge(self) -> None:
        if not getattr(self, "_merged_saved", None):
            return
        self._lora.unmerge_adapter()
        with torch.no_grad():
            for p, saved in self._merged_saved:
                p.copy_(saved)
        self._merged_saved = []

    def _eject(self) -> None:
        lora = getattr(self, "_lora", None)
        if lora is None:  # injection failed half-way: put back whatever peft replaced
            _strip_lora_layers(self.backbone.model)
            return
        self._unmerge()
        lora.unload()
        self._lora = None


def _strip_lora_layers(model: nn.Module) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and name:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    if "peft_config" in model.__dict__:
        del model.__dict__["peft_config"]


# ----------------------------------------------------------------------------- batched variant
class LoraBatched(BatchedVariant):
    """LoRA for T tasks at once: on each targeted linear ``out += s · (x A_tᵀ) B_tᵀ`` with
    stacked ``A (T, r, d_in)``, ``B (T, d_out, r)`` and peft's scaling ``s = alpha / r``, as two
    batched matmuls."""

    def site_names(self, backbone: BackboneAdapter, config: TunerConfig) -> list[str]:
        suffixes = getattr(config, "targets", None) or backbone.lora_targets
        return lora_target_names(backbone, suffixes)

    def site_state(self, module: nn.Module, name: str) -> tuple[tuple[Tensor, Tensor], float]:
        """peft's ``(A (r, d_in), B (d_out, r))`` of the one adapter on ``module`` and its
        scaling."""
        adapters = list(getattr(module, "lora_A", {}).keys())
        if len(adapters) != 1:
            raise BatchingUnsupportedError(
                f"{name} carries LoRA adapters {adapters} (expected exactly one); {SEQUENTIAL_FIX}"
            )
        key = adapters[0]
        pair = (module.lora_A[key].weight, module.lora_B[key].weight)
        return pair, float(module.scaling[key])

    def hook(
        self, name: str, first: Tensor, second: Tensor, constant: float, routing: TaskRouting
    ) -> Callable[..., Tensor]:
        """``out + s · (x A_tᵀ) B_tᵀ`` per image, ``A (T, r, d_in)``, ``B (T, d_out, r)``."""

        def lora_hook(_module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            x = args[0]
            index = routing.current(x.shape[0], name)
            flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, L, d_in)
            low = torch.bmm(flat, first[index].transpose(1, 2))  # (B, L, r)
            delta = torch.bmm(low, second[index].transpose(1, 2))  # (B, L, d_out)
            return output + (delta * constant).reshape(output.shape)

        return lora_hook


SPEC = register(
    TunerSpec(
        LoraConfig,
        LoraTuned,
        label="LoRA",
        needs_peft=True,
        random_options=("dropout",),
        merge="fold",
        batched=LoraBatched(),
    )
)
