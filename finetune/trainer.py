"""Per-task fine-tuning with position prompts (FORT, Wang, Jie, Deng, NeurIPS 2023).

``fit_task`` adapts a backbone to one few-shot task:

1. support features -> a head initialised from the support set (prototype / ridge / logistic),
   or, with ``head_init="text"``, the zero-shot head of a CLIP / SigLIP text tower;
2. position prompts of the support images, computed once with that head and kept fixed
   (columnar ViT: an explainer's patch scores -> top-P targets; Swin: per-window top-P);
3. a tuner (linear, full, LoRA, VPT, SSF) with a fresh copy of its parameters;
4. ``steps`` optimiser steps on the whole support set with
   ``CE(head(f(x)), y) + α · attention-enhancement loss``;
5. on exit, the backbone is restored bit-identically (tuner removed, head and flags restored).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from focusvit.backbones import BackboneAdapter
from focusvit.errors import ConfigError, NonFiniteError

from .attention_loss import (
    FortConfig,
    compute_loss,
    loss_capture,
    loss_layers,
    prompt_targets,
    resolve_fort,
)
from .heads import init_head, text_head
from .recipes import FitOptions, Recipe, fit_options, recipe_for
from .tuners import TunerConfig, apply_tuner, make_tuner, tuner_spec


@dataclass
class TaskModel:
    """The backbone tuned to one task (valid inside the ``fit_task`` block).

    Attributes:
        backbone: the adapted backbone (its head is the task head).
        losses: per step ``{"ce": float, "attn": float, "total": float}``.
        prompt_targets: ``(K, N)`` ViT prompt targets or per-stage Swin window targets.
        parameter_counts: ``{"trainable": int, "total": int}``.
    """

    backbone: BackboneAdapter
    recipe: Recipe
    fort: FortConfig | None
    losses: list[dict[str, float]] = field(default_factory=list)
    prompt_targets: Tensor | list[Tensor] | None = None
    parameter_counts: dict[str, int] = field(default_factory=dict)

    @torch.no_grad()
    def logits(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Task logits ``(Q, N_way)``, batched, in eval mode."""
        with self.backbone.evaluating(), _autocast(images.device):
            logits = torch.cat(
                [self.backbone.logits(chunk).float() for chunk in images.split(batch_size)]
            )
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteError(
                f"the tuned model gives non-finite (NaN/inf) logits on the queries after "
                f"{len(self.losses)} steps{_last_losses(self.losses)}: fine-tuning diverged; "
                f"{divergence_fix(self.recipe, self.fort)}"
            )
        return logits

    def predict(self, images: Tensor, batch_size: int = 64) -> Tensor:
        return self.logits(images, batch_size).argmax(dim=1)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _optimizer(recipe: Recipe, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=recipe.lr,
            momentum=recipe.momentum,
            dampening=recipe.dampening,
            weight_decay=recipe.weight_decay,
        )
    raise ConfigError(f"unknown optimizer {recipe.optimizer!r}; use 'adamw' or 'sgd'")


@torch.no_grad()
def support_features(backbone: BackboneAdapter, images: Tensor, batch_size: int = 64) -> Tensor:
    """Pooled features ``(M, D)`` in eval mode."""
    with backbone.evaluating(), _autocast(images.device):
        return torch.cat([backbone.features(chunk).float() for chunk in images.split(batch_size)])


