"""focusvit.finetune: tuners, the attention-enhancement loss, per-task fine-tuning and episodic
evaluation (FORT, Wang, Jie, Deng, NeurIPS 2023; DESIGN.md sections 5 and 6)."""

from .evaluate import EvaluationResult, evaluate, parse_method, run_episode
from .heads import SOLVERS, init_head, solve
from .losses import FortConfig, swin_attention_loss, vit_attention_loss
from .recipes import RECIPES, Recipe, recipe_for
from .trainer import TaskModel, fit_task, support_features
from .tuners import (
    TUNERS,
    FullConfig,
    LinearConfig,
    LoraConfig,
    SSFConfig,
    TunedModel,
    TunerConfig,
    VPTConfig,
    applicable_tuners,
    apply_tuner,
    make_tuner,
)

__all__ = [
    "RECIPES",
    "SOLVERS",
    "TUNERS",
    "EvaluationResult",
    "FortConfig",
    "FullConfig",
    "LinearConfig",
    "LoraConfig",
    "Recipe",
    "SSFConfig",
    "TaskModel",
    "TunedModel",
    "TunerConfig",
    "VPTConfig",
    "applicable_tuners",
    "apply_tuner",
    "evaluate",
    "fit_task",
    "init_head",
    "make_tuner",
    "parse_method",
    "recipe_for",
    "run_episode",
    "solve",
    "support_features",
    "swin_attention_loss",
    "vit_attention_loss",
]
