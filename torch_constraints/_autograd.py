"""Autograd functions with gradients this library pins down itself.

``torch.clamp``'s gradient exactly at a bound has changed across PyTorch
releases, and ``x + (clamp(x) - x).detach()`` is not exactly ``clamp(x)`` in
floating point. These functions fix both the value and the gradient:

* :func:`clamp` returns ``clamp(x, lo, hi)`` and passes the gradient wherever
  the value was not moved, bounds included (``lo <= x <= hi``), and zero where
  it was clipped. A weight sitting exactly on a bound after ``hard_project`` thus
  still receives gradient, including the part pointing back inside.
* :func:`straight_through` returns a value computed elsewhere (the projection)
  with the gradient of the identity, so raw weights outside the set keep moving.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function

from ._rounding import just_outside

__all__ = ["clamp", "straight_through"]

Bound = float | Tensor | None


class _Clamp(Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, lo: Bound, hi: Bound) -> Tensor:
        return _plain_clamp(x, lo, hi)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, lo, hi = inputs
        if isinstance(lo, Tensor) or isinstance(hi, Tensor):
            ctx.save_for_backward(x, output)
            ctx.open_bounds = None
        else:
            # hardtanh_backward zeroes the gradient where x <= lo' or x >= hi', in one
            # pass; with lo' and hi' the neighbours just outside [lo, hi] in x's dtype,
            # that is exactly "outside [lo, hi]".
            ctx.save_for_backward(x)
            ctx.open_bounds = (
                just_outside(lo, x.dtype, below=True),
                just_outside(hi, x.dtype, below=False),
            )

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        if ctx.open_bounds is None:
            x, y = ctx.saved_tensors
            return torch.where(x == y, grad, 0.0), None, None
        (x,) = ctx.saved_tensors
        lo, hi = ctx.open_bounds
        return torch.ops.aten.hardtanh_backward(grad, x, lo, hi), None, None


class _StraightThrough(Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, value: Tensor) -> Tensor:
        return value

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def _plain_clamp(x: Tensor, lo: Bound, hi: Bound) -> Tensor:
    return torch.clamp(x, lo, hi)  # type: ignore[arg-type]  # the stubs reject number | Tensor


def clamp(x: Tensor, lo: Bound, hi: Bound) -> Tensor:
    """Clamp ``x`` to ``[lo, hi]``; gradient 1 where ``lo <= x <= hi``, else 0."""
    if not torch.is_grad_enabled() or not x.requires_grad:
        return _plain_clamp(x, lo, hi)
    out: Tensor = _Clamp.apply(x, lo, hi)  # type: ignore[no-untyped-call]
    return out


def straight_through(x: Tensor, value: Tensor) -> Tensor:
    """Return ``value`` (computed without autograd) with the gradient of the identity in ``x``."""
    if not torch.is_grad_enabled() or not x.requires_grad:
        return value
    out: Tensor = _StraightThrough.apply(x, value)  # type: ignore[no-untyped-call]
    return out
