r"""Pure projection kernels, one per feasible set, with in-place twins ending in ``_``.

Each ``project_*`` function is differentiable and leaves its input alone; each
``project_*_`` twin writes the same values into its input (call it under
:func:`torch.no_grad` on tensors that require grad). The constraint classes are
thin holders of these kernels' arguments.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _autograd
from ._rounding import inward_scalar, inward_tensor

__all__ = ["Bound", "box_bounds", "project_box", "project_box_"]

#: A bound: a number, a tensor broadcastable to the projected tensor, or None (unbounded).
Bound = float | Tensor | None


def project_box(x: Tensor, min: Bound = None, max: Bound = None) -> Tensor:
    r"""Project ``x`` onto the box :math:`C = \{y : \text{min} \le y \le \text{max}\}`.

    .. math::

        P_C(x)_i = \min(\max(x_i, \text{min}_i), \text{max}_i)

    The bounds are first rounded to ``x.dtype`` toward the inside of the box, so the
    result never lies outside the requested range. The gradient is 1 where
    ``min <= x <= max`` (bounds included) and 0 where ``x`` was clipped.

    Args:
        x: the tensor to project.
        min: lower bound (number, broadcastable tensor, or ``None``). Default: ``None``.
        max: upper bound (number, broadcastable tensor, or ``None``). Default: ``None``.

    Returns:
        A new tensor inside the box.

    Example:
        >>> import torch
        >>> from torch_constraints.functional import project_box
        >>> project_box(torch.tensor([-2.0, 0.5, 3.0]), -1, 1)
        tensor([-1.0000,  0.5000,  1.0000])
    """
    lo, hi = box_bounds(x, min, max)
    if lo is None and hi is None:
        return x.view_as(x)
    return _autograd.clamp(x, lo, hi)


def project_box_(x: Tensor, min: Bound = None, max: Bound = None) -> Tensor:
    """In-place :func:`project_box`: clamp ``x`` into the box and return it."""
    lo, hi = box_bounds(x, min, max)
    if lo is None and hi is None:
        return x
    return x.clamp_(lo, hi)  # type: ignore[arg-type]  # the stubs omit number bounds


def box_bounds(x: Tensor, min: Bound = None, max: Bound = None) -> tuple[Bound, Bound]:
    """Return the bounds :func:`project_box` applies to ``x``.

    They are ``min`` and ``max`` rounded to ``x.dtype`` toward the inside of the box;
    infinite bounds become ``None``.

    Example:
        >>> import torch
        >>> from torch_constraints.functional import box_bounds
        >>> box_bounds(torch.zeros(2), -0.05, float("inf"))
        (-0.04999999701976776, None)
    """
    lo, hi = _inward(min, x, lower=True), _inward(max, x, lower=False)
    # torch.clamp takes two numbers or two tensors, not one of each.
    if isinstance(lo, Tensor) and isinstance(hi, float):
        hi = torch.full((), hi, dtype=x.dtype, device=x.device)
    elif isinstance(hi, Tensor) and isinstance(lo, float):
        lo = torch.full((), lo, dtype=x.dtype, device=x.device)
    return lo, hi


def _inward(bound: Bound, x: Tensor, *, lower: bool) -> Bound:
    if bound is None:
        return None
    if isinstance(bound, Tensor):
        return inward_tensor(bound, x.dtype, lower=lower)
    if math.isinf(bound):
        return None
    return inward_scalar(float(bound), x.dtype, lower=lower)
