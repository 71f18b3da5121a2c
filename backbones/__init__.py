"""Backbone adapters: the only code in focusvit that knows timm / Hugging Face internals."""

from .base import (
    AttentionRecord,
    AttentionSite,
    BackboneAdapter,
    BlockInput,
    TokenGeometry,
    WindowGeometry,
    default_data_config,
)
from .cnn import TimmCNNAdapter
from .errors import (
    FocusVitError,
    ImageReadError,
    InputSizeError,
    OfflineWeightsMissingError,
    UnknownModelError,
    UnsupportedFamilyError,
    UnsupportedMethodError,
)
from .hf_swin import HFSwinAdapter
from .hf_vit import HFViTAdapter
from .registry import (
    adapt,
    load_backbone,
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
    "load_backbone",
    "register_adapter",
    "save_backbone",
    "supported_families",
]