@contextmanager
def fit_task(
    backbone: BackboneAdapter,
    images: Tensor,
    labels: Tensor,
    tuner: str | TunerConfig = "lora",
    fort: FortConfig | bool | None = None,
    options: FitOptions | None = None,
    tuner_options: dict | None = None,
    shared: dict | None = None,
    class_names: Sequence[str] | None = None,
    support_masks: Tensor | None = None,
    **option_overrides,
) -> Iterator[TaskModel]:
    """Fine-tune ``backbone`` on one support set; the tuned model is valid inside the block.

    Seed torch before calling it for a reproducible task; the global RNG is left as it was
    found (the task runs on a fork of it).

    Args:
        backbone: any adapter (weights are restored bit-identically on exit, also on error).
        images: ``(M, 3, H, W)`` preprocessed support images; labels ``(M,)`` in ``0..N-1``.
        tuner: ``linear``, ``full``, ``lora``, ``vpt``, ``ssf`` or a tuner config.
        fort: a :class:`FortConfig` (``None`` fields: the recipe's), ``True`` for the recipe,
            or None (plain fine-tuning).
        options: :class:`FitOptions` (recipe overrides, head init); keyword overrides
            (``lr=``, ``steps=``, ``head_init=`` ...) are merged into it.
        tuner_options: options of a tuner given by name (e.g. ``{"rank": 8}`` for LoRA).
        shared: a per-episode dict (``EpisodeData.shared``) in which the support features, the
            initial head and the position prompts, which depend only on the pretrained model
            and the support set, are kept for the other methods of the same episode.
        class_names: the task's class names, one per label ``0..N-1``; needed by
            ``head_init="text"`` (the text tower's zero-shot head), unused otherwise.
        support_masks: ``(M, H, W)`` object masks aligned with ``images`` (the same resize /
            crop: ``backbone.preprocess_masks(raw_masks)``); needed by
            ``FortConfig(prompts="ground_truth")``, unused otherwise.

    Example::

        with fit_task(backbone, xs, ys, tuner="lora", fort=FortConfig()) as task:
            accuracy = (task.predict(xq) == yq).float().mean()
    """
    check_support(images, labels)
    options = fit_options(options, option_overrides)
    # the task draws from torch's global RNG (tuner init, dropout, mini-batch order): fork it so
    # that the caller's stream is the same after the task as before (restored also on error)
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        config = (
            tuner if isinstance(tuner, TunerConfig) else make_tuner(tuner, **(tuner_options or {}))
        )
        recipe = recipe_for(backbone.family, config.name).override(**options.recipe_overrides())
        fort_config = resolve_fort(backbone, config.name, fort)
        labels = labels.to(images.device)
        head = _initial_head(backbone, images, labels, options.head_init, shared, class_names)
        if recipe.head_scale != 1.0:
            head = ScaledLinear.wrap(head, recipe.head_scale)
        original_head = backbone.head if backbone.head_name else None
        modes = {m: m.training for m in backbone.modules()}
        targets = None
        _swap_head(backbone, head)
        try:
            if fort_config is not None:
                targets = _prompt_targets(
                    backbone, images, labels, fort_config, options, shared, support_masks
                )
            with apply_tuner(backbone, config) as tuned:
                task = TaskModel(
                    backbone,
                    recipe,
                    fort_config,
                    prompt_targets=targets,
                    parameter_counts=tuned.parameter_counts(),
                )
                _train(task, tuned, images, labels)
                yield task
        finally:
            _restore_head(backbone, original_head)
            for module, mode in modes.items():
                module.train(mode)


