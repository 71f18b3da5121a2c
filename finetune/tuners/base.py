"""The tuner base: the config base class, the in-place :class:`TunedModel`, the batched variant
and the one registry of tuners (see ``docs/concepts/tuners.md``).

Every tuner lives in one module of this package (``linear``, ``full``, ``lora``, ``ssf``,
``vpt``) holding its config, its injection (a :class:`TunedModel` subclass) and, where several
tasks can be trained together, its :class:`BatchedVariant`; the module registers them once with
:func:`register` as a :class:`TunerSpec` whose capability flags are what the rest of
``focusvit.finetune`` asks (never the tuner's name).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import Tensor, nn

from focusvit.backbones.base import BackboneAdapter
from focusvit.checks import check_number
from focusvit.errors import ArgumentError, ConfigError, UnsupportedMethodError, UsageError

__all__ = [
    "SEQUENTIAL_FIX",
    "TUNERS",
    "BatchedVariant",
    "BatchingUnsupportedError",
    "TaskRouting",
    "TunedModel",
    "TunerConfig",
    "TunerSpec",
    "applicable_tuners",
    "apply_tuner",
    "check_flag",
    "check_number",
    "check_targets",
    "iter_named_modules",
    "make_tuner",
    "register",
    "tuner_spec",
    "tuner_specs",
]


# ----------------------------------------------------------------------------- config
@dataclass
class TunerConfig:
    """Base of the tuner configs. ``name`` is the registry key of the tuner."""

    name: ClassVar[str] = ""


def check_flag(value: Any, what: str, example: str) -> None:
    """Refuse ``value`` unless it is ``True`` or ``False`` (``"yes"``, 1 are no flags).

    Raises:
        ConfigError: naming ``what`` and the fix.
    """
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be True or False, got {value!r}; e.g. {example}")


def check_targets(value: Any, what: str, example: str) -> list[str] | None:
    """``value`` as a list of module names: ``None`` stays ``None``, a str becomes ``[str]``,
    a list / tuple must hold non-empty strs.

    Raises:
        ConfigError: anything else (a number, an empty list, a non-str entry), with the fix.
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        names = list(value)
        if names and all(isinstance(t, str) and t for t in names):
            return names
    raise ConfigError(
        f"{what} must be a module name or a non-empty list of module names, got {value!r:.80}; "
        f"e.g. {example}, or None for the adapter's"
    )


# ----------------------------------------------------------------------------- batched variant
#: the fix named by every refusal of the batched path
SEQUENTIAL_FIX = (
    "use the sequential path for it (TunerRunner.predict / fit_task one task at a time, i.e. "
    "tasks_per_batch=1)"
)


class BatchingUnsupportedError(UnsupportedMethodError):
    """These tasks cannot be fine-tuned in one batched computation; fine-tune them one at a time
    (the sequential path) instead. Raised before any training; the backbone is as it was."""


class TaskRouting(Protocol):
    """Which task each image of the current batched forward belongs to."""

    def current(self, batch: int, where: str) -> Tensor:
        """The task index ``(B,)`` of the ``batch`` images reaching the hook at ``where``."""
        ...


class BatchedVariant:
    """The batched form of a tuner (:func:`~focusvit.finetune.fit_predict_batched`).

    Each of the tuner's sites (a module it acts on) holds one trainable pair per task; the
    batched path stacks the T tasks' pairs along a new first dimension ``(T, ...)`` and applies
    them through a forward hook on the site that picks each image's own task row.
    """

    def site_names(self, backbone: BackboneAdapter, config: TunerConfig) -> list[str]:
        """Full module names of the sites, the same list the sequential tuner uses."""
        raise NotImplementedError

    def site_state(self, module: nn.Module, name: str) -> tuple[tuple[Tensor, Tensor], float]:
        """The applied (sequential) tuner's trainable pair at site ``name`` and a constant
        shared by every task (1.0 where the tuner has none).

        Raises:
            BatchingUnsupportedError: the site does not hold what the hook can stack.
        """
        raise NotImplementedError

    def hook(
        self, name: str, first: Tensor, second: Tensor, constant: float, routing: TaskRouting
    ) -> Callable[..., Any]:
        """A forward hook applying the stacked pair ``(T, ...)`` per image at site ``name``."""
        raise NotImplementedError

    def activation_bytes(self, backbone: BackboneAdapter, tokens: int) -> int:
        """Bytes one training image keeps for the backward on top of the frozen blocks'."""
        return 0


# ----------------------------------------------------------------------------- registry
#: ``"fold"``: merge() folds the update into the weights; ``"noop"``: nothing to merge;
#: ``"unsupported"``: the tuner stays hooked in until removal
MergeKind = Literal["fold", "noop", "unsupported"]


@dataclass(frozen=True)
class TunerSpec:
    """One registered tuner: its config, its injection and what it can do.

    Attributes:
        config: the config dataclass (``config.name`` is the tuner's name).
        tuned: the :class:`TunedModel` subclass that injects it.
        label: the name in messages (``"LoRA"``).
        trains_backbone: whether training changes the backbone's features (the linear probe
            trains only the head on frozen features: False).
        supports_attention_loss: whether the attention-enhancement loss can act on it.
        needs_peft: whether the injection runs on peft.
        random_options: config fields whose value > 0 draws random numbers during training
            (dropout); one batched forward cannot reproduce T separate forwards' masks.
        merge: what :meth:`TunedModel.merge` does (see :data:`MergeKind`).
        batched: the :class:`BatchedVariant`, or None when tasks are trained one at a time.
    """

    config: type[TunerConfig]
    tuned: type[TunedModel]
    label: str
    trains_backbone: bool = True
    supports_attention_loss: bool = True
    needs_peft: bool = False
    random_options: tuple[str, ...] = ()
    merge: MergeKind = "unsupported"
    batched: BatchedVariant | None = None

    @property
    def name(self) -> str:
        return self.config.name


