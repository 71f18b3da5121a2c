"""Parameter-efficient tuners for few-shot fine-tuning (DESIGN.md section 6).

Each tuner is described by a config dataclass (validated in ``__post_init__``) and applied to a
:class:`~focusvit.backbones.BackboneAdapter` with :func:`apply_tuner`, which returns a
:class:`TunedModel`. Tuners are injected *in place*: ``backbone.logits``, ``features`` and
``capture_attention`` keep working on the tuned model, and the tuner's own parameters are
registered inside ``backbone.model`` (so ``backbone.parameters()``, ``frozen()`` and
``evaluating()`` see them). Removing the tuner (``remove()`` or leaving the ``with`` block)
returns the backbone bit-identical to its state when the tuner was applied.

========  ==================================================================================
name      trainable (plus the head when the model has one)
========  ==================================================================================
linear    the head only (needs a head: load with ``num_classes`` or ``replace_head`` first)
full      every parameter
lora      low-rank adapters through peft on ``backbone.lora_targets`` (inside the blocks)
ssf       per-channel scale (init 1) and shift (init 0) after ``backbone.ssf_targets``
vpt       prompt tokens inserted after the prefix tokens (columnar ViTs only)
========  ==================================================================================

How the pretrained weights are protected. Every task starts from the pretrained state and none
of it survives the task:

- The parameters a tuner makes trainable that belong to the backbone (the head; everything for
  ``full``) are cloned when the tuner is applied and copied back, in place, on removal. This
  costs one copy of those parameters (for ``full`` one copy of the model, the same as training a
  ``deepcopy``, but the backbone object, its hooks and references to it stay valid). All buffers
  (e.g. BatchNorm running statistics, which change in train mode even when the weights are
  frozen) are cloned and restored the same way; they are small.
- The tuner's own parameters (LoRA A/B, SSF scale/shift, VPT prompts) are created fresh at every
  :func:`apply_tuner` call and deleted on removal. LoRA is unloaded with peft's ``unload()``
  (no merge). :meth:`TunedModel.merge` clones the targeted base weights before merging, and
  unmerging copies them back, so removal after a merge is bit-identical as well.
- ``requires_grad`` flags and every module's ``training`` flag are recorded and restored; a head
  replaced through :meth:`TunedModel.set_head` (or ``backbone.set_head``) during the task is put
  back.
- Gradients: removal sets ``.grad`` of every parameter to ``None`` (for ``full`` the task's
  gradients are one copy of the model, which would otherwise stay allocated and accumulate into
  the user's next ``backward``); gradients that existed at apply time are cloned then and put
  back.

Example::

    with apply_tuner(backbone, "lora", rank=4) as tuned:
        optimiser = torch.optim.AdamW(tuned.trainable_parameters(), lr=5e-3)
        ...
        print(tuned.parameter_counts())  # {'trainable': ..., 'total': ...}
    # backbone is the pretrained model again
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from focusvit.backbones.base import BackboneAdapter
from focusvit.errors import ConfigError, UnsupportedMethodError

__all__ = [
    "TUNERS",
    "FullConfig",
    "LinearConfig",
    "LoraConfig",
    "SSFConfig",
    "TunedModel",
    "TunerConfig",
    "VPTConfig",
    "applicable_tuners",
    "apply_tuner",
    "make_tuner",
]


# ----------------------------------------------------------------------------- configs
@dataclass
class TunerConfig:
    """Base of the tuner configs. ``name`` is the registry key of the tuner."""

    name: ClassVar[str] = ""


@dataclass
class LinearConfig(TunerConfig):
    """Linear probe: only the classification head is trained."""

    name: ClassVar[str] = "linear"


@dataclass
class FullConfig(TunerConfig):
    """Full fine-tuning: every parameter of the model is trained."""

    name: ClassVar[str] = "full"


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
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ConfigError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if self.targets is not None:
            if isinstance(self.targets, str):
                self.targets = [self.targets]
            self.targets = list(self.targets)
            if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
                raise ConfigError(
                    f"LoRA targets must be a non-empty list of module names, got {self.targets!r}"
                )


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
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"VPT num_tokens must be a positive integer, got {n!r}")
        if self.init_std is not None and not self.init_std > 0:
            raise ConfigError(f"VPT init_std must be > 0 or None, got {self.init_std!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"VPT dropout must be in [0, 1), got {self.dropout!r}")


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
        if self.targets is not None:
            self.targets = list(self.targets)
            if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
                raise ConfigError(
                    f"SSF targets must be a non-empty list of module names, got {self.targets!r}"
                )


TUNERS: dict[str, type[TunerConfig]] = {
    cls.name: cls for cls in (LinearConfig, FullConfig, LoraConfig, VPTConfig, SSFConfig)
}


def make_tuner(name: str, **kwargs: Any) -> TunerConfig:
    """The config of tuner ``name`` (a key of :data:`TUNERS`) built from ``kwargs``."""
    if name not in TUNERS:
        raise UnsupportedMethodError(f"unknown tuner {name!r}; available: {', '.join(TUNERS)}")
    try:
        return TUNERS[name](**kwargs)
    except TypeError as error:
        raise TypeError(f"bad options for tuner {name!r}: {error}") from None


# ----------------------------------------------------------------------------- tuned model
def _model_label(backbone: BackboneAdapter) -> str:
    return f"{backbone.name} (family {backbone.family!r})"


class TunedModel:
    """A tuner applied in place to a backbone, for one task.

    Attributes:
        backbone: the adapter; use it as usual (``logits``, ``features``, ``capture_attention``).
        config: the tuner's config.
        extra_prefix_tokens: tokens the tuner inserts right after the prefix tokens inside the
            blocks (VPT: ``num_tokens``; 0 otherwise). Captured attention maps and block inputs
            have this many more tokens; the final tokens, pooling and head do not. While the
            tuner is active the adapter carries the same number as ``backbone.inserted_tokens``
            (the source explainers, metrics and the loss read).
    """

    config_class: ClassVar[type[TunerConfig]] = TunerConfig
    extra_prefix_tokens: int = 0

    def __init__(self, backbone: BackboneAdapter, config: TunerConfig):
        if not isinstance(backbone, BackboneAdapter):
            raise TypeError(
                f"apply_tuner needs a BackboneAdapter (focusvit.load_backbone / adapt), got "
                f"{type(backbone).__name__}"
            )
        if getattr(backbone, "_focusvit_tuner", None) is not None:
            raise RuntimeError(
                f"{backbone.name} already has an active {backbone._focusvit_tuner.config.name!r} "
                "tuner; remove() it (or leave its with-block) before applying another"
            )
        reason = self.not_applicable(backbone, config)
        if reason:
            raise UnsupportedMethodError(
                f"tuner {config.name!r} does not apply to {_model_label(backbone)}: {reason}. "
                f"Tuners that apply to this model: {', '.join(applicable_tuners(backbone))}"
            )
        self.backbone = backbone
        self.config = config
        self.removed = False
        model = backbone.model
        self._head_name = backbone.head_name
        self._head = backbone.head if self._head_name else None
        self._flags = [(p, p.requires_grad) for p in model.parameters()]
        self._modes = [(m, m.training) for m in model.modules()]
        self._buffers = [
            (module, name, buffer, buffer.detach().clone())
            for module in model.modules()
            for name, buffer in module._buffers.items()
            if buffer is not None
        ]
        self._saved = [(p, p.detach().clone()) for p in self._backbone_trainables()]
        # gradients present at apply time (usually none): cloned, because a backward during the
        # task may accumulate into them in place
        self._grads = [
            (p, p.grad.detach().clone()) for p in model.parameters() if p.grad is not None
        ]
        self._handles: list[Any] = []
        backbone._focusvit_tuner = self
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            self._inject()
            for p in self._backbone_trainables():
                p.requires_grad_(True)
        except BaseException:
            self._restore()
            raise

    # ------------------------------------------------------------------ for subclasses
    @classmethod
    def not_applicable(cls, backbone: BackboneAdapter, config: TunerConfig) -> str:
        """Why the tuner cannot be applied to ``backbone`` ('' when it can)."""
        return ""

    def _backbone_trainables(self) -> list[nn.Parameter]:
        """Pretrained parameters the tuner trains (snapshotted and restored): the head."""
        return list(self._head.parameters()) if self._head is not None else []

    def _inject(self) -> None:
        """Add the tuner's parameters / hooks; they must end up with ``requires_grad=True``."""

    def _eject(self) -> None:
        """Undo :meth:`_inject` exactly."""

    # ------------------------------------------------------------------ public API
    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of everything trainable now, names as in ``backbone.model``."""
        self._check_alive()
        return [(n, p) for n, p in self.backbone.model.named_parameters() if p.requires_grad]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters to hand to the optimiser: the tuner's own and the head."""
        return [p for _, p in self.named_trainable_parameters()]

    def parameter_counts(self) -> dict[str, int]:
        """``{"trainable": ..., "total": ...}`` element counts; ``total`` counts every
        parameter of ``backbone.model`` including the tuner's own."""
        self._check_alive()
        params = list(self.backbone.model.parameters())
        return {
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "total": sum(p.numel() for p in params),
        }

    def set_head(self, head: nn.Module) -> None:
        """Replace the head for this task (e.g. one initialised from the support set) and make
        it trainable; the original head (or none) comes back on removal."""
        self._check_alive()
        self.backbone.replace_head(head)
        for p in head.parameters():
            p.requires_grad_(True)

    def merge(self) -> None:
        """Fold the tuner into the base weights for faster inference (LoRA). Linear and full
        have nothing to merge (no-op); SSF and VPT raise."""
        self._check_alive()
        if self.config.name not in ("linear", "full"):
            raise UnsupportedMethodError(
                f"merge applies to the 'lora' tuner (a no-op for 'linear' and 'full'); "
                f"{self.config.name!r} stays hooked in until remove()"
            )

    def unmerge(self) -> None:
        """Undo :meth:`merge`."""
        self._check_alive()

    def logits(self, x: Tensor) -> Tensor:
        return self.backbone.logits(x)

    def features(self, x: Tensor) -> Tensor:
        return self.backbone.features(x)

    @property
    def attention_prefix_tokens(self) -> int:
        """Tokens before the patch tokens in captured attention maps and block inputs:
        ``backbone.num_prefix_tokens + extra_prefix_tokens`` (= the adapter's
        ``num_tokens_before_patches`` while the tuner is active)."""
        return self.backbone.num_prefix_tokens + self.extra_prefix_tokens

    def remove(self) -> None:
        """Take the tuner out: the backbone is bit-identical to its state at apply time.
        Calling it again does nothing."""
        if self.removed:
            return
        self._restore()

    def __enter__(self) -> TunedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self.removed else "active"
        return f"{type(self).__name__}({self.config!r}, backbone={self.backbone.name!r}, {state})"

    # ------------------------------------------------------------------ internals
    def _check_alive(self) -> None:
        if self.removed:
            raise RuntimeError(
                f"this {self.config.name!r} tuner was removed; apply_tuner again for a new task"
            )

    def _restore(self) -> None:
        backbone = self.backbone if hasattr(self, "backbone") else None
        if backbone is not None:
            # drop every gradient of the task (for ``full`` a model-sized buffer, which would
            # also accumulate into the user's next backward); those of apply time come back below
            for p in backbone.model.parameters():
                p.grad = None
        try:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._eject()
        finally:
            if backbone is not None:
                backbone.set_inserted_tokens(0)  # no tuner inserts tokens any more
                if self._head is None:
                    backbone.remove_head()  # a head placed during the task on a headless model
                elif backbone.head is not self._head:
                    backbone.replace_head(self._head)
                with torch.no_grad():
                    for p, saved in self._saved:
                        p.copy_(saved)
                    for module, name, buffer, saved in self._buffers:
                        if module._buffers.get(name) is not buffer:
                            module._buffers[name] = buffer
                        buffer.copy_(saved)
                for p, grad in self._grads:
                    p.grad = grad
                for p, flag in self._flags:
                    p.requires_grad_(flag)
                for module, mode in self._modes:
                    module.training = mode
                backbone._focusvit_tuner = None
            self.removed = True
            self._saved = []
            self._grads = []


