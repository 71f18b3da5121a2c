"""Backbone adapters: the only code in focusvit that knows timm / Hugging Face internals."""

from focusvit.errors import (
    FocusVitError,
    ImageReadError,
    InputSizeError,
    NonFiniteError,
    OfflineWeightsMissingError,
    UnknownModelError,
    UnsupportedFamilyError,
    UnsupportedMethodError,
)

# The family files: each registers itself on import (docs/families.md).
from . import (  # noqa: F401  (register themselves)
    beit,
    hf_clip,
    hf_dinov3,
    hf_siglip,
    swinv2,
    timm_beit,
    timm_eva,
    timm_swinv2,
)
from .base import (
    AttentionRecord,
    AttentionSite,
    BackboneAdapter,
    BlockInput,
    RecomputedSite,
    TokenGeometry,
    TokenLayout,
    WindowGeometry,
    default_data_config,
)
from .catalog import imagenet_class_names, is_timm_model, suggest_model_names
from .cnn import TimmCNNAdapter
from .hf_swin import HFSwinAdapter
from .hf_vit import HFViTAdapter
from .loading import load_backbone, model_family, save_backbone
from .registry import (
    FAMILIES,
    FamilyEntry,
    adapt,
    family_of,
    register_adapter,
    register_family,
    supported_families,
)
from .timm_swin import TimmSwinAdapter
from .timm_vit import TimmViTAdapter

__all__ = [
    "FAMILIES",
    "AttentionRecord",
    "AttentionSite",
    "BackboneAdapter",
    "BlockInput",
    "FamilyEntry",
    "FocusVitError",
    "HFSwinAdapter",
    "HFViTAdapter",
    "ImageReadError",
    "InputSizeError",
    "NonFiniteError",
    "OfflineWeightsMissingError",
    "RecomputedSite",
    "TimmCNNAdapter",
    "TimmSwinAdapter",
    "TimmViTAdapter",
    "TokenGeometry",
    "TokenLayout",
    "UnknownModelError",
    "UnsupportedFamilyError",
    "UnsupportedMethodError",
    "WindowGeometry",
    "adapt",
    "default_data_config",
    "family_of",
    "imagenet_class_names",
    "is_timm_model",
    "load_backbone",
    "model_family",
    "register_adapter",
    "register_family",
    "save_backbone",
    "suggest_model_names",
    "supported_families",
]
