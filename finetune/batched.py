"""Several few-shot tasks fine-tuned in one batched computation (docs/benchmarks.md: "several
tasks fine-tuned in one batched computation where the tuner allows it").

:func:`fit_predict_batched` gives, for each task ``t``, what
``torch.manual_seed(seeds[t]); TunerRunner(...).predict(supports[t], support_labels[t],
queries[t])`` gives (the same computation; results equal up to float rounding, see
:func:`fit_predict_batched`), but trains the T tasks together:

1. **Initial state, per task, by the sequential code itself.** For each task the global RNG is
   seeded with ``seeds[t]`` and :func:`~focusvit.finetune.trainer.fit_task` runs with
   ``steps=0``: support features -> head init -> head swap (timm's ``reset_classifier`` draws
   from the RNG on a model without head) -> position prompts -> ``apply_tuner`` (peft's LoRA
   init / SSF's ones and zeros). Inside that block the initial head, the tuner tensors and the
   prompt targets are copied out; leaving it removes the tuner and restores the head. So the
   initial parameters are those of the sequential path by construction, not by re-implementation.
2. **Training.** The T support sets are concatenated into one batch ``(ΣM_t, 3, H, W)`` through
   the frozen backbone (no tuner injected, no head used: :meth:`features`). Forward hooks on the
   tuner's sites add each image's own task parameters, selected by a per-image task index:

   - LoRA: on each targeted linear ``out += s · (x A_tᵀ) B_tᵀ`` with stacked ``A (T, r, d_in)``,
     ``B (T, d_out, r)`` and peft's scaling ``s``, as two batched matmuls;
   - SSF: on each site ``out = out · γ_t + β_t`` with stacked ``γ, β (T, C)``;

   the hooks are prepended, so the attention capture of the loss sees the tuned q/k as in the
   sequential path. Heads are stacked ``W (T, C, D)``, ``b (T, C)`` and applied by ``baddbmm``.
   The loss is ``Σ_t [CE_t + α · attn_t]`` with each task's own mean cross-entropy and attention
   loss (on its own images' attention maps and prompts), so each task's parameters get exactly
   their sequential gradient; one AdamW / SGD over the stacked tensors equals T optimisers
   (both are elementwise and every task takes the same number of steps). Same recipe, same steps.
3. **Predictions.** The queries of all tasks in eval mode, in chunks of whole tasks, with the
   same hooks and stacked heads.

The backbone is bit-identical afterwards (hooks removed, ``requires_grad`` and training flags
restored, also on error) and no ``.grad`` is left on its parameters. The caller's global RNG
state is restored as well (the per-task seeding happens in a forked RNG).

Only LoRA and SSF on columnar ViTs are batched; anything else raises
:class:`BatchingUnsupportedError` (an :class:`~focusvit.errors.UnsupportedMethodError`) naming
the fix: fine-tune those tasks one at a time with the sequential path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusvit.backbones import BackboneAdapter
from focusvit.checks import is_number
from focusvit.errors import ConfigError, NonFiniteError, UsageError

from .attention_loss import FortConfig, compute_loss, loss_capture, loss_layers
from .recipes import FitOptions, recipe_for
from .trainer import (
    _autocast,
    _optimizer,
    check_finite_step,
    fit_task,
)
from .tuners import (
    SEQUENTIAL_FIX,
    BatchedVariant,
    BatchingUnsupportedError,
    TunerConfig,
    make_tuner,
    tuner_spec,
    tuner_specs,
)

__all__ = [
    "BATCHED_TUNERS",
    "BatchingUnsupportedError",
    "activation_bytes_per_image",
    "available_memory",
    "check_batchable",
    "fit_predict_batched",
    "tasks_per_batch",
]

#: tuners whose per-task parameters can be stacked and applied per image by hooks (those
#: registered with a batched variant)
BATCHED_TUNERS = tuple(spec.name for spec in tuner_specs() if spec.batched is not None)

_SEQUENTIAL = SEQUENTIAL_FIX


# ----------------------------------------------------------------------------- checks
def _stochastic_layers(model: nn.Module) -> list[str]:
    """Modules that draw random numbers in train mode (dropout / drop-path with p > 0)."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            rate = module.p
        else:
            rate = max(
                (
                    float(value)
                    for attr in ("drop_prob", "dropout_prob", "attention_dropout")
                    if is_number(value := getattr(module, attr, None))
                ),
                default=0.0,
            )
        if rate > 0:
            found.append(name or type(module).__name__)
    return found


