"""Two autograd functions whose gradients this library pins down itself.

* :func:`clamp` returns ``torch.clamp(x, lo, hi)`` with the gradient passed
  wherever the value was not moved, bounds included (``lo <= x <= hi``), and zero
  where it was clipped: a weight sitting exactly on a bound after ``hard_project``
  still receives gradient, including the part pointing back inside. That is
  ``torch.clamp``'s own gradient; its backward, though, takes four passes over
  memory (two comparisons, an ``and``, a ``where``), where ``hardtanh_backward``
  with the bounds' outer neighbours takes one. On large tensors that pays for the
  Python cost of an autograd ``Function`` (the training rows of the benchmark); on
  small ones it does not, and :func:`clamp` calls ``torch.clamp`` itself.
* :func:`straight_through` returns a value computed elsewhere (the projection) with
  the gradient of the identity, so raw weights outside the set keep moving.
  ``x + (value - x).detach()`` would not be exactly ``value`` in floating point.

Both define ``setup_context`` and a vmap rule, so they work under ``torch.func``
transforms and ``torch.compile``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function

from ._rounding import just_outside

__all__ = ["FUSED_BACKWARD_NUMEL", "clamp", "straight_through"]

#: From this many elements on, :func:`clamp` runs its one-pass backward.
FUSED_BACKWARD_NUMEL = 1 << 15


class _Clamp(Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, lo: float | None, hi: float | None) -> Tensor:
        return torch.clamp(x, lo, hi)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, lo, hi = inputs
        ctx.save_for_backward(x)
        # hardtanh_backward zeroes the gradient where x <= lo' or x >= hi'; with lo'
        # and hi' the neighbours just outside [lo, hi] in x's dtype, that is exactly
        # "outside [lo, hi]".
        ctx.open_bounds = (
            just_outside(lo, x.dtype, below=True),
            just_outside(hi, x.dtype, below=False),
        )

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, x, *ctx.open_bounds), None, None


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


def clamp(x: Tensor, lo: Any, hi: Any) -> Tensor:
    """Clamp ``x`` to ``[lo, hi]``; gradient 1 where ``lo <= x <= hi``, else 0.

    ``lo`` and ``hi`` are numbers or ``None``, or tensors broadcastable to ``x``.
    """
    if (
        x.requires_grad
        and x.numel() >= FUSED_BACKWARD_NUMEL
        and torch.is_grad_enabled()
        and not isinstance(lo, Tensor)
        and not isinstance(hi, Tensor)
    ):
        out: Tensor = _Clamp.apply(x, lo, hi)  # type: ignore[no-untyped-call]
        return out
    return torch.clamp(x, lo, hi)


def straight_through(x: Tensor, value: Tensor) -> Tensor:
    """Return ``value`` (computed without autograd) with the gradient of the identity in ``x``."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return value
    out: Tensor = _StraightThrough.apply(x, value)  # type: ignore[no-untyped-call]
    return out
