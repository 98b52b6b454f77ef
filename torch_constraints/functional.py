r"""Pure projection kernels, one per feasible set, with in-place twins ending in ``_``.

Each ``project_*`` function is differentiable and leaves its input alone; each
``project_*_`` twin writes the same values into its input (call it under
:func:`torch.no_grad` on tensors that require grad). The constraint classes are
thin holders of these kernels' arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from . import _autograd
from ._rounding import inward_scalar, inward_tensor

__all__ = [
    "Bound",
    "Dim",
    "box_bounds",
    "project_box",
    "project_box_",
    "project_l1_ball",
    "project_l1_ball_",
    "project_l2_ball",
    "project_l2_ball_",
    "project_l2_sphere",
    "project_l2_sphere_",
    "project_min_max_norm",
    "project_min_max_norm_",
    "project_simplex",
    "project_simplex_",
]

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
        # A constraint recorded with parametrize=False is no submodule: module.to()
        # does not move its tensor bounds, so they follow the tensor here.
        return inward_tensor(bound.to(x.device), x.dtype, lower=lower)
    if math.isinf(bound):
        return None
    return inward_scalar(float(bound), x.dtype, lower=lower)


# ---------------------------------------------------------------------------- slices
#: Which slices a projection acts on: the dimension(s) whose indices select a slice
#: (``dim=0`` on a ``(out, in)`` weight: each row), or ``None``: the whole tensor.
Dim = int | tuple[int, ...] | None


def _reduced_dims(x: Tensor, dim: Dim) -> list[int]:
    """The dimensions a slice spans: all but ``dim``."""
    if dim is None:
        return list(range(x.ndim))
    dims = (dim,) if isinstance(dim, int) else dim
    for d in dims:
        if not -x.ndim <= d < x.ndim:
            raise IndexError(f"dim {d} is out of range for a tensor with {x.ndim} dimensions")
    kept = {d % x.ndim for d in dims}
    return [d for d in range(x.ndim) if d not in kept]


def _compute_dtype(x: Tensor) -> torch.dtype:
    """Reductions of half-precision tensors run in float32."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _tolerance(dtype: torch.dtype) -> float:
    """Relative slack under which a slice counts as already in the set.

    Rescaling a slice to norm ``r`` lands within a few rounding errors of ``r``;
    without slack, projecting the result again would rescale it by one ulp. Half
    types round each element by up to ``eps / 4``; single and double precision
    also accumulate error in the norm itself.
    """
    eps = torch.finfo(dtype).eps
    return eps if dtype in (torch.float16, torch.bfloat16) else 4 * eps


def _norms(x: Tensor, dim: Dim, ord: float = 2.0) -> Tensor:
    """The ``ord``-norm of every slice, shaped to broadcast against ``x``."""
    reduced = _reduced_dims(x, dim)
    dtype = _compute_dtype(x)
    if not reduced:  # every element is a slice of its own
        return x.abs().to(dtype)
    norms: Tensor = torch.linalg.vector_norm(x, ord=ord, dim=reduced, keepdim=True, dtype=dtype)
    return norms


def _scale_to(x: Tensor, norms: Tensor, target: Tensor) -> Tensor:
    """Per-slice factors that bring each slice's norm from ``norms`` to ``target``.

    A slice already within tolerance of its target keeps the factor 1 exactly, so
    its values are returned bit for bit; its gradient is still that of
    ``target / norm`` (the identity inside a ball, the tangent projection on a
    sphere). A zero slice gets factor 0: it stays zero, with a zero gradient.
    """
    ratio = target / norms.clamp_min(torch.finfo(norms.dtype).tiny)
    unchanged = (norms - target).abs() <= _tolerance(x.dtype) * target
    one = torch.ones_like(ratio)
    if torch.is_grad_enabled() and x.requires_grad:
        one = one + (ratio - ratio.detach())
    return torch.where(norms == 0, 0.0, torch.where(unchanged, one, ratio))


def _rescaled(x: Tensor, scale: Tensor) -> Tensor:
    return (x * scale).to(x.dtype)


