r"""Pure projection kernels, one per feasible set, with in-place twins ending in ``_``.

Each ``project_*`` function is differentiable and leaves its input alone; each
``project_*_`` twin writes the same values into its input (call it under
:func:`torch.no_grad` on tensors that require grad). The constraint classes are
thin holders of these kernels' arguments.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from . import _autograd, _l2
from ._rounding import constant_for_compile, inward_scalar, inward_tensor

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
    "tolerance",
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

    Raises:
        ValueError: if a finite bound lies beyond the largest finite value of
            ``x.dtype`` on the feasible side (every element would become infinite).

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
    infinite bounds become ``None``. Tensor bounds are moved to ``x``'s device.

    Raises:
        ValueError: if a finite number bound lies beyond the dtype's finite range on
            the feasible side (``min = 70000`` for float16): every element would
            become infinite; or if number bounds cross, or hold no value of the dtype
            between them. (Tensor bounds are checked when they are registered.)

    Example:
        >>> import torch
        >>> from torch_constraints.functional import box_bounds
        >>> box_bounds(torch.zeros(2), -0.05, float("inf"))
        (-0.04999999701976776, None)
    """
    scalar_min = None if isinstance(min, Tensor) else min
    scalar_max = None if isinstance(max, Tensor) else max
    lo, hi = scalar_bounds(scalar_min, scalar_max, x.dtype)
    tensors = isinstance(min, Tensor), isinstance(max, Tensor)
    if not any(tensors):
        return lo, hi
    bounds: list[Bound] = []
    for name, bound, scalar in (("min", min, lo), ("max", max, hi)):
        if not isinstance(bound, Tensor):  # torch.clamp takes two tensors, not one of each
            bounds.append(
                None if scalar is None else torch.full((), scalar, dtype=x.dtype, device=x.device)
            )
            continue
        # A constraint recorded with parametrize=False is no submodule: module.to() does
        # not move its tensor bounds, so they follow the tensor here.
        bounds.append(inward_tensor(bound.to(x.device), x.dtype, lower=name == "min"))
    return bounds[0], bounds[1]


@constant_for_compile
def scalar_bounds(
    min: float | None, max: float | None, dtype: torch.dtype
) -> tuple[float | None, float | None]:
    """``(min, max)`` rounded inward to ``dtype``; infinite bounds become ``None``.

    A pure function of Python constants, cached: ``torch.compile`` evaluates it while
    tracing and puts the result into the graph as constants.
    """
    return _scalar_bounds(min, max, dtype)


@functools.lru_cache(maxsize=1024)
def _scalar_bounds(
    min: float | None, max: float | None, dtype: torch.dtype
) -> tuple[float | None, float | None]:
    result: list[float | None] = []
    for name, bound, lower in (("min", min, True), ("max", max, False)):
        if bound is None or math.isinf(bound):
            result.append(None)
            continue
        rounded = inward_scalar(float(bound), dtype, lower=lower)
        if math.isinf(rounded):
            refuse_out_of_range(name, bound, dtype)
        result.append(rounded)
    lo, hi = result
    if lo is not None and hi is not None and lo > hi:
        if min > max:  # type: ignore[operator]
            raise ValueError(f"min must be <= max, got min={min}, max={max}")
        raise ValueError(
            f"no {dtype} value lies in [min, max] (the range is narrower than the dtype's "
            f"spacing), got min={min}, max={max}"
        )
    return lo, hi


def refuse_out_of_range(name: str, bound: Bound, dtype: torch.dtype) -> None:
    """Raise the ``ValueError`` of a bound beyond ``dtype``'s range on the feasible side."""
    info = torch.finfo(dtype)
    described = f"tensor of shape {tuple(bound.shape)}" if isinstance(bound, Tensor) else bound
    limit = f"above the largest finite {dtype} value ({info.max:g})"
    side = math.inf
    if name == "max":
        limit, side = f"below the lowest finite {dtype} value ({info.min:g})", -math.inf
    raise ValueError(
        f"{name}={described} is {limit}: the constrained elements would all become {side}"
    )


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


