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

Each comes in two forms with the same math. ``Function.apply`` binds the
arguments with ``inspect.signature`` on every call when a Function defines
``setup_context``, which costs more than the clamp itself on small or GPU
tensors; eager calls therefore use the classic form (``forward(ctx, ...)``),
and only functorch transforms (``torch.func.grad``, ``vmap``), which require
``setup_context``, use the other.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function

from ._rounding import just_outside

__all__ = ["clamp", "straight_through"]

Bound = float | Tensor | None


# ----------------------------------------------------------------------------- clamp
def _clamp_save(ctx: Any, x: Tensor, lo: Bound, hi: Bound, output: Tensor) -> None:
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


def _clamp_backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
    if ctx.open_bounds is None:
        x, y = ctx.saved_tensors
        return torch.where(x == y, grad, 0.0), None, None
    (x,) = ctx.saved_tensors
    lo, hi = ctx.open_bounds
    return torch.ops.aten.hardtanh_backward(grad, x, lo, hi), None, None


class _Clamp(Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, lo: Bound, hi: Bound) -> Tensor:
        output = _plain_clamp(x, lo, hi)
        _clamp_save(ctx, x, lo, hi, output)
        return output

    backward = staticmethod(_clamp_backward)


class _ClampForTransforms(Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, lo: Bound, hi: Bound) -> Tensor:
        return _plain_clamp(x, lo, hi)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, lo, hi = inputs
        _clamp_save(ctx, x, lo, hi, output)

    backward = staticmethod(_clamp_backward)


# ----------------------------------------------------------------------------- straight-through
def _identity_backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
    return grad, None


class _StraightThrough(Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, value: Tensor) -> Tensor:
        return value

    backward = staticmethod(_identity_backward)


class _StraightThroughForTransforms(Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, value: Tensor) -> Tensor:
        return value

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        pass

    backward = staticmethod(_identity_backward)


# ----------------------------------------------------------------------------- entry points
def _plain_clamp(x: Tensor, lo: Bound, hi: Bound) -> Tensor:
    return torch.clamp(x, lo, hi)  # type: ignore[arg-type]  # the stubs reject number | Tensor


def _transforms_active() -> bool:
    return bool(torch._C._are_functorch_transforms_active())


def clamp(x: Tensor, lo: Bound, hi: Bound) -> Tensor:
    """Clamp ``x`` to ``[lo, hi]``; gradient 1 where ``lo <= x <= hi``, else 0."""
    if _transforms_active():
        out: Tensor = _ClampForTransforms.apply(x, lo, hi)  # type: ignore[no-untyped-call]
        return out
    if not torch.is_grad_enabled() or not x.requires_grad:
        return _plain_clamp(x, lo, hi)
    out = _Clamp.apply(x, lo, hi)  # type: ignore[no-untyped-call]
    return out


def straight_through(x: Tensor, value: Tensor) -> Tensor:
    """Return ``value`` (computed without autograd) with the gradient of the identity in ``x``."""
    if _transforms_active():
        out: Tensor = _StraightThroughForTransforms.apply(x, value)  # type: ignore[no-untyped-call]
        return out
    if not torch.is_grad_enabled() or not x.requires_grad:
        return value
    out = _StraightThrough.apply(x, value)  # type: ignore[no-untyped-call]
    return out
