"""focusvit.prompting: patch scores -> position prompts (FORT, Wang, Jie, Deng, NeurIPS 2023).

Columnar ViTs: :func:`make_prompts` turns an explainer's patch scores into top-P (or mass
coverage) prompts with multi-hot or importance-weighted targets. Swin: :func:`swin_window_prompts`
gives per-window binary top-P targets from the last block of every stage. Figures overlay scores
and prompts on the images.
"""

from .figures import image_to_array, plot_explanation, save_overlay_grid
from .prompts import (
    PositionPrompt,
    coverage_counts,
    coverage_mask,
    importance_targets,
    make_prompts,
    mass_distribution,
    multi_hot_targets,
    patch_area_fraction,
    rank_patches,
    resolve_top_p,
    top_p_mask,
    upsample_mask,
    upsample_scores,
)
from .swin import (
    SwinStagePrompt,
    SwinWindowPrompt,
    grid_to_windows,
    last_block_of_each_stage,
    partition_order,
    swin_window_prompts,
    window_key_scores,
    window_top_p,
    window_valid_mask,
    windows_to_grid,
)

__all__ = [
    "PositionPrompt",
    "SwinStagePrompt",
    "SwinWindowPrompt",
    "coverage_counts",
    "coverage_mask",
    "grid_to_windows",
    "image_to_array",
    "importance_targets",
    "last_block_of_each_stage",
    "make_prompts",
    "mass_distribution",
    "multi_hot_targets",
    "partition_order",
    "patch_area_fraction",
    "plot_explanation",
    "rank_patches",
    "resolve_top_p",
    "save_overlay_grid",
    "swin_window_prompts",
    "top_p_mask",
    "upsample_mask",
    "upsample_scores",
    "window_key_scores",
    "window_top_p",
    "window_valid_mask",
    "windows_to_grid",
]
