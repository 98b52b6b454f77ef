"""Constructor argument checks that name the argument and the value received."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = ["dims", "number", "real", "refusal"]


def real(value: object) -> float | None:
    """Return ``value`` as a float if it is a real number, else ``None``.

    Real numbers are Python ``int`` and ``float``, every :class:`numbers.Real`
    (NumPy's ``float16``/``float32``/``float64`` and integer scalars,
    :class:`fractions.Fraction`), and 0-d real tensors (their value, read once).
    ``bool`` (Python's, NumPy's, a bool tensor) and complex numbers are not.

    Example:
        >>> import torch
        >>> real(2), real(torch.tensor(0.5)), real(True), real(1j), real("1")
        (2.0, 0.5, None, None, None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, Tensor):
        if value.ndim != 0 or value.is_complex() or value.dtype == torch.bool:
            return None
        if value.device.type == "meta":
            return None
        return float(value.item())
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def refusal(value: object) -> str | None:
    """Describe ``value`` if it is a bool, complex or a tensor (not a real number), else None."""
    if type(value).__name__ in ("bool", "bool_"):
        return f"{value!r} (a bool)"
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
        return repr(value)
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return None


def number(
    owner: str,
    name: str,
    value: object,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
) -> float:
    """Return ``value`` as a finite float, or raise naming ``owner``, ``name`` and ``value``.

    Accepts what :func:`real` accepts.
    """
    result = real(value)
    if result is None:
        described = refusal(value)
        if described is not None:
            raise TypeError(f"{owner}: {name} must be a real number, got {described}")
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    if not math.isfinite(result):
        raise ValueError(f"{owner}: {name} must be finite, got {value}")
    if at_least is not None and result < at_least:
        raise ValueError(f"{owner}: {name} must be >= {at_least:g}, got {value}")
    if above is not None and result <= above:
        raise ValueError(f"{owner}: {name} must be > {above:g}, got {value}")
    if at_most is not None and result > at_most:
        raise ValueError(f"{owner}: {name} must be <= {at_most:g}, got {value}")
    return result


def dims(owner: str, value: object) -> int | tuple[int, ...] | None:
    """Return a valid ``dim`` argument: an int, a tuple of distinct ints, or None."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, (tuple, list)) and all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        if len(set(value)) != len(value):
            raise ValueError(f"{owner}: dim must not repeat a dimension, got {value!r}")
        return tuple(value)
    raise TypeError(f"{owner}: dim must be an int, a tuple of ints or None, got {value!r}")
