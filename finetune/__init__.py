"""focusvit.finetune: tuners, the attention-enhancement loss, per-task fine-tuning and episodic
evaluation (FORT, Wang, Jie, Deng, NeurIPS 2023). The loss is the package
:mod:`focusvit.finetune.attention_loss` (``docs/concepts/loss.md``)."""

from .attention_loss import FortConfig, resolve_fort, swin_attention_loss, vit_attention_loss
from .batched import BatchingUnsupportedError, fit_predict_batched, tasks_per_batch
from .evaluate import (
    MethodChoice,
    SolverRunner,
    TunerRunner,
    backbone_settings,
    check_method_names,
    episode_tensors,
    evaluate,
    make_runner,
    parse_method,
)
from .heads import SOLVERS, init_head, solve
from .recipes import HEAD_INITS, RECIPES, FitOptions, Recipe, recipe_for
from .selection import AlphaSelection, read_selection, select_alpha
from .trainer import TaskModel, fit_task, support_features
from .tuners import (
    TUNERS,
    FullConfig,
    LinearConfig,
    LoraConfig,
    SSFConfig,
    TunedModel,
    TunerConfig,
    TunerSpec,
    VPTConfig,
    applicable_tuners,
    apply_tuner,
    make_tuner,
    tuner_spec,
    tuner_specs,
)

__all__ = [
    "HEAD_INITS",
    "RECIPES",
    "SOLVERS",
    "TUNERS",
    "AlphaSelection",
    "BatchingUnsupportedError",
    "FitOptions",
    "FortConfig",
    "FullConfig",
    "LinearConfig",
    "LoraConfig",
    "MethodChoice",
    "Recipe",
    "SSFConfig",
    "SolverRunner",
    "TaskModel",
    "TunedModel",
    "TunerConfig",
    "TunerRunner",
    "TunerSpec",
    "VPTConfig",
    "applicable_tuners",
    "apply_tuner",
    "backbone_settings",
    "check_method_names",
    "episode_tensors",
    "evaluate",
    "fit_predict_batched",
    "fit_task",
    "init_head",
    "make_runner",
    "make_tuner",
    "parse_method",
    "read_selection",
    "recipe_for",
    "resolve_fort",
    "select_alpha",
    "solve",
    "support_features",
    "swin_attention_loss",
    "tasks_per_batch",
    "tuner_spec",
    "tuner_specs",
    "vit_attention_loss",
]
