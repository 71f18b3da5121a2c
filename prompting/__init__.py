"""focusvit.prompting: patch scores -> position prompts (FORT, Wang, Jie, Deng, NeurIPS 2023).

Columnar ViTs: :func:`make_prompts` turns an explainer's patch scores into top-P (or mass
coverage) prompts with multi-hot or importance-weighted targets. Swin: :func:`swin_window_prompts`
gives per-window binary top-P targets from the last block of every stage. Pure tensor functions:
the overlay figures of scores and prompts are in :mod:`focusvit.reports.figures`.
"""

from .prompts import (
    DEFAULT_TOP_K,
    VIT_TOP_FRACTION,
    PositionPrompt,
    check_prompt_size,
    coverage_counts,
    coverage_mask,
    importance_targets,
    make_prompts,
    mass_distribution,
    multi_hot_targets,
    patch_area_fraction,
    prompt_count,
    rank_patches,
    top_k_mask,
    upsample_mask,
    upsample_scores,
)
from .swin import (
    WINDOW_TOP_K,
    SwinStagePrompt,
    SwinWindowPrompt,
    grid_to_windows,
    last_block_of_each_stage,
    partition_order,
    swin_window_prompts,
    window_key_scores,
    window_top_k,
    window_valid_mask,
    windows_to_grid,
)

__all__ = [
    "DEFAULT_TOP_K",
    "VIT_TOP_FRACTION",
    "WINDOW_TOP_K",
    "PositionPrompt",
    "SwinStagePrompt",
    "SwinWindowPrompt",
    "check_prompt_size",
    "coverage_counts",
    "coverage_mask",
    "grid_to_windows",
    "importance_targets",
    "last_block_of_each_stage",
    "make_prompts",
    "mass_distribution",
    "multi_hot_targets",
    "partition_order",
    "patch_area_fraction",
    "prompt_count",
    "rank_patches",
    "swin_window_prompts",
    "top_k_mask",
    "upsample_mask",
    "upsample_scores",
    "window_key_scores",
    "window_top_k",
    "window_valid_mask",
    "windows_to_grid",
]
