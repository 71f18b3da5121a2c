"""The attention-enhancement loss of FORT as one package (Wang, Jie, Deng, "Focus Your
Attention when Few-Shot Classification", NeurIPS 2023; ``docs/concepts/loss.md``).

- :class:`FortConfig`: the loss's settings (α, τ, prompt size and source, layers, ...);
  :func:`fort_settings` its settings record.
- :func:`vit_attention_loss`, :func:`swin_attention_loss`: the loss as tensor functions.
- :data:`OBJECTIVES`: one :class:`Objective` per backbone family (columnar ViT, Swin): which
  blocks, the capture, the prompts (targets), the loss and the checks.
- :func:`refuse_fort`, :func:`resolve_fort`, :func:`check_fits`: every refusal, in one place,
  each with one error type (:class:`AttentionLossUnsupportedError`, or
  :class:`~focusvit.errors.ConfigError` for a value that does not fit the model).
- :func:`prompt_targets`, :func:`loss_layers`, :func:`loss_capture`, :func:`compute_loss`:
  what a training step calls.
- :func:`prompt_settings`: the prompt settings for a backbone whatever the tuner (prompts shown
  without the loss).
- :func:`check_prompt_size`: the one prompt-size check (shared with the prompting package
  and the CLI).
- :func:`ground_truth_targets`, :func:`dataset_masks`: prompts from object masks
  (``FortConfig(prompts="ground_truth")``).
"""

from focusvit.prompting.prompts import VIT_TOP_FRACTION, check_prompt_size

from .checks import (
    AttentionLossUnsupportedError,
    check_fits,
    check_fort_value,
    objective_for,
    prompt_settings,
    refuse_fort,
    resolve_fort,
)
from .config import PROMPT_SOURCES, TARGET_SUMS, FortConfig, fort_settings
from .functions import (
    QueryRows,
    Targets,
    cross_entropy_rows,
    swin_attention_loss,
    unit_targets,
    vit_attention_loss,
)
from .ground_truth import (
    check_masks,
    dataset_masks,
    ground_truth_targets,
    masks_for_prompts,
    swin_ground_truth_targets,
)
from .objectives import (
    OBJECTIVES,
    ColumnarObjective,
    Objective,
    SwinObjective,
    normalised_targets,
    register_objective,
)
from .training import compute_loss, loss_capture, loss_layers, prompt_targets

__all__ = [
    "OBJECTIVES",
    "PROMPT_SOURCES",
    "TARGET_SUMS",
    "VIT_TOP_FRACTION",
    "AttentionLossUnsupportedError",
    "ColumnarObjective",
    "FortConfig",
    "Objective",
    "QueryRows",
    "SwinObjective",
    "Targets",
    "check_fits",
    "check_fort_value",
    "check_masks",
    "check_prompt_size",
    "compute_loss",
    "cross_entropy_rows",
    "dataset_masks",
    "fort_settings",
    "ground_truth_targets",
    "loss_capture",
    "loss_layers",
    "masks_for_prompts",
    "normalised_targets",
    "objective_for",
    "prompt_settings",
    "prompt_targets",
    "refuse_fort",
    "register_objective",
    "resolve_fort",
    "swin_attention_loss",
    "swin_ground_truth_targets",
    "unit_targets",
    "vit_attention_loss",
]
