"""The one definition of "a number" that focusvit's argument checks share.

The predicates answer True / False and never raise, so each caller keeps its own error type and
message; a bool is never a number here (``True`` is no learning rate and no episode count), a
numpy scalar is. :func:`check_number` is the raising form for a finite number with a rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

from focusvit.errors import ConfigError

__all__ = ["check_number", "is_finite_number", "is_number", "is_whole_number"]


def is_number(value: Any) -> bool:
    """True for a real number (:class:`numbers.Real`: ``int``, ``float``, numpy scalars) that is
    not a bool; NaN and infinities count (see :func:`is_finite_number`)."""
    return isinstance(value, Real) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """True for a number (:func:`is_number`) that is neither NaN nor infinite."""
    # an integer is finite, also one too large for math.isfinite's float conversion
    return is_number(value) and (isinstance(value, Integral) or math.isfinite(value))


def is_whole_number(value: Any, minimum: int | None = None) -> bool:
    """True for an integer (:class:`numbers.Integral`: ``int``, numpy integers) that is not a
    bool and, when ``minimum`` is given, is at least ``minimum``; ``3.0`` is no whole number."""
    if not isinstance(value, Integral) or isinstance(value, bool):
        return False
    return minimum is None or bool(value >= minimum)


def check_number(
    value: Any, what: str, rule: str, ok: Callable[[float], bool], example: str
) -> None:
    """Refuse ``value`` unless it is a finite real number (not a bool) for which ``ok`` holds.

    Raises:
        ConfigError: ``"{what} must be a finite number {rule}, got ...; e.g. {example}"``.
    """
    if not (is_finite_number(value) and ok(value)):
        raise ConfigError(f"{what} must be a finite number {rule}, got {value!r}; e.g. {example}")
