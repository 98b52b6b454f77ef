"""Constructor argument checks that name the argument and the value received."""

from __future__ import annotations

import math

__all__ = ["dims", "number"]


def number(
    owner: str,
    name: str,
    value: object,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
) -> float:
    """Return ``value`` as a finite float, or raise naming ``owner``, ``name`` and ``value``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    result = float(value)
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
