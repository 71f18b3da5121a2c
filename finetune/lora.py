"""LoRA through peft, injected in place into ``backbone.model``.

peft's ``LoraModel`` (what ``peft.inject_adapter_in_model`` uses) replaces each targeted linear by
a ``peft.tuners.lora.Linear`` that wraps the original module as ``base_layer``. The adapter's
attention capture resolves the q/k modules at capture time, so it hooks the LoRA layers and the
captured attention includes the LoRA update. Removal uses peft's ``unload()`` (no merge), which
puts the original module objects back.
"""

from __future__ import annotations

from torch import nn

from focusvit.backbones.base import BackboneAdapter
from focusvit.errors import UnsupportedMethodError

from .tuners import LoraConfig, TunedModel, TunerConfig

__all__ = ["LoraTuned", "lora_target_names"]


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
        import torch

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
        import torch

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