def check_batchable(backbone: BackboneAdapter, tuner: TunerConfig) -> None:
    """Raise :class:`BatchingUnsupportedError` (naming the fix) unless ``tuner`` on ``backbone``
    can be batched: a tuner with a batched variant (LoRA, SSF) on a columnar ViT, without
    random options (LoRA dropout) or dropout / drop-path layers (random masks of one batched
    forward differ from those of T separate forwards)."""
    name = getattr(tuner, "name", str(tuner))
    if name not in BATCHED_TUNERS:
        raise BatchingUnsupportedError(
            f"tuner {name!r} cannot be fine-tuned for several tasks in one batched computation "
            f"(batched tuners: {', '.join(BATCHED_TUNERS)}); {_SEQUENTIAL}"
        )
    if backbone.family != "vit":
        raise BatchingUnsupportedError(
            f"batched fine-tuning supports columnar ViTs; {backbone.name} is a "
            f"{backbone.family!r} model: {_SEQUENTIAL}"
        )
    _check_random_options(name, tuner)
    stochastic = _stochastic_layers(backbone.model)
    if stochastic:
        shown = ", ".join(stochastic[:3]) + (" ..." if len(stochastic) > 3 else "")
        raise BatchingUnsupportedError(
            f"{backbone.name} has dropout / drop-path layers with p > 0 ({shown}) whose random "
            f"masks differ between one batched and separate forwards; {_SEQUENTIAL}"
        )


def _check_random_options(name: str, tuner: TunerConfig | str) -> None:
    """Refuse a config whose random options (the spec's ``random_options``, e.g. dropout) are
    set: one batched forward cannot reproduce T separate forwards' random masks."""
    spec = tuner_spec(name)
    config = make_tuner(name) if isinstance(tuner, str) else tuner
    for option in spec.random_options:
        value = getattr(config, option, 0.0)
        if value > 0:
            raise BatchingUnsupportedError(
                f"{spec.label} {option} {value} draws random masks that one batched forward "
                f"cannot reproduce per task: set {option}=0, or {_SEQUENTIAL}"
            )


def _variant(tuner: TunerConfig) -> BatchedVariant:
    """The tuner's batched variant (after :func:`check_batchable`)."""
    variant = tuner_spec(tuner).batched
    if variant is None:
        raise BatchingUnsupportedError(
            f"tuner {tuner.name!r} has no batched variant; {_SEQUENTIAL}"
        )
    return variant


def _check_inputs(
    supports: Sequence[Tensor],
    support_labels: Sequence[Tensor],
    queries: Sequence[Tensor],
    seeds: Sequence[int],
) -> None:
    counts = {len(supports), len(support_labels), len(queries), len(seeds)}
    if len(counts) != 1 or not supports:
        raise ConfigError(
            "give one support set, label vector, query set and seed per task (and at least one "
            f"task); got {len(supports)} supports, {len(support_labels)} label vectors, "
            f"{len(queries)} query sets and {len(seeds)} seeds"
        )
    shape = tuple(supports[0].shape[1:])
    for t, (support, labels, query) in enumerate(
        zip(supports, support_labels, queries, strict=True)
    ):
        if support.ndim != 4 or query.ndim != 4:
            raise ConfigError(
                f"task {t}: supports and queries must be (M, 3, H, W) image batches, got "
                f"{tuple(support.shape)} and {tuple(query.shape)}"
            )
        if tuple(support.shape[1:]) != shape or tuple(query.shape[1:]) != shape:
            raise BatchingUnsupportedError(
                f"task {t}: images of {tuple(support.shape[1:])} / {tuple(query.shape[1:])} do "
                f"not match task 0's {shape}; one batch needs one image size: preprocess all "
                f"tasks alike, or {_SEQUENTIAL}"
            )
        if labels.shape != (support.shape[0],):
            raise ConfigError(
                f"task {t}: labels {tuple(labels.shape)} do not match {support.shape[0]} support "
                "images; expected (M,)"
            )