def check_support(images: Tensor, labels: Tensor) -> None:
    """Refuse a support set fine-tuning cannot use, with the fix: ``images`` must be a
    non-empty float batch ``(M, 3, H, W)`` (preprocessed), ``labels`` ``(M,)`` integers
    ``0..N-1`` with every class present (a class without a support image cannot be learned
    and would still be predicted)."""
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        what = (
            f"{images.dtype} tensor of shape {tuple(images.shape)}"
            if isinstance(images, Tensor)
            else type(images).__name__
        )
        raise ConfigError(
            f"support images must be a float batch (M, 3, H, W), got a {what}; preprocess them "
            "with backbone.preprocess(images) (uint8 pixels are not normalised)"
        )
    if images.shape[0] == 0:
        raise ConfigError("the support set is empty; pass at least one image per class")
    if not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images)).flatten(1).any(dim=1).sum())
        raise NonFiniteError(
            f"{bad} of {images.shape[0]} support images hold NaN/inf values; preprocess finite "
            "pixels with backbone.preprocess(images) (check the image files or the tensors passed)"
        )
    if (
        not isinstance(labels, Tensor)
        or labels.ndim != 1
        or labels.is_floating_point()
        or labels.dtype == torch.bool
    ):
        what = (
            f"a {labels.dtype} tensor of shape {tuple(labels.shape)}"
            if isinstance(labels, Tensor)
            else f"a {type(labels).__name__}"
        )
        raise ConfigError(
            f"support labels must be a 1-d integer tensor, got {what}; e.g. "
            "torch.tensor([0, 1, 2, 0, 1, 2])"
        )
    if labels.shape[0] != images.shape[0]:
        raise ConfigError(
            f"{images.shape[0]} support images but {labels.shape[0]} labels; pass one label per image"
        )
    present = sorted(set(labels.tolist()))
    n_way = present[-1] + 1
    if present[0] < 0 or len(present) != n_way:
        missing = sorted(set(range(max(n_way, 0))) - set(present))
        raise ConfigError(
            f"support labels must be 0..N-1 with every class present, got classes {present}"
            + (f" (missing {missing})" if missing else "")
            + "; relabel the classes consecutively from 0"
        )


class ScaledLinear(torch.nn.Linear):
    """A linear head stored ×``scale`` whose output is divided by ``scale`` (official FORT
    for LoRA, SSF and VPT with scale 20): the same logits, but under Adam the effective step on
    the head is ``scale`` times smaller. Shapes as :class:`torch.nn.Linear`."""

    logit_divisor: float = 1.0

    @classmethod
    def wrap(cls, head: torch.nn.Linear, scale: float) -> ScaledLinear:
        scaled = cls(head.in_features, head.out_features, bias=head.bias is not None,
                     device="meta", dtype=head.weight.dtype)  # fmt: skip
        scaled = scaled.to_empty(device=head.weight.device)
        with torch.no_grad():
            scaled.weight.copy_(head.weight * scale)
            if head.bias is not None:
                scaled.bias.copy_(head.bias * scale)
        scaled.logit_divisor = float(scale)
        return scaled

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) / self.logit_divisor


def _memo(shared: dict | None, key: tuple, compute):
    if shared is None:
        return compute()
    if key not in shared:
        shared[key] = compute()
    return shared[key]


def _initial_head(
    backbone: BackboneAdapter,
    images: Tensor,
    labels: Tensor,
    method: str,
    shared: dict | None,
    class_names: Sequence[str] | None = None,
) -> torch.nn.Linear:
    """The support-set head (a fresh copy: training changes it), computed once per episode;
    ``method="text"``: the text tower's head over ``class_names``."""
    where = (id(backbone), tuple(images.shape), str(images.device))
    if method == "text":
        names = _text_head_names(labels, class_names)
        head = _memo(shared, ("head", "text", names, *where), lambda: text_head(backbone, names))
        return copy.deepcopy(head)
    features = _memo(
        shared, ("support_features", *where), lambda: support_features(backbone, images)
    )
    head = _memo(
        shared, ("head", method, *where), lambda: init_head(features, labels, method=method)
    )
    return copy.deepcopy(head)


def _text_head_names(labels: Tensor, class_names: Sequence[str] | None) -> tuple[str, ...]:
    """The class names of ``head_init="text"``, one per label, or a one-line error."""
    n_way = int(labels.max()) + 1
    if class_names is None or isinstance(class_names, str) or len(class_names) != n_way:
        got = "none" if class_names is None else repr(class_names)
        raise ConfigError(
            f"head_init='text' builds the head from the task's class names: pass "
            f"fit_task(..., class_names=[...]) with one name per label 0..{n_way - 1} (got {got})"
        )
    return tuple(str(name) for name in class_names)


