"""Parameter-efficient tuners for few-shot fine-tuning (``docs/concepts/tuners.md``).

Each tuner is described by a config dataclass (validated in ``__post_init__``) and applied to a
:class:`~focusvit.backbones.BackboneAdapter` with :func:`apply_tuner`, which returns a
:class:`TunedModel`. Tuners are injected *in place*: ``backbone.logits``, ``features`` and
``capture_attention`` keep working on the tuned model, and the tuner's own parameters are
registered inside ``backbone.model`` (so ``backbone.parameters()``, ``frozen()`` and
``evaluating()`` see them). Removing the tuner (``remove()`` or leaving the ``with`` block)
returns the backbone bit-identical to its state when the tuner was applied.

One module per tuner (:mod:`.linear`, :mod:`.full`, :mod:`.lora`, :mod:`.ssf`, :mod:`.vpt`)
holds its config, its injection and its batched variant, and registers them once in
:mod:`.base` as a :class:`~.base.TunerSpec` with capability flags (``trains_backbone``,
``supports_attention_loss``, ``needs_peft``, ``random_options``, ``merge``, ``batched``); the
rest of :mod:`focusvit.finetune` asks the flags (:func:`tuner_spec`), never the tuner's name.
The modules are imported below in the order the registry lists them.

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

from .base import (
    SEQUENTIAL_FIX,
    TUNERS,
    BatchedVariant,
    BatchingUnsupportedError,
    TaskRouting,
    TunedModel,
    TunerConfig,
    TunerSpec,
    applicable_tuners,
    apply_tuner,
    iter_named_modules,
    make_tuner,
    register,
    tuner_spec,
    tuner_specs,
)

# isort: off
# each module registers its tuner on import: this order is the registry's (TUNERS, messages)
from .linear import LinearConfig, LinearTuned
from .full import FullConfig, FullTuned
from .lora import LoraConfig, LoraTuned, lora_target_names
from .vpt import VPTConfig, VPTTuned
from .ssf import SSFConfig, SSFTuned

# isort: on

__all__ = [
    "SEQUENTIAL_FIX",
    "TUNERS",
    "BatchedVariant",
    "BatchingUnsupportedError",
    "FullConfig",
    "FullTuned",
    "LinearConfig",
    "LinearTuned",
    "LoraConfig",
    "LoraTuned",
    "SSFConfig",
    "SSFTuned",
    "TaskRouting",
    "TunedModel",
    "TunerConfig",
    "TunerSpec",
    "VPTConfig",
    "VPTTuned",
    "applicable_tuners",
    "apply_tuner",
    "iter_named_modules",
    "lora_target_names",
    "make_tuner",
    "register",
    "tuner_spec",
    "tuner_specs",
]