# ----------------------------------------------------------------------------- initial state
@dataclass
class _TaskInit:
    """One task's initial trainable state, copied out of the sequential initialisation.

    Attributes:
        head: ``(weight (C, D), bias (C,))``.
        sites: per tuner site name, the tuner's trainable pair there
            (:meth:`~focusvit.finetune.tuners.BatchedVariant.site_state`): LoRA
            ``(A (r, d_in), B (d_out, r))``; SSF ``(scale (C,), shift (C,))``.
        constants: per site, the constant shared by every task (LoRA: peft's
            ``lora_alpha / r``; SSF: 1.0).
        targets: ``(M, N)`` prompt targets, or None without the attention loss.
        fort: the resolved attention-loss settings (None: plain cross-entropy).
        trainable: the sequential path's trainable parameter count.
    """

    head: tuple[Tensor, Tensor]
    sites: dict[str, tuple[Tensor, Tensor]]
    constants: dict[str, float] = field(default_factory=dict)
    targets: Tensor | None = None
    fort: FortConfig | None = None
    trainable: int = 0
    divisor: float = 1.0


def _site_names(backbone: BackboneAdapter, tuner: TunerConfig) -> list[str]:
    """Full module names the tuner acts on (the same lists the tuners themselves use)."""
    return _variant(tuner).site_names(backbone, tuner)


def _initial_state(
    backbone: BackboneAdapter,
    support: Tensor,
    labels: Tensor,
    tuner: TunerConfig,
    fort: FortConfig | bool | None,
    options: FitOptions,
    sites: list[str],
    shared: dict | None,
    support_masks: Tensor | None = None,
) -> _TaskInit:
    """Run the sequential initialisation (``fit_task`` with 0 steps) and copy its state out."""
    extra: dict[str, Any] = {} if shared is None else {"shared": shared}
    if support_masks is not None:
        extra["support_masks"] = support_masks
    with fit_task(
        backbone, support, labels, tuner=tuner, fort=fort, options=replace(options, steps=0),
        **extra,
    ) as task:  # fmt: skip
        model = backbone.model
        head = backbone.head
        if not isinstance(head, nn.Linear) or head.bias is None:
            raise BatchingUnsupportedError(
                f"the task head is a {type(head).__name__}, not a linear layer with bias; "
                f"{_SEQUENTIAL}"
            )
        known = [head.weight, head.bias]
        state: dict[str, tuple[Tensor, Tensor]] = {}
        constants: dict[str, float] = {}
        variant = _variant(tuner)
        for name in sites:
            pair, constants[name] = variant.site_state(model.get_submodule(name), name)
            known.extend(pair)
            state[name] = (pair[0].detach().clone(), pair[1].detach().clone())
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        ids = {id(p) for p in known}
        unknown = [n for n, p in trainable if id(p) not in ids]
        if unknown or len(trainable) != len(ids):
            raise BatchingUnsupportedError(
                f"the {tuner.name} tuner trains parameters the batched path does not stack "
                f"({', '.join(unknown[:3]) or 'a parameter count mismatch'}); {_SEQUENTIAL}"
            )
        targets = task.prompt_targets
        if targets is not None and not isinstance(targets, Tensor):
            raise BatchingUnsupportedError(f"per-window (Swin) prompt targets; {_SEQUENTIAL}")
        return _TaskInit(
            head=(head.weight.detach().clone(), head.bias.detach().clone()),
            divisor=float(getattr(head, "logit_divisor", 1.0)),
            sites=state,
            constants=constants,
            targets=None if targets is None else targets.detach().clone(),
            fort=task.fort,
            trainable=int(task.parameter_counts.get("trainable", 0)),
        )


# ----------------------------------------------------------------------------- hooks
class _Routing:
    """Which task each image of the current forward belongs to: ``index (B,)``."""

    index: Tensor | None = None
    #: the task heads' logit divisor (the ×20 head scaling of LoRA / SSF / VPT; 1 otherwise)
    divisor: float = 1.0

    def current(self, batch: int, where: str) -> Tensor:
        index = self.index
        if index is None or index.shape[0] != batch:
            raise UsageError(
                f"batched tuner hook at {where} got a batch of {batch} images but "
                f"{None if index is None else index.shape[0]} task indices; run the backbone "
                "only through fit_predict_batched while its hooks are in place"
            )
        return index