class LinearTuned(TunedModel):
    """Head only."""

    config_class = LinearConfig

    @classmethod
    def not_applicable(cls, backbone: BackboneAdapter, config: TunerConfig) -> str:
        if not backbone.head_name:
            return (
                "the model has no classification head; load it with "
                "load_backbone(spec, num_classes=K) or call backbone.set_head(nn.Linear(...)) first"
            )
        return ""


class FullTuned(TunedModel):
    """Every parameter."""

    config_class = FullConfig

    def _backbone_trainables(self) -> list[nn.Parameter]:
        return list(self.backbone.model.parameters())


def _implementations() -> dict[str, type[TunedModel]]:
    from .lora import LoraTuned
    from .ssf import SSFTuned
    from .vpt import VPTTuned

    return {
        "linear": LinearTuned,
        "full": FullTuned,
        "lora": LoraTuned,
        "ssf": SSFTuned,
        "vpt": VPTTuned,
    }


def applicable_tuners(backbone: BackboneAdapter) -> list[str]:
    """Names of the tuners that apply to ``backbone`` (with their default configs)."""
    impls = _implementations()
    return [name for name, cls in TUNERS.items() if not impls[name].not_applicable(backbone, cls())]


def apply_tuner(backbone: BackboneAdapter, config: TunerConfig | str, **kwargs: Any) -> TunedModel:
    """Apply a tuner to ``backbone`` in place, for one task.

    Args:
        backbone: the adapter (its ``model`` is modified in place until removal).
        config: a :class:`TunerConfig` or a tuner name (then ``kwargs`` build the config).

    Returns:
        The :class:`TunedModel`; use it as a context manager or call ``remove()`` at the end
        of the task.

    Raises:
        UnsupportedMethodError: the tuner does not apply to the model's family; the message
            lists the tuners that do.
    """
    if isinstance(config, str):
        config = make_tuner(config, **kwargs)
    elif kwargs:
        raise TypeError("pass options either in the config or as keyword arguments, not both")
    if not isinstance(config, TunerConfig) or config.name not in TUNERS:
        raise TypeError(f"expected a tuner config or name ({', '.join(TUNERS)}), got {config!r}")
    return _implementations()[config.name](backbone, config)


def iter_named_modules(model: nn.Module, names: Sequence[str]) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` for each exact dotted ``name`` in ``model``; a clear error if missing."""
    for name in names:
        try:
            yield name, model.get_submodule(name)
        except AttributeError:
            raise UnsupportedMethodError(
                f"{type(model).__name__} has no module named {name!r}"
            ) from None
