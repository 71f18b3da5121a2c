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

from .base import (
    AttentionRecord,
    AttentionSite,
    BackboneAdapter,
    BlockInput,
    TokenGeometry,
    WindowGeometry,
    default_data_config,
)
from .catalog import imagenet_class_names, is_timm_model, suggest_model_names
from .cnn import TimmCNNAdapter
from .hf_swin import HFSwinAdapter
from .hf_vit import HFViTAdapter
from .registry import (
    adapt,
    load_backbone,
    model_family,
    register_adapter,
    save_backbone,
    supported_families,
)
from .timm_swin import TimmSwinAdapter
from .timm_vit import TimmViTAdapter

__all__ = [
    "AttentionRecord",
    "AttentionSite",
    "BackboneAdapter",
    "BlockInput",
    "FocusVitError",
    "HFSwinAdapter",
    "HFViTAdapter",
    "ImageReadError",
    "InputSizeError",
    "NonFiniteError",
    "OfflineWeightsMissingError",
    "TimmCNNAdapter",
    "TimmSwinAdapter",
    "TimmViTAdapter",
    "TokenGeometry",
    "UnknownModelError",
    "UnsupportedFamilyError",
    "UnsupportedMethodError",
    "WindowGeometry",
    "adapt",
    "default_data_config",
    "imagenet_class_names",
    "is_timm_model",
    "load_backbone",
    "model_family",
    "register_adapter",
    "save_backbone",
    "suggest_model_names",
    "supported_families",
]