def _task_logits(features: Tensor, weight: Tensor, bias: Tensor, index: Tensor) -> Tensor:
    """Logits ``(B, C)`` of pooled features ``(B, D)`` through each image's task head
    (``weight (T, C, D)``, ``bias (T, C)``, ``index (B,)``)."""
    out = torch.baddbmm(
        bias[index].unsqueeze(1), features.unsqueeze(1), weight[index].transpose(1, 2)
    )
    return out.squeeze(1)


def _task_index(sizes: Sequence[int], device: torch.device, tasks: Sequence[int]) -> Tensor:
    ids = torch.as_tensor(list(tasks), device=device)
    return torch.repeat_interleave(ids, torch.as_tensor(list(sizes), device=device))


def _fork_rng(device: torch.device):
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.random.fork_rng(devices=[index])
    return torch.random.fork_rng(devices=[])


# ----------------------------------------------------------------------------- main entry
def fit_predict_batched(
    backbone: BackboneAdapter,
    supports: list[Tensor],
    support_labels: list[Tensor],
    queries: list[Tensor],
    tuner: TunerConfig | str,
    fort: FortConfig | bool | None,
    options: FitOptions | None,
    seeds: list[int],
    *,
    shared: Sequence[dict | None] | None = None,
    predict_batch_size: int = 256,
    support_masks: Sequence[Tensor | None] | None = None,
) -> list[tuple[Tensor, dict]]:
    """Fine-tune T few-shot tasks in one batched computation and predict their queries.

    Equals, per task ``t``, ``torch.manual_seed(seeds[t])`` followed by
    ``TunerRunner(backbone, tuner, fort, options, device).predict(supports[t],
    support_labels[t], queries[t])``, see the module docstring (docs/benchmarks.md): the same
    initial parameters, gradients and optimiser updates, so predictions and losses agree up to
    float rounding. Rounding differs because the backbone's matmuls see a larger batch: on the
    tiny test models final losses agree to ~1e-6 relative; on DINOv2-S/14 (112 px, 5-way
    1-shot, recipe steps) to ~1e-4 for LoRA and ~3e-3 for plain SSF, whose 10 Adam steps amplify
    rounding (one query in 300 flipped) -- the same spread as the sequential path itself run
    with 1 instead of 2 threads.

    Args:
        backbone: a columnar ViT adapter (restored bit-identically, also on error).
        supports: per task ``(M_t, 3, H, W)`` preprocessed support images (one H, W for all).
        support_labels: per task ``(M_t,)`` labels in ``0..C-1``; every task has the same C.
        queries: per task ``(Q_t, 3, H, W)`` preprocessed query images.
        tuner: a :class:`~focusvit.finetune.LoraConfig` or :class:`~focusvit.finetune.SSFConfig`
            (or the name ``"lora"`` / ``"ssf"``).
        fort: the attention-enhancement loss (:class:`FortConfig`, ``True`` for the recipe) or
            None, as for the sequential path.
        options: recipe overrides and head init (:class:`FitOptions`; None: the defaults).
        seeds: per task, the torch seed the sequential path would be started with.
        shared: optional per-task ``EpisodeData.shared`` caches handed to ``fit_task``.
        support_masks: optional per-task ``(M_t, H, W)`` object masks handed to ``fit_task``
            (needed by ``FortConfig(prompts="ground_truth")``).
        predict_batch_size: query images per eval forward (whole tasks per chunk; at least one
            task).

    Returns:
        per task ``(predictions (Q_t,), {"final_loss": {"ce", "attn", "total"} | None,
        "trainable": int})``, like :meth:`TunerRunner.predict`.

    Raises:
        BatchingUnsupportedError: tuner, family, dropout or inputs that cannot be batched; the
            message names the fix (the sequential path). Raised before any training step, with
            the backbone as it was.
    """
    tuner = make_tuner(tuner) if isinstance(tuner, str) else tuner
    options = options or FitOptions()
    check_batchable(backbone, tuner)
    _check_inputs(supports, support_labels, queries, seeds)
    if shared is not None and len(shared) != len(supports):
        raise ConfigError(f"shared has {len(shared)} entries for {len(supports)} tasks")
    if support_masks is not None and len(support_masks) != len(supports):
        raise ConfigError(
            f"support_masks has {len(support_masks)} entries for {len(supports)} tasks; pass one "
            "(M_t, H, W) mask batch per task"
        )
    device = supports[0].device
    recipe = recipe_for(backbone.family, tuner.name).override(**options.recipe_overrides())
    sites = _site_names(backbone, tuner)
    inits: list[_TaskInit] = []
    with _fork_rng(device):
        for t in range(len(supports)):
            torch.manual_seed(seeds[t])
            inits.append(
                _initial_state(
                    backbone, supports[t], support_labels[t].to(device), tuner, fort, options,
                    sites, None if shared is None else shared[t],
                    None if support_masks is None else support_masks[t],
                )
            )  # fmt: skip
    if any(len(y) > int(y.max()) + 1 for y in support_labels):
        raise BatchingUnsupportedError(
            "K-shot tasks with K > 1 train on reshuffled mini-batches of n_way images (official "
            f"FORT), which the batched path does not replicate; batch 1-shot tasks, or {_SEQUENTIAL}"
        )
    shapes = {tuple(init.head[0].shape) for init in inits}
    if len(shapes) != 1:
        raise BatchingUnsupportedError(
            f"the tasks' heads have different shapes {sorted(shapes)} (different numbers of "
            f"classes); batch tasks of the same way only, or {_SEQUENTIAL}"
        )
    return _train_and_predict(
        backbone, supports, support_labels, queries, tuner, recipe, inits, sites,
        predict_batch_size,
    )  # fmt: skip


