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

__all__ = ["clamp", "straight_through"]

Bound = float | Tensor | None


class _Clamp(Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, lo: Bound, hi: Bound) -> Tensor:
        return torch.clamp(x, lo, hi)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(inputs[0], output)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        x, y = ctx.saved_tensors
        return torch.where(x == y, grad, 0.0), None, None


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


def clamp(x: Tensor, lo: Bound, hi: Bound) -> Tensor:
    """Clamp ``x`` to ``[lo, hi]``; gradient 1 where ``lo <= x <= hi``, else 0."""
    if not torch.is_grad_enabled() or not x.requires_grad:
        return torch.clamp(x, lo, hi)
    out: Tensor = _Clamp.apply(x, lo, hi)
    return out


def straight_through(x: Tensor, value: Tensor) -> Tensor:
    """Return ``value`` (computed without autograd) with the gradient of the identity in ``x``."""
    if not torch.is_grad_enabled() or not x.requires_grad:
        return value
    out: Tensor = _StraightThrough.apply(x, value)
    return out