def _rows(x: Tensor, dim: Dim) -> tuple[Tensor, Callable[[Tensor], Tensor], bool]:
    """``x`` as a contiguous 2-D tensor with one slice per row.

    Returns the rows, the map of a rows-shaped tensor back to ``x``'s layout, and
    whether the rows are a view of ``x`` (else a copy). Every slice is thus reduced
    with the same memory layout, whatever ``x``'s strides or batch: the same row
    gives the same result bit for bit, alone or stacked with others.
    """
    if dim == 0 and x.ndim == 2 and x.is_contiguous():  # a Linear weight's rows: x itself
        return x, _same, True
    reduced = _reduced_dims(x, dim)
    count, shape = x.ndim - len(reduced), x.shape
    if reduced == list(range(count, x.ndim)) and x.is_contiguous():  # leading dims: a view
        rows = x.view(math.prod(shape[:count]), math.prod(shape[count:]))
        return rows, lambda r: r.reshape(shape), True
    kept = [d for d in range(x.ndim) if d not in reduced]
    order = kept + reduced
    moved = x.permute(order)
    shape = moved.shape
    rows = moved.reshape(math.prod(shape[: len(kept)]), math.prod(shape[len(kept) :]))
    inverse = [order.index(d) for d in range(x.ndim)]
    return rows.contiguous(), lambda r: r.reshape(shape).permute(inverse), moved.is_contiguous()


def _same(rows: Tensor) -> Tensor:
    return rows


# ---------------------------------------------------------------------------- accuracy
#: Relative slack of each membership test, per dtype (see :func:`tolerance`).
_SLACK_IN_EPS = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 2, torch.float64: 4}


def tolerance(dtype: torch.dtype) -> float:
    r"""Return the relative slack under which a slice counts as already in its set.

    A slice of an L2 ball, shell or sphere is kept, bit for bit, when its L2 norm
    :math:`n` satisfies :math:`\text{min}(1 - \tau) \le n \le \text{max}(1 + \tau)`;
    a slice of an L1 ball when :math:`\lVert x \rVert_1 \le r (1 + \tau)`; a slice of
    the simplex when it is nonnegative and :math:`\lvert \sum_i x_i - s \rvert \le \tau s`.
    :math:`\tau` is ``2 * eps`` for float16, bfloat16 and float32 and ``4 * eps`` for
    float64, whatever the length of the slice: the decision is made on a norm or sum
    certified to a few rounding errors at any length and magnitude (see
    :mod:`torch_constraints._l2` and the guarantees page), and a projected slice lands
    inside the set, so projecting it again changes nothing.

    Args:
        dtype: a floating-point dtype.

    Returns:
        :math:`\tau` for ``dtype``.

    Example:
        >>> import torch
        >>> from torch_constraints.functional import tolerance
        >>> tolerance(torch.float32) == 2 * torch.finfo(torch.float32).eps
        True
    """
    return _TAU.get(dtype) or _SLACK_IN_EPS.get(dtype, 4) * torch.finfo(dtype).eps


_TAU = {dtype: slack * torch.finfo(dtype).eps for dtype, slack in _SLACK_IN_EPS.items()}


# ---------------------------------------------------------------------------- L2 norms
def _apply(
    x: Tensor, dim: Dim, inplace: bool, kernel: Callable[..., Tensor | None], *args: float
) -> Tensor | None:
    """``kernel(rows, *args, inplace=...)`` on ``x``'s slices, one per row (see :func:`_rows`).

    Returns a new tensor, or in place ``x``, or ``None`` when the kernel changed nothing.
    (``hard_project`` hands a sharded tensor, FSDP2's DTensor, to the kernels gathered:
    see ``torch_constraints._distributed``.)
    """
    rows, restore, view = _rows(x, dim)
    result = kernel(rows, *args, inplace=inplace)
    if not inplace:
        return restore(result)  # type: ignore[arg-type]
    if result is None:
        return None
    if not view:
        x.copy_(restore(result))
    return x


def _project_norm(
    x: Tensor, dim: Dim, lo: float, hi: float, rate: float = 1.0, *, inplace: bool = False
) -> Tensor | None:
    """The norm kernels; ``rate < 1``: Keras' step ``x + rate (P(x) - x)``, exact where kept."""
    tau = _TAU.get(x.dtype) or tolerance(x.dtype)
    if rate == 1.0:
        return _apply(x, dim, inplace, _l2.project_rows, lo, hi, tau)
    return _apply(x, dim, inplace, _norm_step_rows, lo, hi, tau, rate)


