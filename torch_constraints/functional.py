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

from . import _autograd
from ._rounding import constant_for_compile as _constant_for_compile
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


@_constant_for_compile
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


def _rows(
    x: Tensor, dim: Dim
) -> tuple[Tensor, Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """View ``x`` as a 2-D tensor with one slice per row.

    Returns the rows, the map of a rows-shaped tensor back to ``x``'s layout, and
    the map of a per-row ``(rows, 1)`` tensor to one that broadcasts against ``x``.
    """
    reduced = _reduced_dims(x, dim)
    kept = [d for d in range(x.ndim) if d not in reduced]
    order = kept + reduced
    moved = x.permute(order)
    moved_shape = moved.shape
    rows = moved.reshape(-1, math.prod(moved_shape[len(kept) :]))
    inverse = [order.index(d) for d in range(x.ndim)]
    per_row_shape = [*moved_shape[: len(kept)], *([1] * len(reduced))]

    def restore(result: Tensor) -> Tensor:
        return result.reshape(moved_shape).permute(inverse)

    def per_row(values: Tensor) -> Tensor:
        return values.reshape(per_row_shape).permute(inverse)

    return rows, restore, per_row


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
    float64, whatever the length of the slice: the norms and sums behind these tests
    are computed accurately (float64 accumulation for the smaller dtypes; scaled,
    compensated pairwise summation for float64), to within about one ``eps`` of the
    exact value, and a projected slice lands within about two ``eps`` of the set, so
    projecting it again changes nothing.

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
    return _SLACK_IN_EPS.get(dtype, 4) * torch.finfo(dtype).eps


def _wide(rows: Tensor) -> Tensor:
    """``rows`` in float64: every value of the smaller dtypes is exact there."""
    return rows.to(torch.float64)


def _compensated_sum(t: Tensor) -> Tensor:
    """Sum float64 ``t`` over its last dimension (keepdim) to about one rounding error.

    Pairwise summation in which every addition also yields its exact rounding
    error (Knuth's TwoSum); the errors are added back at the end. One vectorised
    step per level of the tree, ``log2(n)`` steps in all.
    """
    if t.shape[-1] == 0:
        return t.sum(dim=-1, keepdim=True)
    error = torch.zeros_like(t[..., :1])
    while t.shape[-1] > 1:
        if t.shape[-1] % 2:
            t = torch.nn.functional.pad(t, (0, 1))
        a, b = t[..., 0::2], t[..., 1::2]
        total = a + b
        b_part = total - a
        error = error + ((a - (total - b_part)) + (b - b_part)).sum(dim=-1, keepdim=True)
        t = total
    return t + error


def _accurate_sum(wide: Tensor, dtype: torch.dtype) -> Tensor:
    """Row sums of float64 ``wide`` holding values of ``dtype``, accurate to ~1 rounding.

    Values of the smaller dtypes carry at most 24 significant bits, so a float64
    sum of up to 2**26 of them errs by less than an eighth of their ``eps``.
    """
    if dtype == torch.float64:
        return _compensated_sum(wide)
    return wide.sum(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------- L2 norms
def _finite(x: Tensor) -> Tensor:
    """``x`` with ``+inf``/``-inf`` replaced by the dtype's largest finite value; NaN kept."""
    big = torch.finfo(x.dtype).max
    return x.clamp(-big, big)


#: Rows are handled in blocks of about this many elements, so that a block, its float64
#: copy and the per-row work on it stay in cache (a whole-tensor float64 copy costs a
#: fresh allocation and a trip through memory; see ``_norm_parts``).
_BLOCK = 1 << 16


def _block_rows(rows: Tensor) -> int:
    """How many rows make a block of about ``_BLOCK`` elements (at least one).

    On the CPU only: a GPU fuses the widening into its reduction and would only pay
    a kernel launch per block, so there one block holds every row.
    """
    if rows.device.type != "cpu":
        return max(1, rows.shape[0])
    return max(1, _BLOCK // max(1, rows.shape[-1]))


def _blocks(rows: Tensor) -> tuple[Tensor, ...]:
    """``rows`` split into blocks of whole rows, about ``_BLOCK`` elements each."""
    return torch.split(rows, _block_rows(rows))


def _wide_norms(rows: Tensor) -> Tensor:
    """Float64 L2 norms ``(rows, 1)`` of non-float64 ``rows``, ``±inf`` counted as ``±max``.

    Every value of the smaller dtypes, and its square, is exact in float64, and the
    float64 sum of squares neither overflows nor underflows. Each block is widened
    into a small contiguous float64 copy that stays in cache (so each row is summed
    the same way whatever its layout or block), then reduced.
    """
    big = torch.finfo(rows.dtype).max
    with torch.no_grad():
        parts = [
            torch.linalg.vector_norm(
                block.to(torch.float64, memory_format=torch.contiguous_format).clamp_(-big, big),
                dim=-1,
                keepdim=True,
            )
            for block in _blocks(rows)
        ]
        ns = torch.cat(parts) if parts else rows.new_zeros((0, 1), dtype=torch.float64)
    if torch.is_grad_enabled() and rows.requires_grad:
        # The same value (exact + 0), with the gradient of the differentiable norm.
        exact = torch.linalg.vector_norm(_wide(_finite(rows)), dim=-1, keepdim=True)
        ns = ns + (exact - exact.detach())
    return ns


def _norm_parts(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's L2 norm as ``(ns, s)``: float64 ``(rows, 1)`` with ``norm = ns / s``.

    The smaller dtypes are squared and summed in float64 (:func:`_wide_norms`), where
    nothing overflows or underflows (``s = 1``); ``±inf`` counts as the largest
    finite value. Float64 rows (finite: the caller clamps them) are first scaled by
    a power of two ``s`` that brings their largest magnitude into ``[0.5, 1)``
    (exact), as BLAS ``nrm2`` and ``hypot`` do, then summed with compensation.
    """
    if rows.dtype != torch.float64:
        ns = _wide_norms(rows)
        return ns, torch.ones_like(ns.detach())
    with torch.no_grad():
        largest = torch.maximum(rows.amax(dim=-1, keepdim=True), -rows.amin(dim=-1, keepdim=True))
        exponent = torch.frexp(largest).exponent.clamp(-1000, 1000)
        s = torch.ldexp(torch.ones_like(largest), -exponent)
    ns = _compensated_sum((rows * s).square()).sqrt()
    return ns, s


def _norm_factors(rows: Tensor, lo: float, hi: float, rate: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-row factors ``(f1, f2)``: ``rows * f1 * f2`` has its norm brought into ``[lo, hi]``.

    ``f1`` is a power of two and ``f2`` a normal number of the computing dtype, so
    that the product is right whether the factor is tiny or huge. A row within
    :func:`tolerance` of ``[lo, hi]`` gets ``(1, 1)`` exactly and is returned bit for
    bit; its Jacobian is the identity when its norm lies in ``[lo, hi]`` (a zero row
    of a ball included) and that of :math:`x \\cdot \\text{bound} / n` otherwise (on a
    sphere). A zero row of a set that excludes 0 gets ``(1, 0)``: it stays zero,
    with a zero gradient.
    """
    ns, s = _norm_parts(rows)
    n = ns / s  # float64; inf only for float64 rows whose norm exceeds its range
    slack = tolerance(rows.dtype)
    zero = n == 0
    kept = (n >= lo * (1 - slack)) & (n <= hi * (1 + slack))
    pinned = torch.where(n > hi, hi, lo)
    g = pinned / torch.where(ns == 0, 1.0, ns)  # the factor is g * s; NaN stays NaN
    if rate != 1.0:  # Keras' partial step: d = rate * clamp(n) + (1 - rate) * n
        g = rate * g + (1.0 - rate) / s
    if rows.dtype == torch.float64:
        f1, f2 = s, g
    else:  # s == 1: split g into a power of two and a float32 normal number
        with torch.no_grad():
            e = torch.frexp(g).exponent
            f1 = torch.ldexp(torch.ones_like(g), (e - e.clamp(-120, 120)).clamp(-126, 127))
        f2 = g / f1
    compute = torch.float64 if rows.dtype == torch.float64 else torch.float32
    one = torch.ones_like(n)
    if torch.is_grad_enabled() and rows.requires_grad:
        # Value 1, gradient of bound / n where the norm is pinned to a bound.
        pinned_here = kept & ~zero & ((n > hi) | (n < lo) | (lo == hi))
        ratio = pinned / torch.where(pinned_here, n, 1.0)
        one = torch.where(pinned_here, one + (ratio - ratio.detach()), one)
    zero_out = zero & ~kept  # a zero row outside the set (lo > 0): stays zero
    f1 = torch.where(kept | zero_out, 1.0, f1).to(compute)
    f2 = torch.where(kept, one, torch.where(zero_out, 0.0, f2)).to(compute)
    return f1, f2


def _project_norm(x: Tensor, dim: Dim, lo: float, hi: float, rate: float = 1.0) -> Tensor:
    if not (torch.is_grad_enabled() and x.requires_grad):
        return _project_norm_(x.clone(), dim, lo, hi, rate)
    rows, _, per_row = _rows(x, dim)
    rows = rows if x.dtype != torch.float64 else _finite(rows)
    f1, f2 = _norm_factors(rows, lo, hi, rate)
    return (_finite(x) * per_row(f1) * per_row(f2)).to(x.dtype)


def _project_norm_(x: Tensor, dim: Dim, lo: float, hi: float, rate: float = 1.0) -> Tensor:
    """Scale each slice of ``x`` in place by its factors; ``±inf`` becomes ``±max`` first.

    Non-float64 norms count ``±inf`` as ``±max`` themselves, so ``x`` is clamped
    only while it is multiplied, block by block while each block is in cache,
    when its rows are a view of ``x`` (a full pass over ``x`` otherwise).
    """
    big = torch.finfo(x.dtype).max
    if x.dtype == torch.float64:
        x.clamp_(-big, big)
    rows, _, per_row = _rows(x, dim)
    f1, f2 = _norm_factors(rows, lo, hi, rate)
    if rows.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
        return x.clamp_(-big, big).mul_(per_row(f1)).mul_(per_row(f2))
    step = _block_rows(rows)
    blocks = zip(_blocks(rows), torch.split(f1, step), torch.split(f2, step), strict=True)
    for block, g1, g2 in blocks:
        block.clamp_(-big, big).mul_(g1).mul_(g2)
    return x


def project_l2_ball(x: Tensor, radius: float = 1.0, dim: Dim = None) -> Tensor:
    r"""Project each slice onto the L2 ball of radius ``radius``.

    .. math::

        C = \{y : \lVert y \rVert_2 \le r\}, \qquad
        P_C(x) = x \cdot \min\!\left(1, \frac{r}{\lVert x \rVert_2}\right)

    A slice inside the ball (up to :func:`tolerance`) is returned unchanged, bit for
    bit, with the identity Jacobian (a zero slice included). The norm is computed
    without overflow or underflow at every finite magnitude; an infinite entry
    counts as the dtype's largest finite value, and a NaN makes its slice NaN.

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
    return _project_norm(x, dim, 0.0, radius)


def project_l2_ball_(x: Tensor, radius: float = 1.0, dim: Dim = None) -> Tensor:
    """In-place :func:`project_l2_ball`: the same values, bit for bit, written into ``x``."""
    return _project_norm_(x, dim, 0.0, radius)


def project_l2_sphere(x: Tensor, radius: float = 1.0, dim: Dim = None) -> Tensor:
    r"""Scale each nonzero slice to L2 norm ``radius``; zero slices stay zero.

    .. math::

        C = \{y : \lVert y \rVert_2 = r\}, \qquad P_C(x) = r \, \frac{x}{\lVert x \rVert_2}
        \quad (x \ne 0)

    Every point of the sphere is equally near to 0, so a zero slice has no unique
    projection; it is kept at zero (as Keras' ``UnitNorm`` does), with a zero
    gradient. Slices within :func:`tolerance` of the sphere are returned bit for bit.

    Example:
        >>> import torch
        >>> from torch_constraints.functional import project_l2_sphere
        >>> project_l2_sphere(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), dim=0)
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """
    return _project_norm(x, dim, radius, radius)


def project_l2_sphere_(x: Tensor, radius: float = 1.0, dim: Dim = None) -> Tensor:
    """In-place :func:`project_l2_sphere`."""
    return _project_norm_(x, dim, radius, radius)


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
    Zero slices stay zero (with the identity Jacobian when ``min_value`` is 0).

    Example:
        >>> import torch
        >>> from torch_constraints.functional import project_min_max_norm
        >>> project_min_max_norm(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 0.8, 2.0, rate=0.7)
        tensor([[1.7400, 2.3200],
                [0.4260, 0.5680]])
    """
    return _project_norm(x, dim, min_value, max_value, rate)


def project_min_max_norm_(
    x: Tensor, min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0, dim: Dim = 0
) -> Tensor:
    """In-place :func:`project_min_max_norm`."""
    return _project_norm_(x, dim, min_value, max_value, rate)


# ---------------------------------------------------------------------------- simplex, L1
def _shifted(wide: Tensor) -> Tensor:
    """Rows minus their maximum (a projection onto a simplex ignores a common shift).

    The largest entry becomes 0, so the threshold and the results are computed on
    numbers no larger than the simplex's scale, whatever the input's magnitude. If
    the maximum is infinite, the entries equal to it become 0 and the others
    ``-inf`` (the limit of the projection); a NaN makes the row NaN.
    """
    top = wide.detach().amax(dim=-1, keepdim=True)
    limit = torch.where(wide.detach() == top, 0.0, -math.inf)
    return torch.where(top.isinf(), limit, wide - top)


def _simplex_of_shifted(shifted: Tensor, total: float, dtype: torch.dtype) -> Tensor:
    r"""``max(shifted - theta, 0)`` summing to ``total`` (float64 rows with maximum 0).

    :math:`\theta` comes from sorting (Held et al., 1974; Duchi et al., 2008); one
    correction, from an accurate sum of the result, removes the rounding error of
    the cumulative sum.
    """
    ordered = shifted.sort(dim=-1, descending=True).values
    excess = ordered.cumsum(dim=-1) - total
    count = torch.arange(1, shifted.shape[-1] + 1, device=shifted.device, dtype=shifted.dtype)
    # An entry in the support lies within `total` of the maximum 0, so its cumulative
    # sum is finite: an infinite one (-inf entries, overflow far below) is outside.
    support = ((ordered - excess / count) > 0) & excess.isfinite()
    size = support.sum(dim=-1, keepdim=True).clamp_min(1)
    theta = excess.gather(-1, size - 1) / size.to(shifted.dtype)
    kept = (shifted - theta).clamp_min(0)
    active = (kept > 0).sum(dim=-1, keepdim=True).clamp_min(1)
    correction = (_accurate_sum(kept, dtype) - total) / active.to(shifted.dtype)
    return torch.where(kept == 0, 0.0, kept - correction).clamp_min(0)


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
    rows, restore, _ = _rows(x, dim)
    magnitude = _wide(rows).abs()
    inside = _accurate_sum(magnitude, x.dtype) <= radius * (1 + tolerance(x.dtype))
    shrunk = _simplex_of_shifted(_shifted(magnitude), radius, x.dtype)
    projected = (rows.sign() * shrunk).to(x.dtype)
    return restore(torch.where(inside, rows, projected))


def project_l1_ball_(x: Tensor, radius: float = 1.0, dim: Dim = None) -> Tensor:
    """In-place :func:`project_l1_ball`."""
    return x.copy_(project_l1_ball(x, radius, dim))


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

    Example:
        >>> import torch
        >>> from torch_constraints.functional import project_simplex
        >>> project_simplex(torch.tensor([0.0, 0.0, float("-inf")]))
        tensor([0.5000, 0.5000, 0.0000])
    """
    rows, restore, _ = _rows(x, dim)
    values = _wide(rows)
    projected = _simplex_of_shifted(_shifted(values), scale, x.dtype).to(x.dtype)
    on_simplex = (values >= 0).all(dim=-1, keepdim=True) & (
        (_accurate_sum(values, x.dtype) - scale).abs() <= tolerance(x.dtype) * scale
    )
    kept = rows
    if torch.is_grad_enabled() and x.requires_grad:
        # the value of rows, the gradient of the formula
        kept = rows.detach() + (projected - projected.detach())
    return restore(torch.where(on_simplex, kept, projected))


def project_simplex_(x: Tensor, scale: float = 1.0, dim: Dim = None) -> Tensor:
    """In-place :func:`project_simplex`."""
    return x.copy_(project_simplex(x, scale, dim))