def _stack(tensors: Sequence[Tensor]) -> Tensor:
    return torch.stack(list(tensors)).requires_grad_(True)


def _train_and_predict(
    backbone: BackboneAdapter,
    supports: Sequence[Tensor],
    support_labels: Sequence[Tensor],
    queries: Sequence[Tensor],
    tuner: TunerConfig,
    recipe,
    inits: list[_TaskInit],
    sites: list[str],
    predict_batch_size: int,
) -> list[tuple[Tensor, dict]]:
    device = supports[0].device
    count = len(inits)
    fort = inits[0].fort
    weight = _stack([init.head[0] for init in inits])  # (T, C, D)
    bias = _stack([init.head[1] for init in inits])  # (T, C)
    stacks = {
        name: (_stack([i.sites[name][0] for i in inits]), _stack([i.sites[name][1] for i in inits]))
        for name in sites
    }  # LoRA: A (T, r, d_in), B (T, d_out, r); SSF: scale, shift (T, C)
    params = [weight, bias, *(p for pair in stacks.values() for p in pair)]
    optimizer = _optimizer(recipe, params)  # type: ignore[arg-type]

    routing = _Routing()
    routing.divisor = inits[0].divisor
    model = backbone.model
    handles = []
    modes = {m: m.training for m in backbone.modules()}
    results: list[tuple[Tensor, dict]] = []
    variant = _variant(tuner)
    try:
        for name, (first, second) in stacks.items():
            hook = variant.hook(name, first, second, inits[0].constants[name], routing)
            # prepend: the attention capture's hooks on q/k see the tuned output, as they see
            # peft's LoRA layer / SSF's own prepended hook in the sequential path
            handles.append(model.get_submodule(name).register_forward_hook(hook, prepend=True))
        with backbone.frozen():
            sizes = [s.shape[0] for s in supports]
            images = torch.cat(list(supports))
            labels = torch.cat([y.to(device) for y in support_labels])
            routing.index = _task_index(sizes, device, range(count))
            losses: list[list[dict[str, float]]] = [[] for _ in range(count)]
            backbone.train()
            layers = loss_layers(backbone, fort) if fort is not None else []
            targets = [init.targets for init in inits]
            for number in range(1, recipe.steps + 1):
                step = _batched_step(
                    backbone, optimizer, images, labels, sizes, routing, weight, bias, fort,
                    targets, layers,
                )  # fmt: skip
                for t in range(count):
                    losses[t].append(step[t])
                _check_finite_tasks(number, step, params, recipe, fort)
            backbone.eval()
            predictions = _predict(
                backbone, queries, routing, weight.detach(), bias.detach(), predict_batch_size
            )
        for t, init in enumerate(inits):
            info = {"final_loss": losses[t][-1] if losses[t] else None, "trainable": init.trainable}
            results.append((predictions[t], info))
    finally:
        routing.index = None
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
        optimizer.zero_grad(set_to_none=True)
    return results