def _norm_step_rows(
    rows: Tensor, lo: float, hi: float, tau: float, rate: float, *, inplace: bool
) -> Tensor:
    projected = _l2.project_rows(rows, lo, hi, tau, inplace=False)
    return rows.lerp_(projected, rate) if inplace else rows.lerp(projected, rate)  # type: ignore[arg-type]


def project_l2_ball(x: Tensor, radius: float = 1.0, dim: Dim = None) -> Tensor:
    r"""Project each slice onto the L2 ball of radius ``radius``.

    .. math::

        C = \{y : \lVert y \rVert_2 \le r\}, \qquad
        P_C(x) = x \cdot \min\!\left(1, \frac{r}{\lVert x \rVert_2}\right)

    A slice in the ball (up to :func:`tolerance`) is returned unchanged, bit for bit,
    with the identity Jacobian (a zero slice included). A slice outside lands at a
    norm of at most ``radius``, within ``1e-5`` relative of :math:`P_C(x)` in float32
    (``1e-13`` in float64; one unit in the last place more in float16 and bfloat16),
    at every finite magnitude: see :mod:`torch_constraints._l2` for the bound. An
    infinite entry counts as the dtype's largest finite value; a NaN makes its slice
    NaN.

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
    return _project_norm(x, dim, 0.0, radius)  # type: ignore[return-value]


def project_l2_ball_(x: Tensor, radius: float = 1.0, dim: Dim = None) -> Tensor:
    """In-place :func:`project_l2_ball`: the same values, bit for bit, written into ``x``."""
    _project_norm(x, dim, 0.0, radius, inplace=True)
    return x


def project_l2_sphere(x: Tensor, radius: float = 1.0, dim: Dim = None) -> Tensor:
    r"""Scale each nonzero slice to L2 norm ``radius``; zero slices stay zero.

    .. math::

        C = \{y : \lVert y \rVert_2 = r\}, \qquad P_C(x) = r \, \frac{x}{\lVert x \rVert_2}
        \quad (x \ne 0)

    Every point of the sphere is equally near to 0, so a zero slice has no unique
    projection; it is kept at zero (as Keras' ``UnitNorm`` does), with a zero
    gradient. Slices within :func:`tolerance` of the sphere are returned bit for bit,
    with the Jacobian of the formula; the others land within :func:`tolerance`.

    Raises:
        ValueError: if the slices have no elements (the sphere in no dimensions is empty).

    Example:
        >>> import torch
        >>> from torch_constraints.functional import project_l2_sphere
        >>> project_l2_sphere(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), dim=0)
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """
    return _project_norm(x, dim, radius, radius)  # type: ignore[return-value]


def project_l2_sphere_(x: Tensor, radius: float = 1.0, dim: Dim = None) -> Tensor:
    """In-place :func:`project_l2_sphere`."""
    _project_norm(x, dim, radius, radius, inplace=True)
    return x


def project_min_max_norm(
    x: Tensor, min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0, dim: Dim = 0
) -> Tensor:
    r"""Bring each slice's L2 norm into ``[min_value, max_value]``, Keras' ``MinMaxNorm`` formula.

    With :math:`n = \lVert x \rVert_2` per slice,

    .. math::

        d = \text{rate} \cdot \operatorname{clamp}(n, \text{min}, \text{max})
            + (1 - \text{rate}) \cdot n, \qquad \text{result} = x \cdot \frac{d}{n} .

    With ``rate = 1`` this is the projection onto the shell
    :math:`\{y : \text{min} \le \lVert y \rVert_2 \le \text{max}\}`, with the
    guarantees of :func:`project_l2_ball` (a slice moved down lands just inside
    ``max_value``); with ``rate < 1`` it moves each slice only part of the way, and
    applying it twice moves further. Zero slices stay zero (with the identity
    Jacobian when ``min_value`` is 0).

    Raises:
        ValueError: if ``min_value > 0`` and the slices have no elements.

    Example:
        >>> import torch
        >>> from torch_constraints.functional import project_min_max_norm
        >>> project_min_max_norm(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 0.8, 2.0, rate=0.7)
        tensor([[1.7400, 2.3200],
                [0.4260, 0.5680]])
    """
    return _project_norm(x, dim, min_value, max_value, rate)  # type: ignore[return-value]


def project_min_max_norm_(
    x: Tensor, min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0, dim: Dim = 0
) -> Tensor:
    """In-place :func:`project_min_max_norm`."""
    _project_norm(x, dim, min_value, max_value, rate, inplace=True)
    return x


# ---------------------------------------------------------------------------- simplex, L1
def _sum(wide: Tensor, dtype: torch.dtype) -> Tensor:
    """Row sums of float64 ``wide`` (values of ``dtype``), within about one rounding of ``dtype``.

    A float64 sum in any order errs by at most ``n * 2**-53`` relative to the sum of the
    magnitudes: far below the rounding of the smaller dtypes. Float64 values take
    :func:`~torch_constraints._l2.accurate_sum`.
    """
    return _l2.accurate_sum(wide) if dtype == torch.float64 else wide.sum(dim=-1, keepdim=True)


def _simplex_of(values: Tensor, total: float, dtype: torch.dtype) -> Tensor:
    r"""``max(values - theta, 0)`` summing to ``total``, each row, in float64.

    :math:`\theta` comes from sorting (Held et al., 1974; Duchi et al., 2008), in the
    values' own dtype. Each row's maximum is subtracted first (the projection ignores
    a common shift), so the threshold and the results are computed on numbers no
    larger than ``total``, whatever the input's magnitude: the cumulative sum over
    the support errs by at most ``k 2**-53 total``, below the rounding of the smaller
    dtypes; for float64 one correction, from an accurate sum of the result, removes
    it. If the maximum is infinite, the entries equal to it share ``total`` and the
    others get 0 (the limit of the projection); a NaN makes the row NaN.
    """
    ordered = values.sort(dim=-1, descending=True).values
    top = ordered[..., :1].detach().to(torch.float64)
    infinite = top.isinf()
    if not _l2.branches(values) or bool(infinite.any()):
        limit = torch.where(values == top, 0.0, -math.inf)
        shifted = torch.where(infinite, limit, values - top)
        ordered = torch.where(infinite, torch.where(ordered == top, 0.0, -math.inf), ordered - top)
    else:  # (float64 results, in one pass from any dtype)
        shifted, ordered = values - top, ordered - top
    excess = ordered.cumsum(dim=-1) - total
    count = torch.arange(1, values.shape[-1] + 1, device=values.device, dtype=torch.float64)
    support = ordered * count > excess  # -inf entries: -inf > -inf, no
    if dtype == torch.float64:  # a cumulative sum that overflowed to -inf: outside
        support &= excess.isfinite()
    size = support.sum(dim=-1, keepdim=True).clamp_min(1)
    theta = excess.gather(-1, size - 1) / size
    kept = (shifted - theta).clamp_min(0)
    if dtype != torch.float64:
        return kept
    zero = kept == 0
    active = (values.shape[-1] - zero.sum(dim=-1, keepdim=True)).clamp_min(1)
    correction = (_sum(kept, dtype) - total) / active
    return torch.where(zero, 0.0, kept - correction).clamp_min(0)


def _l1_rows(rows: Tensor, radius: float, *, inplace: bool = False) -> Tensor | None:
    """The L1 projection of each row; in place: ``rows``, or ``None`` when all were inside."""
    magnitude = rows.abs()
    wide = magnitude.detach().to(torch.float64)
    inside = _sum(wide, rows.dtype) <= radius * (1 + tolerance(rows.dtype))
    if rows.numel() == 0 or (_l2.branches(rows) and bool(inside.all())):
        return None if inplace else rows.clone()
    shrunk = torch.copysign(_simplex_of(magnitude, radius, rows.dtype), rows).to(rows.dtype)
    result = _keep(inside, rows, shrunk)
    return rows.copy_(result) if inplace else result


def _keep(kept: Tensor, rows: Tensor, projected: Tensor) -> Tensor:
    """``rows`` where ``kept`` (one flag per row), ``projected`` elsewhere."""
    if _l2.branches(rows) and not bool(kept.any()):  # (the usual case: a pass saved)
        return projected
    return torch.where(kept, rows, projected)


def _project_l1_ball(x: Tensor, dim: Dim, radius: float, *, inplace: bool) -> Tensor | None:
    return _apply(x, dim, inplace, _l1_rows, radius)


def project_l1_ball(x: Tensor, radius: float = 1.0, dim: Dim = None) -> Tensor:
    r"""Project each slice onto the L1 ball of radius ``radius`` (exact, sort-based).

    .. math::

        C = \{y : \lVert y \rVert_1 \le r\}, \qquad
        P_C(x)_i = \operatorname{sign}(x_i) \max(\lvert x_i \rvert - \theta, 0)

    with :math:`\theta \ge 0` the smallest value making the result feasible
    (Duchi et al., 2008). Slices inside the ball (accurate sum, up to
    :func:`tolerance`) are returned unchanged. Infinite entries share the radius
    equally; a NaN makes its slice NaN.

    Example:
        >>> import torch
        >>> from torch_constraints.functional import project_l1_ball
        >>> project_l1_ball(torch.tensor([3.0, -1.0, 0.5]), radius=3.0)
        tensor([ 2.5000, -0.5000,  0.0000])
    """
    return _project_l1_ball(x, dim, radius, inplace=False)  # type: ignore[return-value]


def project_l1_ball_(x: Tensor, radius: float = 1.0, dim: Dim = None) -> Tensor:
    """In-place :func:`project_l1_ball`."""
    _project_l1_ball(x, dim, radius, inplace=True)
    return x


def _simplex_rows(rows: Tensor, scale: float, *, inplace: bool = False) -> Tensor | None:
    """The simplex projection of each row; in place: ``rows``, or ``None`` when all were on it."""
    if rows.shape[0] == 0:
        return None if inplace else rows.clone()
    if rows.shape[-1] == 0:
        raise ValueError(f"a slice of 0 elements has no point summing to {scale}: the set is empty")
    values = rows.detach()
    on_simplex = (values.amin(dim=-1, keepdim=True) >= 0) & (  # NaN: no
        (_sum(values.to(torch.float64), rows.dtype) - scale).abs() <= tolerance(rows.dtype) * scale
    )
    if inplace and _l2.branches(rows) and bool(on_simplex.all()):
        return None
    projected = _simplex_of(rows, scale, rows.dtype).to(rows.dtype)
    kept = rows
    if torch.is_grad_enabled() and rows.requires_grad:
        # the value of rows, the gradient of the formula
        kept = rows.detach() + (projected - projected.detach())
    result = _keep(on_simplex, kept, projected)
    return rows.copy_(result) if inplace else result


def _project_simplex(x: Tensor, dim: Dim, scale: float, *, inplace: bool) -> Tensor | None:
    return _apply(x, dim, inplace, _simplex_rows, scale)


def project_simplex(x: Tensor, scale: float = 1.0, dim: Dim = None) -> Tensor:
    r"""Project each slice onto the simplex of nonnegative vectors summing to ``scale``.

    .. math::

        C = \{y : y_i \ge 0,\ \textstyle\sum_i y_i = s\}, \qquad
        P_C(x)_i = \max(x_i - \theta, 0)

    with :math:`\theta` found by sorting (Held et al., 1974; Duchi et al., 2008),
    after subtracting each slice's maximum (the projection ignores a common shift),
    so that inputs of any magnitude give exact results. Slices already on the
    simplex (accurate sum, up to :func:`tolerance`) are returned unchanged, and the
    gradient is that of the formula. ``-inf`` entries get weight 0; ``+inf``
    entries share ``scale`` equally; a NaN makes its slice NaN.

    Raises:
        ValueError: if the slices have no elements (no point sums to ``scale``).

    Example:
        >>> import torch
        >>> from torch_constraints.functional import project_simplex
        >>> project_simplex(torch.tensor([0.0, 0.0, float("-inf")]))
        tensor([0.5000, 0.5000, 0.0000])
    """
    return _project_simplex(x, dim, scale, inplace=False)  # type: ignore[return-value]


def project_simplex_(x: Tensor, scale: float = 1.0, dim: Dim = None) -> Tensor:
    """In-place :func:`project_simplex`."""
    _project_simplex(x, dim, scale, inplace=True)
    return x