def project_l2_ball(x: Tensor, radius: float = 1.0, dim: Dim = None) -> Tensor:
    r"""Project each slice onto the L2 ball of radius ``radius``.

    .. math::

        C = \{y : \lVert y \rVert_2 \le r\}, \qquad
        P_C(x) = x \cdot \min\!\left(1, \frac{r}{\lVert x \rVert_2}\right)

    A slice inside the ball is returned unchanged, bit for bit (up to a relative
    slack of a few ulps, see the concepts page); a zero slice stays zero.

    Args:
        x: the tensor to project.
        radius: :math:`r \ge 0`. Default: ``1.0``.
        dim: the dimension(s) indexing the slices, or ``None`` for the whole
            tensor. Default: ``None``.

    Returns:
        The projected tensor.

    Example:
        >>> import torch
        >>> from torch_constraints.functional import project_l2_ball
        >>> project_l2_ball(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 2.0, dim=0)
        tensor([[1.2000, 1.6000],
                [0.3000, 0.4000]])
    """
    norms = _norms(x, dim)
    return _rescaled(x, _scale_to(x, norms, norms.clamp_max(radius)))


def project_l2_ball_(x: Tensor, radius: float = 1.0, dim: Dim = None) -> Tensor:
    """In-place :func:`project_l2_ball`."""
    norms = _norms(x, dim)
    return x.mul_(_scale_to(x, norms, norms.clamp_max(radius)))


def project_l2_sphere(x: Tensor, radius: float = 1.0, dim: Dim = None) -> Tensor:
    r"""Scale each nonzero slice to L2 norm ``radius``; zero slices stay zero.

    .. math::

        C = \{y : \lVert y \rVert_2 = r\}, \qquad P_C(x) = r \, \frac{x}{\lVert x \rVert_2}
        \quad (x \ne 0)

    Every point of the sphere is equally near to 0, so a zero slice has no unique
    projection; it is kept at zero (as Keras' ``UnitNorm`` does).

    Example:
        >>> import torch
        >>> from torch_constraints.functional import project_l2_sphere
        >>> project_l2_sphere(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), dim=0)
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """
    norms = _norms(x, dim)
    return _rescaled(x, _scale_to(x, norms, torch.full_like(norms, radius)))


def project_l2_sphere_(x: Tensor, radius: float = 1.0, dim: Dim = None) -> Tensor:
    """In-place :func:`project_l2_sphere`."""
    norms = _norms(x, dim)
    return x.mul_(_scale_to(x, norms, torch.full_like(norms, radius)))


def project_min_max_norm(
    x: Tensor, min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0, dim: Dim = 0
) -> Tensor:
    r"""Bring each slice's L2 norm into ``[min_value, max_value]``, Keras' ``MinMaxNorm`` formula.

    With :math:`n = \lVert x \rVert_2` per slice,

    .. math::

        d = \text{rate} \cdot \operatorname{clamp}(n, \text{min}, \text{max})
            + (1 - \text{rate}) \cdot n, \qquad \text{result} = x \cdot \frac{d}{n} .

    With ``rate = 1`` this is the projection onto the shell
    :math:`\{y : \text{min} \le \lVert y \rVert_2 \le \text{max}\}`; with ``rate < 1``
    it moves each slice only part of the way, and applying it twice moves further.
    Zero slices stay zero.

    Example:
        >>> import torch
        >>> from torch_constraints.functional import project_min_max_norm
        >>> project_min_max_norm(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 0.8, 2.0, rate=0.7)
        tensor([[1.7400, 2.3200],
                [0.4260, 0.5680]])
    """
    norms = _norms(x, dim)
    return _rescaled(x, _scale_to(x, norms, _min_max_target(norms, min_value, max_value, rate)))


def project_min_max_norm_(
    x: Tensor, min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0, dim: Dim = 0
) -> Tensor:
    """In-place :func:`project_min_max_norm`."""
    norms = _norms(x, dim)
    return x.mul_(_scale_to(x, norms, _min_max_target(norms, min_value, max_value, rate)))


def _min_max_target(norms: Tensor, min_value: float, max_value: float, rate: float) -> Tensor:
    clamped = norms.clamp(min_value, max_value)
    return clamped if rate == 1.0 else rate * clamped + (1.0 - rate) * norms


def project_l1_ball(x: Tensor, radius: float = 1.0, dim: Dim = None) -> Tensor:
    r"""Project each slice onto the L1 ball of radius ``radius`` (exact, sort-based).

    .. math::

        C = \{y : \lVert y \rVert_1 \le r\}, \qquad
        P_C(x)_i = \operatorname{sign}(x_i) \max(\lvert x_i \rvert - \theta, 0)

    with :math:`\theta \ge 0` the smallest value making the result feasible
    (Duchi et al., 2008); slices inside the ball are returned unchanged.

    Example:
        >>> import torch
        >>> from torch_constraints.functional import project_l1_ball
        >>> project_l1_ball(torch.tensor([3.0, -1.0, 0.5]), radius=3.0)
        tensor([ 2.5000, -0.5000,  0.0000])
    """
    rows, restore = _rows(x, dim)
    magnitude = rows.abs().to(_sorting_dtype(x))
    threshold = _simplex_threshold(magnitude, radius)
    projected = (rows.sign() * (magnitude - threshold).clamp_min(0)).to(x.dtype)
    slack = _sum_tolerance(x.dtype, rows.shape[-1])
    inside = magnitude.sum(dim=-1, keepdim=True) <= radius * (1 + slack)
    return restore(torch.where(inside, rows, projected))