_REGISTRY: dict[str, TunerSpec] = {}


def register(spec: TunerSpec) -> TunerSpec:
    """Add ``spec`` to the registry (once per tuner name) and return it."""
    if not spec.name or spec.name in _REGISTRY:
        raise ConfigError(
            f"a tuner named {spec.name!r} is already registered (or the name is empty); give "
            f"{spec.config.__name__} a name of its own"
        )
    if spec.tuned.config_class is not spec.config:
        raise ConfigError(
            f"{spec.tuned.__name__}.config_class must be {spec.config.__name__}; set it in the "
            "tuner's module"
        )
    _REGISTRY[spec.name] = spec
    return spec


def tuner_specs() -> list[TunerSpec]:
    """Every registered tuner, in registration order."""
    return list(_REGISTRY.values())


def tuner_spec(tuner: str | TunerConfig) -> TunerSpec:
    """The :class:`TunerSpec` of a tuner name or config.

    Raises:
        UnsupportedMethodError: an unknown name; the message lists the known ones.
    """
    name = tuner.name if isinstance(tuner, TunerConfig) else tuner
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnsupportedMethodError(f"unknown tuner {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


class _ConfigClasses(Mapping[str, type[TunerConfig]]):
    """Read-only view ``name -> config class`` of the registry."""

    def __getitem__(self, name: str) -> type[TunerConfig]:
        return _REGISTRY[name].config

    def __iter__(self) -> Iterator[str]:
        return iter(_REGISTRY)

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return f"TUNERS({', '.join(_REGISTRY)})"


#: ``name -> config class`` of every registered tuner (a view of the registry)
TUNERS: Mapping[str, type[TunerConfig]] = _ConfigClasses()


def make_tuner(name: str, **kwargs: Any) -> TunerConfig:
    """The config of tuner ``name`` (a key of :data:`TUNERS`) built from ``kwargs``."""
    config_class = tuner_spec(name).config
    known = [f.name for f in fields(config_class)]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        offered = f"its options are {', '.join(known)}" if known else "it takes no options"
        raise ArgumentError(
            f"bad options for tuner {name!r}: no option(s) {', '.join(map(repr, unknown))}; "
            f"{offered}: fix or drop them in tuner_options"
        )
    try:
        return config_class(**kwargs)
    except TypeError as error:
        raise ArgumentError(
            f"bad options for tuner {name!r}: {error}; options are {known}"
        ) from None


def _quoted(names: Sequence[str]) -> str:
    """``'a'``, ``'a' and 'b'``, ``'a', 'b' and 'c'``."""
    quoted = [repr(n) for n in names]
    return " and ".join(filter(None, [", ".join(quoted[:-1]), *quoted[-1:]]))


def _merge_refusal(name: str) -> str:
    fold = [s.name for s in _REGISTRY.values() if s.merge == "fold"]
    noop = [s.name for s in _REGISTRY.values() if s.merge == "noop"]
    return (
        f"merge applies to the {_quoted(fold)} tuner (a no-op for {_quoted(noop)}); "
        f"{name!r} stays hooked in until remove()"
    )


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
            raise ArgumentError(
                f"apply_tuner needs a BackboneAdapter (focusvit.load_backbone / adapt), got "
                f"{type(backbone).__name__}"
            )
        if getattr(backbone, "_focusvit_tuner", None) is not None:
            raise UsageError(
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
        """Fold the tuner into the base weights for faster inference (tuners registered with
        ``merge="fold"`` override this); a no-op for ``merge="noop"``, refused otherwise."""
        self._check_alive()
        if tuner_spec(self.config).merge != "noop":
            raise UnsupportedMethodError(_merge_refusal(self.config.name))

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
            raise UsageError(
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


def applicable_tuners(backbone: BackboneAdapter) -> list[str]:
    """Names of the tuners that apply to ``backbone`` (with their default configs)."""
    return [s.name for s in _REGISTRY.values() if not s.tuned.not_applicable(backbone, s.config())]


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
        raise ArgumentError("pass options either in the config or as keyword arguments, not both")
    if not isinstance(config, TunerConfig) or config.name not in _REGISTRY:
        raise ArgumentError(
            f"expected a TunerConfig or name ({', '.join(_REGISTRY)}), got {config!r}"
        )
    spec = _REGISTRY[config.name]
    if spec.needs_peft and importlib.util.find_spec("peft") is None:
        raise UnsupportedMethodError(
            f"the {spec.label} tuner runs on peft, which is not installed: pip install peft"
        )
    return spec.tuned(backbone, config)


def iter_named_modules(model: nn.Module, names: Sequence[str]) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` for each exact dotted ``name`` in ``model``; a clear error if missing."""
    for name in names:
        try:
            yield name, model.get_submodule(name)
        except AttributeError:
            raise UnsupportedMethodError(
                f"{type(model).__name__} has no module named {name!r}"
            ) from None