def _prompt_targets(
    backbone: BackboneAdapter,
    images: Tensor,
    labels: Tensor,
    fort: FortConfig,
    options: FitOptions,
    shared: dict | None,
    support_masks: Tensor | None = None,
) -> Tensor | list[Tensor]:
    """Position prompts of the support set with the task head in place, once per episode and
    prompt setting (:func:`~focusvit.finetune.attention_loss.prompt_targets`)."""
    key = (
        "prompts", id(backbone), tuple(images.shape), str(images.device), options.head_init,
        fort.prompts, fort.explainer, fort.top_k, fort.top_fraction, fort.weighting,
    )  # fmt: skip
    return _memo(shared, key, lambda: prompt_targets(backbone, images, labels, fort, support_masks))


def _swap_head(backbone: BackboneAdapter, head: torch.nn.Module) -> None:
    """Put the support-set head ``(B, D) -> (B, N_way)`` in place, also on a model loaded with
    ``num_classes=0`` (the adapter creates the head slot; it raises UnsupportedMethodError,
    naming the fix, when the family has none)."""
    backbone.replace_head(head)


def _restore_head(backbone: BackboneAdapter, original: torch.nn.Module | None) -> None:
    """Put the pretrained head back, or remove the task head when the model had none."""
    if original is not None:
        backbone.replace_head(original)
    else:
        backbone.remove_head()


def _train(task: TaskModel, tuned, images: Tensor, labels: Tensor) -> None:
    """Train the tuner's parameters on the support set; their gradients are dropped afterwards
    (also on error), so the tuned model holds none inside the ``fit_task`` block (for ``full``
    they would be one more copy of the model)."""
    params = list(tuned.trainable_parameters())
    try:
        _train_steps(task, tuned, params, images, labels)
    finally:
        for p in params:
            p.grad = None


def _train_steps(task: TaskModel, tuned, params: list, images: Tensor, labels: Tensor) -> None:
    backbone, recipe, fort = task.backbone, task.recipe, task.fort
    optimizer = _optimizer(recipe, params)
    if not tuner_spec(tuned.config).trains_backbone and fort is None:
        _train_head_on_features(task, optimizer, support_features(backbone, images), labels)
        return
    backbone.train()
    if fort is not None and fort.alpha == 0:
        fort = None  # alpha 0 trains exactly as plain fine-tuning (no attention capture)
    layers = loss_layers(backbone, fort) if fort is not None else []
    n_way = int(labels.max()) + 1
    for _ in range(recipe.steps):
        for batch in support_batches(len(labels), n_way, labels.device):
            targets = _select_targets(task.prompt_targets, batch)
            step_images = images if batch is None else images[batch]
            step_labels = labels if batch is None else labels[batch]
            task.losses.append(
                training_step(backbone, optimizer, step_images, step_labels, fort, targets, layers)
            )
            check_finite_step(len(task.losses), task.losses[-1], params, recipe, task.fort)
    backbone.eval()


def support_batches(size: int, n_way: int, device: torch.device) -> list[Tensor | None]:
    """One epoch's mini-batches of ``n_way`` support images (official FORT): reshuffled every
    epoch, so K-shot takes K steps per epoch; at 1-shot the whole support set is one batch
    (``None``, no shuffle drawn)."""
    if size <= n_way:
        return [None]
    return list(torch.randperm(size).to(device).split(n_way))


def _select_targets(targets, batch: Tensor | None):
    if targets is None or batch is None:
        return targets
    if isinstance(targets, list):  # Swin: per stage (M, windows, n)
        return [t[batch] for t in targets]
    return targets[batch]


