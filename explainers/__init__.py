"""focusvit.explainers: CAM, Grad-CAM, raw attention, attention rollout, the FORT
rollout + SVD-gradient explainer and a random-patch (chance-level) baseline, all behind
``explain(backbone, images, method=..., target=...)``.
"""

from .api import as_batch, explain, make_explainer
from .attention import AttentionExplainer
from .base import (
    EXPLAINERS,
    Explainer,
    Explanation,
    Target,
    normalise_per_image,
    register_explainer,
    resolve_targets,
)
from .cam import CAMExplainer
from .gradcam import GradCAMExplainer
from .metrics import (
    CausalCurve,
    attention_mass,
    causal_curve,
    cls_attention,
    coverage_count,
    deletion,
    insertion,
    pointing_game,
    prompt_precision,
)
from .random_patches import RandomExplainer, random_patch_scores
from .rollout import RolloutExplainer, RolloutSVDExplainer, svd_gradient_term

__all__ = [
    "EXPLAINERS",
    "AttentionExplainer",
    "CAMExplainer",
    "CausalCurve",
    "Explainer",
    "Explanation",
    "GradCAMExplainer",
    "RandomExplainer",
    "RolloutExplainer",
    "RolloutSVDExplainer",
    "Target",
    "as_batch",
    "attention_mass",
    "causal_curve",
    "cls_attention",
    "coverage_count",
    "deletion",
    "explain",
    "insertion",
    "make_explainer",
    "normalise_per_image",
    "pointing_game",
    "prompt_precision",
    "random_patch_scores",
    "register_explainer",
    "resolve_targets",
    "svd_gradient_term",
]
