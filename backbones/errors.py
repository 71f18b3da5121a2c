"""Error types of the backbone layer; defined in :mod:`focusvit.errors` (one home for every
focusvit error) and re-exported here for the adapters."""

from __future__ import annotations

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

__all__ = [
    "FocusVitError",
    "ImageReadError",
    "InputSizeError",
    "NonFiniteError",
    "OfflineWeightsMissingError",
    "UnknownModelError",
    "UnsupportedFamilyError",
    "UnsupportedMethodError",
]