def training_step(
    backbone: BackboneAdapter,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    fort: FortConfig | None = None,
    prompt_targets: Tensor | list[Tensor] | None = None,
    layers: list[int] | None = None,
) -> dict[str, float]:
    """One optimiser step on the support set: ``CE + α · attention loss`` (Wang, Jie, Deng,
    NeurIPS 2023; ``docs/concepts/loss.md``).

    Args:
        images: ``(M, 3, H, W)`` support batch; labels ``(M,)``.
        fort: attention-loss settings, or None for plain cross-entropy.
        prompt_targets: the fixed prompts (``(M, N)`` ViT, per-stage window targets for Swin).
        layers: blocks whose attention logits the loss reads (only these compute explicit
            attention; default :func:`~focusvit.finetune.attention_loss.loss_layers`).

    Returns:
        ``{"ce", "attn", "total"}`` as floats.
    """
    optimizer.zero_grad(set_to_none=True)
    if fort is not None and layers is None:
        layers = loss_layers(backbone, fort)
    with loss_capture(backbone, fort, layers) as record, _autocast(images.device):
        logits = backbone.logits(images).float()
        ce = F.cross_entropy(logits, labels)
        attn = (
            compute_loss(backbone, fort, record, prompt_targets).float()
            if fort is not None
            else ce.new_zeros(())
        )
    total = ce + (fort.alpha if fort is not None else 0.0) * attn
    total.backward()
    optimizer.step()
    return {"ce": float(ce.detach()), "attn": float(attn.detach()), "total": float(total.detach())}


def _train_head_on_features(
    task: TaskModel, optimizer: torch.optim.Optimizer, features: Tensor, labels: Tensor
) -> None:
    """Linear probe: the backbone is frozen, so its eval-mode features ``(M, D)`` are computed
    once and only the head runs at every step (the same updates as a full forward per step)."""
    head = task.backbone.head
    head.train()
    for _ in range(task.recipe.steps):
        optimizer.zero_grad(set_to_none=True)
        ce = F.cross_entropy(head(features).float(), labels)
        ce.backward()
        optimizer.step()
        loss = float(ce.detach())
        task.losses.append({"ce": loss, "attn": 0.0, "total": loss})
        check_finite_step(len(task.losses), task.losses[-1], list(head.parameters()), task.recipe)
    head.eval()


def divergence_fix(recipe: Recipe, fort: FortConfig | None) -> str:
    """The settings to change after a diverged fine-tuning, with their current values."""
    fix = f"lower the learning rate (lr={recipe.lr:g} now; try lr={recipe.lr / 10:g})"
    if fort is not None and fort.alpha:
        fix += f" or the attention-loss weight (alpha={fort.alpha:g} now)"
    return fix


def _last_losses(losses: list[dict[str, float]]) -> str:
    """`` (last loss ce=..., attn=..., total=...)`` or nothing before the first step."""
    if not losses:
        return ""
    return " (last loss " + ", ".join(f"{k}={v:.4g}" for k, v in losses[-1].items()) + ")"


def nonfinite_parameters(params: Sequence[Tensor]) -> int:
    """How many of ``params`` hold a NaN or inf (one device sync for all of them)."""
    if not params:
        return 0
    flags = torch.stack([~torch.isfinite(p.detach()).all() for p in params])
    return int(flags.sum())


def check_finite_step(
    step: int,
    loss: dict[str, float],
    params: Sequence[Tensor],
    recipe: Recipe,
    fort: FortConfig | None = None,
    task: str = "",
) -> None:
    """Stop a diverged fine-tuning: raise :class:`NonFiniteError` when the loss terms of step
    ``step`` (1-based) or a trainable parameter after it are NaN or inf.

    Args:
        loss: ``{"ce", "attn", "total"}`` of the step; params: the trainable tensors after it.
        task: a prefix naming the task (batched path), e.g. ``"task 2: "``.
    """
    bad_loss = not all(math.isfinite(value) for value in loss.values())
    bad_params = 0 if bad_loss else nonfinite_parameters(params)
    if not bad_loss and not bad_params:
        return
    terms = ", ".join(f"{k}={v:.4g}" for k, v in loss.items())
    what = (
        "the loss is not finite"
        if bad_loss
        else f"{bad_params} trainable parameter tensor(s) became NaN/inf"
    )
    raise NonFiniteError(
        f"{task}fine-tuning diverged at step {step}: {what} (loss {terms}); "
        f"{divergence_fix(recipe, fort)}"
    )
