"""Bounds rounded toward the inside of the feasible set in a tensor's dtype.

A bound such as 0.05 has no exact float32 or bfloat16 value. Rounding to nearest
can land just outside the requested range (float32(0.05) = 0.0500000007,
bfloat16(0.05) = 0.05005), so a weight clamped to it would fail ``w <= 0.05`` in
higher precision. Lower bounds are therefore rounded up and upper bounds down to
the nearest value the dtype can hold; bounds the dtype represents exactly are
unchanged, and infinite bounds stay infinite.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch
from torch import Tensor

__all__ = ["constant_for_compile", "inward_scalar", "inward_tensor", "just_outside"]

F = TypeVar("F", bound=Callable[..., Any])


def constant_for_compile(fn: F) -> F:
    """Let ``torch.compile`` call ``fn`` while tracing and use its result as a constant."""
    return cast(F, torch.compiler.assume_constant_result(fn))  # type: ignore[no-untyped-call]


@constant_for_compile
def inward_scalar(value: float, dtype: torch.dtype, *, lower: bool) -> float:
    """Return the representable value of ``dtype`` nearest ``value`` on the feasible side.

    A pure function of Python constants: ``torch.compile`` evaluates it while
    tracing and puts the result into the graph as a constant.

    Args:
        value: the requested bound.
        dtype: the floating-point dtype of the constrained tensor.
        lower: ``True`` for a lower bound (round up), ``False`` for an upper bound.
    """
    return _inward_scalar(value, dtype, lower)


@functools.lru_cache(maxsize=1024)
def _inward_scalar(value: float, dtype: torch.dtype, lower: bool) -> float:
    rounded = inward_tensor(torch.tensor(value, dtype=torch.float64), dtype, lower=lower)
    return float(rounded)


def inward_tensor(bound: Tensor, dtype: torch.dtype, *, lower: bool) -> Tensor:
    """Convert ``bound`` to ``dtype``, rounding each element toward the feasible side."""
    if bound.dtype == dtype:
        return bound
    exact = bound.to(torch.float64)
    rounded = exact.to(dtype)
    if lower:
        outside = rounded.to(torch.float64) < exact
        toward = torch.full_like(rounded, float("inf"))
    else:
        outside = rounded.to(torch.float64) > exact
        toward = torch.full_like(rounded, float("-inf"))
    return torch.where(outside, torch.nextafter(rounded, toward), rounded)


@constant_for_compile
def just_outside(value: float | None, dtype: torch.dtype, *, below: bool) -> float:
    """Return the neighbour of ``value`` in ``dtype`` just below or above it (None: unbounded).

    Like :func:`inward_scalar`, a constant for ``torch.compile``.
    """
    return _just_outside(value, dtype, below)


@functools.lru_cache(maxsize=1024)
def _just_outside(value: float | None, dtype: torch.dtype, below: bool) -> float:
    if value is None:
        return -math.inf if below else math.inf
    toward = torch.tensor(-math.inf if below else math.inf, dtype=dtype)
    return float(torch.nextafter(torch.tensor(value, dtype=dtype), toward))