def _check_finite_tasks(
    step: int, losses: list[dict[str, float]], params: list[Tensor], recipe, fort
) -> None:
    """Raise :class:`~focusvit.errors.NonFiniteError` naming the first task whose loss terms
    at ``step`` or whose parameters (row ``t`` of every stacked ``(T, ...)`` tensor) after it
    are NaN or inf (one device sync for all tasks); the caller stops the whole batch (the
    evaluation loop then runs its tasks one by one)."""
    bad = torch.stack([~torch.isfinite(p.detach()).flatten(1).all(1) for p in params]).any(0)
    bad_rows = set(bad.nonzero().flatten().tolist())
    for t, loss in enumerate(losses):
        if t not in bad_rows and all(math.isfinite(value) for value in loss.values()):
            continue
        check_finite_step(
            step, loss, [p[t] for p in params], recipe, fort,
            task=f"task {t} of a batch of {len(losses)}: ",
        )  # fmt: skip


def _batched_step(
    backbone: BackboneAdapter,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    sizes: Sequence[int],
    routing: _Routing,
    weight: Tensor,
    bias: Tensor,
    fort: FortConfig | None,
    targets: Sequence[Tensor | None],
    layers: list[int],
) -> list[dict[str, float]]:
    """One optimiser step of every task: ``Σ_t CE_t + α · attn_t`` on ``images (ΣM_t, 3, H, W)``.

    Each task's terms are the means over its own images (and, for the attention loss, its own
    maps ``(M_t, heads, N, N)`` against its prompts ``(M_t, N)``), as in
    :func:`~focusvit.finetune.trainer.training_step`.
    """
    optimizer.zero_grad(set_to_none=True)
    capture = loss_capture(backbone, fort, layers)
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    with capture as record, _autocast(images.device):
        features = backbone.features(images)
        logits = _task_logits(features, weight, bias, routing.index).float() / routing.divisor  # type: ignore[arg-type]
        ces, attns = [], []
        for t in range(len(sizes)):
            lo, hi = bounds[t], bounds[t + 1]
            ces.append(F.cross_entropy(logits[lo:hi], labels[lo:hi]))
            if fort is not None:
                maps = [m[lo:hi] for m in record]
                attns.append(compute_loss(backbone, fort, maps, targets[t]).float())
            else:
                attns.append(ces[-1].new_zeros(()))
    alpha = fort.alpha if fort is not None else 0.0
    totals = [ce + alpha * attn for ce, attn in zip(ces, attns, strict=True)]
    torch.stack(totals).sum().backward()
    optimizer.step()
    return [
        {"ce": float(ce.detach()), "attn": float(attn.detach()), "total": float(total.detach())}
        for ce, attn, total in zip(ces, attns, totals, strict=True)
    ]


@torch.no_grad()
def _predict(
    backbone: BackboneAdapter,
    queries: Sequence[Tensor],
    routing: _Routing,
    weight: Tensor,
    bias: Tensor,
    batch_size: int,
) -> list[Tensor]:
    """Query predictions per task, in eval mode, whole tasks per forward (at most
    ``batch_size`` images unless one task alone has more)."""
    device = queries[0].device
    out: list[Tensor] = []
    start = 0
    while start < len(queries):
        stop, total = start + 1, queries[start].shape[0]
        while stop < len(queries) and total + queries[stop].shape[0] <= batch_size:
            total += queries[stop].shape[0]
            stop += 1
        chunk = list(queries[start:stop])
        sizes = [q.shape[0] for q in chunk]
        routing.index = _task_index(sizes, device, range(start, stop))
        with _autocast(device):
            features = backbone.features(torch.cat(chunk))
            logits = _task_logits(features, weight, bias, routing.index).float() / routing.divisor
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteError(
                f"tasks {start}..{stop - 1} of the batch give non-finite (NaN/inf) query logits "
                "after fine-tuning: it diverged; lower the learning rate lr (or alpha)"
            )
        out.extend(logits.argmax(dim=1).split(sizes))
        start = stop
    return out


