"""focusvit.explainers: CAM, Grad-CAM, raw attention, attention rollout and the FORT
rollout + SVD-gradient explainer, all behind ``explain(backbone, images, method=..., target=...)``.
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
from .rollout import RolloutExplainer, RolloutSVDExplainer, svd_gradient_term

__all__ = [
    "EXPLAINERS",
    "AttentionExplainer",
    "CAMExplainer",
    "Explainer",
    "Explanation",
    "GradCAMExplainer",
    "RolloutExplainer",
    "RolloutSVDExplainer",
    "Target",
    "as_batch",
    "explain",
    "make_explainer",
    "normalise_per_image",
    "register_explainer",
    "resolve_targets",
    "svd_gradient_term",
]