def project_l1_ball_(x: Tensor, radius: float = 1.0, dim: Dim = None) -> Tensor:
    """In-place :func:`project_l1_ball`."""
    return x.copy_(project_l1_ball(x, radius, dim))


def project_simplex(x: Tensor, scale: float = 1.0, dim: Dim = None) -> Tensor:
    r"""Project each slice onto the simplex of nonnegative vectors summing to ``scale``.

    .. math::

        C = \{y : y_i \ge 0,\ \textstyle\sum_i y_i = s\}, \qquad
        P_C(x)_i = \max(x_i - \theta, 0)

    with :math:`\theta` found by sorting (Held et al., 1974; Duchi et al., 2008).
    Slices already on the simplex (up to rounding) are returned unchanged, and the
    gradient is that of the formula. ``-inf`` entries get weight 0.

    Example:
        >>> import torch
        >>> from torch_constraints.functional import project_simplex
        >>> project_simplex(torch.tensor([0.0, 0.0, float("-inf")]))
        tensor([0.5000, 0.5000, 0.0000])
    """
    rows, restore = _rows(x, dim)
    values = rows.to(_sorting_dtype(x))
    projected = (values - _simplex_threshold(values, scale)).clamp_min(0).to(x.dtype)
    total = values.sum(dim=-1, keepdim=True)
    on_simplex = (values >= 0).all(dim=-1, keepdim=True) & (
        (total - scale).abs() <= _sum_tolerance(x.dtype, rows.shape[-1]) * scale
    )
    kept = rows
    if torch.is_grad_enabled() and x.requires_grad:
        # the value of rows, the gradient of the formula
        kept = rows.detach() + (projected - projected.detach())
    return restore(torch.where(on_simplex, kept, projected))


def project_simplex_(x: Tensor, scale: float = 1.0, dim: Dim = None) -> Tensor:
    """In-place :func:`project_simplex`."""
    return x.copy_(project_simplex(x, scale, dim))


def _simplex_threshold(values: Tensor, total: float) -> Tensor:
    """The shift :math:`\theta` per row such that ``sum(max(values - theta, 0)) == total``."""
    ordered = values.sort(dim=-1, descending=True).values
    excess = ordered.cumsum(dim=-1) - total
    count = torch.arange(1, values.shape[-1] + 1, device=values.device, dtype=values.dtype)
    # NaN from -inf entries compares False: those entries are never in the support.
    support = (ordered - excess / count) > 0
    size = support.sum(dim=-1, keepdim=True).clamp_min(1)
    threshold = excess.gather(-1, size - 1) / size.to(values.dtype)
    # The cumulative sum carries the rounding error of the largest entries; one
    # correction on the (small) projected entries brings the sum back to `total`.
    kept = (values - threshold).clamp_min(0)
    active = (kept > 0).sum(dim=-1, keepdim=True).clamp_min(1)
    return threshold + (kept.sum(dim=-1, keepdim=True) - total) / active.to(values.dtype)


def _sorting_dtype(x: Tensor) -> torch.dtype:
    """Sort-based projections of single-precision tensors run in double precision."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else torch.float64


def _sum_tolerance(dtype: torch.dtype, length: int) -> float:
    """Slack of a sum of ``length`` entries: rounding grows with the number of terms."""
    return max(_tolerance(dtype), torch.finfo(dtype).eps * length)


def _rows(x: Tensor, dim: Dim) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """View ``x`` as a 2-D tensor with one slice per row, and the map back."""
    reduced = _reduced_dims(x, dim)
    kept = [d for d in range(x.ndim) if d not in reduced]
    order = kept + reduced
    moved = x.permute(order)
    moved_shape = moved.shape
    rows = moved.reshape(-1, math.prod(moved_shape[len(kept) :]))
    inverse = [order.index(d) for d in range(x.ndim)]

    def restore(result: Tensor) -> Tensor:
        return result.reshape(moved_shape).permute(inverse)

    return rows, restore
