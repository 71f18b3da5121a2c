"""Error types of the backbone layer; defined in :mod:`focusvit.errors` (one home for every
focusvit error) and re-exported here for the adapters."""

from __future__ import annotations

from focusvit.errors import (
    FocusVitError,
    ImageReadError,
    InputSizeError,
    OfflineWeightsMissingError,
    UnknownModelError,
    UnsupportedFamilyError,
    UnsupportedMethodError,
)

try:  # its home is focusvit.errors; defined here until it is added there
    from focusvit.errors import NonFiniteError
except ImportError:

    class NonFiniteError(FocusVitError, ValueError):  # type: ignore[no-redef]
        """A tensor that must be finite (input images, explainer scores) holds NaN or Inf."""


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