# ----------------------------------------------------------------------------- memory
def available_memory(device: torch.device | str) -> int:
    """Bytes free for new tensors on ``device``: CUDA from ``torch.cuda.mem_get_info`` plus the
    allocator's reserved-but-unused memory; CPU from ``MemAvailable`` in ``/proc/meminfo``
    (``os.sysconf`` available pages where there is no ``/proc``)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 30  # unknown: assume 1 GiB


def _tokens_width_heads(
    backbone: BackboneAdapter, image_size: tuple[int, int]
) -> tuple[int, int, int]:
    h, w = backbone.grid_size(image_size)
    return h * w + backbone.num_prefix_tokens, backbone.embed_dim, backbone.num_heads


def _tuner_activation_bytes(
    backbone: BackboneAdapter, tokens: int, tuner: str | TunerConfig | None
) -> int:
    """What the tuner's batched variant keeps per image on top of the blocks (its
    :meth:`~focusvit.finetune.tuners.BatchedVariant.activation_bytes`); ``None``: the largest
    over the batched tuners; 0 for a tuner without a batched variant."""
    name = getattr(tuner, "name", tuner)
    variants = [
        spec.batched
        for spec in tuner_specs()
        if spec.batched is not None and (name is None or spec.name == name)
    ]
    return max((v.activation_bytes(backbone, tokens) for v in variants), default=0)


#: allocator slack over the counted activations (measured: see activation_bytes_per_image)
_SLACK = 1.15


def activation_bytes_per_image(
    backbone: BackboneAdapter,
    image_size: int | tuple[int, int],
    tuner: str | TunerConfig | None = None,
) -> int:
    """Estimated memory one support image occupies during a training step (fp32 activations
    kept for the backward through every block).

    With ``n`` tokens (patches + prefix), width ``d``, ``h`` heads and ``L`` blocks::

        L · 4 · (17 n d + 2.5 h n²) · 1.15   +   [SSF] 4 · n · Σ_sites channels

    The first term is the transformer-layer activation count of Korthikanti et al. (2022,
    "Reducing activation recomputation": ``34 n d + 5 h n²`` bytes at 2 bytes per element,
    here at 4) with 15% allocator slack; it covers LoRA's small extra tensors and the captured
    attention logits of the loss. SSF keeps one more input per site (``out · γ`` needs ``out``
    for γ's gradient): ``n`` times the summed channels of ``backbone.ssf_targets``. ``tuner``
    None counts SSF (the larger). Measured on DINOv2-S/14 at 112 px (65 tokens, CPU, peak RSS
    over 1 vs 4 tasks of 5 images, attention loss on): LoRA 25 MB, SSF 37.5 MB per image;
    estimate 25.7 MB and 38.2 MB.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    n, d, heads = _tokens_width_heads(backbone, size)  # type: ignore[arg-type]
    per_block = 4 * (17 * n * d + 2.5 * heads * n * n) * _SLACK
    extra = _tuner_activation_bytes(backbone, n, tuner)
    return math.ceil(backbone.num_layers * per_block + extra)


def tasks_per_batch(
    backbone: BackboneAdapter,
    support_size: int,
    query_size: int,
    image_size: int | tuple[int, int],
    device: torch.device | str,
    memory_fraction: float = 0.5,
    *,
    tuner: str | TunerConfig | None = None,
    predict_batch_size: int = 256,
) -> int:
    """How many tasks :func:`fit_predict_batched` can train together on ``device``.

    One task needs ``support_size`` images' training activations
    (:func:`activation_bytes_per_image`, for ``tuner``; None: the larger, SSF) plus its
    ``support_size + query_size`` input images (``3·H·W`` fp32 each). The query forward runs
    without gradients in chunks of ``predict_batch_size`` images, a fixed
    ``predict_batch_size · 4 · (8 n d + 2 h n²)`` bytes taken from the budget first. The tasks
    get ``memory_fraction`` of :func:`available_memory` (CUDA: ``torch.cuda.mem_get_info``;
    CPU: ``MemAvailable`` of ``/proc/meminfo``).

    Returns:
        ``max(1, floor((memory_fraction · available − query chunk) / per-task bytes))``.
    """
    if not 0 < memory_fraction <= 1:
        raise ConfigError(f"memory_fraction must lie in (0, 1], got {memory_fraction}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    per_image = activation_bytes_per_image(backbone, size, tuner)
    inputs = 3 * size[0] * size[1] * 4
    per_task = support_size * per_image + (support_size + query_size) * inputs
    n, d, heads = _tokens_width_heads(backbone, size)  # type: ignore[arg-type]
    query_chunk = predict_batch_size * 4 * (8 * n * d + 2 * heads * n * n)
    budget = memory_fraction * available_memory(device) - query_chunk
    return max(1, int(budget // max(per_task, 1)))
