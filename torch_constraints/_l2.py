r"""Certified L2 norms for the norm sets: a fast path in the tensor's own precision, an exact one.

Every slice (a row of ``rows``) is brought into the shell
:math:`\{\text{lo} \le \lVert y \rVert_2 \le \text{hi}\}` (a ball when ``lo = 0``, a
sphere when ``lo = hi``): kept bit for bit when its norm :math:`m` passes the
membership test :math:`\text{lo}(1 - \tau) \le m \le \text{hi}(1 + \tau)`, scaled otherwise.

**The fast norm.** A slice of :math:`n` elements is cut into chunks of :math:`c = 128`
(the last one shorter); :func:`torch.linalg.vector_norm` returns each chunk's norm
in the compute precision :math:`u` (:math:`2^{-24}`: float32, also for float16 and
bfloat16; :math:`2^{-53}`: float64), and the chunk norms are combined by
``vector_norm`` in float64, in chunks of :math:`c` again while more than :math:`c`
remain (:math:`L` float64 levels; none when :math:`n \le c`). However PyTorch orders a
sum of :math:`k` nonnegative terms, it errs by at most
:math:`\gamma_{k-1} = (k-1)u / (1 - (k-1)u)` relative (Higham, *Accuracy and
Stability of Numerical Algorithms*, 2002, §4.2); a square, a square root and its
re-squaring add one rounding each. So the computed norm :math:`\hat m` of a slice
with exact sum of squares :math:`S` satisfies

.. math::

    S (1 - \beta_S) - A \;\le\; \hat m^2 \;\le\; S (1 + \beta_S) + A, \qquad
    1 + \beta_S = (1 + \gamma_{c+2}(u)) \, (1 + \gamma_{c+2}(2^{-53}))^L,

where :math:`A = 2 n \eta` bounds the error of squares that underflow
(:math:`\eta = 2^{-149}`, :math:`2^{-1074}` in float64), and a sum that overflows is
``inf``. So the norm is within :math:`\beta \approx \beta_S / 2` relative: for float32
(and float16, bfloat16) :math:`\beta \le 65 \cdot 2^{-24} \approx 3.9 \cdot 10^{-6}` at
any length (:math:`(n + 2) / 2 \cdot 2^{-24}` below 128 elements); for float64
:math:`7.3 \cdot 10^{-15}` up to 128 elements, :math:`1.5 \cdot 10^{-14}` up to
:math:`2^{14}`, :math:`2.2 \cdot 10^{-14}` at :math:`10^5`. The thresholds are computed
once per radius, dtype and length (:func:`plan`) and rounded away from the set.

**Three classes.** From the bound, each slice is *certainly in the set* (kept:
factor exactly 1, and in place nothing is written), *certainly above it* (scaled
by :math:`T / \hat m`), or *undecided*: within :math:`\beta` of a threshold, a sum
that under- or overflowed, ``±inf`` or NaN. Only undecided slices take the exact
path, and when every slice is certainly in the set the choice costs one reduction of
the norms (a ball: their maximum). When the undecided slices of a float16, bfloat16
or float32 tensor all lie in the band around the upper threshold, their float64 norms
decide them (:func:`_band`: the exact path's values, in a few operations), and nothing
is written when none of them moves.
Where the bound is wider than the slack (a float32 or float64 sphere) or the radius
so small that underflow dominates it, every slice takes the exact path; so do
slices moved *up* to ``lo``.

**Landing.** A slice moved down lands at :math:`T = \text{hi} / ((1 + \beta)(1 + \rho))`,
with :math:`\rho = u_d + 3u + 2^{-51} + \sqrt n \, \eta_d / \text{hi}` the rounding of
computing and applying the factor in the dtype :math:`d` (:math:`\eta_d` its smallest
subnormal): whatever the roundings, the result's true norm is at most ``hi``, and it
lies inside by at most the bound (:math:`1 - T/\text{hi} = 4.1 \cdot 10^{-6}` in
float32, :math:`1.6 \cdot 10^{-14}` in float64 at 768 elements, :math:`u_d` plus that
in float16 and bfloat16). The exact path lands slices at the same :math:`T`. A
landed slice's next fast norm is below the "certainly in" threshold unless its
roundings add up to more than :math:`\tau + \rho`: in practice it is certified on the
next call (see ``tests/test_numerics.py``), and if not, the exact path keeps it.
So the result is within :math:`2\beta + 2\rho` of the exact projection, always below
it in norm: :math:`8.2 \cdot 10^{-6}` in float32, :math:`4.6 \cdot 10^{-14}` in float64 at
:math:`10^5` elements, one unit in the last place plus :math:`8.2 \cdot 10^{-6}` in float16
and bfloat16. (Where results are subnormal, rounding errs by a subnormal spacing,
not relatively.)

**The exact path.** Float16, bfloat16 and float32 slices are widened to float64, where
every square is exact and nothing over- or underflows, and ``vector_norm`` errs by
at most :math:`\gamma_n(2^{-53})`. Float64 slices are scaled by a power of two that
brings their largest magnitude into :math:`[1/2, 1)` (as BLAS ``nrm2`` does), and
their squares summed by an error-free split (Rump, Ogita and Oishi, 2008): within
two roundings for :math:`n \le 2^{20}`. ``±inf`` counts as the dtype's largest finite
value. A slice moved up to ``lo``, or onto a sphere, lands within :math:`\tau`.

**Branches.** On the CPU, where reading a value costs nothing, the kernel branches
on the norms (:func:`branches`). On other devices a read would be a host-device
synchronisation, and under ``torch.compile`` or ``torch.export`` a graph break: there
every slice takes the exact path, with no data-dependent branch and no sync.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._rounding import constant_for_compile, inward_scalar

__all__ = ["project_rows"]

#: Elements per chunk of the fast norm (see the module docstring): the largest that keeps a
#: float32 slice within 1e-5 of its projection (128: 8.2e-6) reads at 1.45x a plain norm.
CHUNK = 128
_U64 = 2.0**-53


class Plan(NamedTuple):
    """The thresholds of one ``(lo, hi, dtype, n)``; see the module docstring."""

    fast: bool  # whether the fast norm can decide anything
    sphere: bool  # lo == hi: kept rows are differentiated as the formula
    bounds: tuple[float, ...]  # bucketize edges: undecided | in | undecided | above | undecided
    target: float  # where slices moved down land
    keep: tuple[float, float]  # the membership test: lo (1 - tau), hi (1 + tau)
    exact_target: float  # where the exact path lands slices moved down
    refine: bool  # a small dtype, and the band lies above lo: float64 norms decide it


def branches(t: Tensor) -> bool:
    """Whether a kernel may branch on ``t``'s values: on the CPU, where reading one is free.

    On other devices a read is a host-device synchronisation, and under ``torch.compile``
    a graph break: there the kernels take the branch-free exact path.
    """
    return t.is_cpu and not torch.compiler.is_compiling()


@functools.lru_cache(maxsize=256)
def _cpu_constant(value: float | tuple[float, ...], dtype: torch.dtype) -> Tensor:
    """A CPU tensor of a plan's constant, made once (the fast path runs on the CPU only).

    Nothing writes into it: it is an operand of out-of-place operations.
    """
    return torch.tensor(value, dtype=dtype, device="cpu")


def _gamma(k: int, u: float) -> float:
    return k * u / (1 - k * u)


@constant_for_compile
def plan(lo: float, hi: float, tau: float, dtype: torch.dtype, n: int) -> Plan:
    """Return the thresholds for slices of ``n`` elements of ``dtype`` (Python floats).

    A pure function of its arguments: ``torch.compile`` evaluates it while tracing.
    """
    return _plan(lo, hi, tau, dtype, n)


@functools.lru_cache(maxsize=1024)
def _plan(lo: float, hi: float, tau: float, dtype: torch.dtype, n: int) -> Plan:
    wide = dtype == torch.float64
    u, eta = (_U64, 2.0**-1074) if wide else (2.0**-24, 2.0**-149)  # eta: above half a subnormal
    levels, k = 0, -(-n // CHUNK)  # float64 vector_norm calls of fast_norms
    while k > 1 or (levels == 0 and n > CHUNK):
        levels, k = levels + 1, -(-k // CHUNK)
    beta_s = (1 + _gamma(min(n, CHUNK) + 2, u)) * (1 + _gamma(CHUNK + 2, _U64)) ** levels - 1
    norm_dtype = torch.float64 if wide or levels else torch.float32
    big = torch.finfo(norm_dtype).max
    a = 2 * n * eta
    upper, lower = hi * (1 + tau), lo * (1 - tau)

    def edge(bound: float, factor: float, up: bool) -> float:
        """``bound * sqrt(factor +- a / bound**2)``, rounded away from the set."""
        square = (factor + a / bound / bound if up else factor - a / bound / bound) if bound else a
        if square < 0 or not (up or bound):
            return -1.0
        value = min(bound * math.sqrt(square) * (1 + 8 * _U64 if up else 1 - 8 * _U64), big)
        return inward_scalar(value, norm_dtype, lower=up)

    k1 = edge(upper, 1 - beta_s, up=False)  # below: certainly in (m <= upper)
    k0 = min(edge(lower, 1 + beta_s, up=True) if lo > 0 else -1.0, k1)  # above: m >= lower
    k2 = edge(upper, 1 + beta_s, up=True)  # above: certainly m > upper
    info = torch.finfo(dtype)  # rho: computing, applying a factor; results that are subnormal
    subnormal = math.sqrt(n) * info.smallest_normal * info.eps / hi if hi > 0 else math.inf
    rho = info.eps / 2 + 3 * u + 4 * _U64 + subnormal
    alpha = 4 * a / hi / hi if hi > 0 else math.inf  # (hi * hi may underflow)
    beta = math.sqrt((1 + alpha) / (1 - beta_s)) - 1  # of a norm of at least hi / 2
    if lo == hi:  # land on the sphere, where the next fast norm certifies it
        target = hi
        lands = hi * (1 + beta) ** 2 * (1 + rho) <= k1 and hi * (1 - beta) ** 2 * (1 - rho) > k0
    else:  # land inside: true norm <= hi
        target = hi / ((1 + beta) * (1 + rho)) * (1 - 4 * _U64)
        lands = target * (1 - beta) ** 2 * (1 - rho) > k0
    moves = alpha <= u and lands and k2 < big
    # the exact path's norm errs by n 2**-53 (float64 widening) or 2 2**-53 (float64)
    rho_exact = rho - 3 * u + (8 * _U64 if wide else 2 * u + (n + 8) * _U64)
    exact_target = hi if lo == hi else max(lo, hi / (1 + rho_exact))
    return Plan(
        fast=k1 > k0 or moves,
        sphere=lo == hi,
        bounds=(k0, k1, k2 if moves else big, big),
        target=target,
        keep=(lower, min(upper, torch.finfo(torch.float64).max)),
        exact_target=target if moves else exact_target,
        refine=not wide and k1 * (1 - 1e-4) > lower,
    )


def fast_norms(rows: Tensor) -> Tensor:
    """The norms ``(R, 1)`` of the rows by chunks (module docstring); float64 unless ``n <= 64``."""
    compute = rows.dtype if rows.dtype in (torch.float32, torch.float64) else torch.float32
    r, n = rows.shape
    norm = torch.linalg.vector_norm
    if n <= CHUNK:
        if compute == rows.dtype:  # (a dtype argument costs a microsecond)
            return norm(rows, dim=-1, keepdim=True)  # type: ignore[no-any-return]
        return norm(rows, dim=-1, keepdim=True, dtype=compute)  # type: ignore[no-any-return]
    whole = n - n % CHUNK
    head = rows if whole == n else rows[:, :whole]
    parts = norm(head.view(r, -1, CHUNK), dim=-1, dtype=compute)
    if whole < n:
        parts = torch.cat([parts, norm(rows[:, whole:], dim=-1, keepdim=True, dtype=compute)], -1)
    while parts.shape[-1] > CHUNK:
        parts = torch.nn.functional.pad(parts, (0, -parts.shape[-1] % CHUNK))
        parts = norm(parts.view(r, -1, CHUNK), dim=-1, dtype=torch.float64)
    result: Tensor = norm(parts, dim=-1, keepdim=True, dtype=torch.float64)
    return result


def accurate_sum(t: Tensor) -> Tensor:
    """Row sums ``(R, 1)`` of float64 ``t`` within one rounding (and ``n^3 2^-106`` of the largest).

    Rump, Ogita and Oishi's error-free split: with :math:`\\sigma` a power of two above
    :math:`(n + 2)\\max|t|`, the parts ``(t + sigma) - sigma`` are multiples of
    :math:`2^{-52}\\sigma` whose every partial sum is exact, in any order; the small
    remainders are summed as they come.
    """
    top = t.abs().amax(dim=-1, keepdim=True)
    step = torch.frexp(top).exponent + math.ceil(math.log2(t.shape[-1] + 2))
    sigma = torch.ldexp(torch.ones_like(top), step)
    high = (t + sigma) - sigma
    return high.sum(dim=-1, keepdim=True) + (t - high).sum(dim=-1, keepdim=True)


class _Factors(NamedTuple):
    """Per-row ``(R, 1)`` tensors: the result is ``rows * f1 * f2`` (``f1`` None: 1).

    ``unit`` is ``1 / ||row||`` on rows differentiated as the formula (pinned to a
    bound), 0 elsewhere, or ``None`` when no gradient is wanted.
    """

    f2: Tensor
    f1: Tensor | None
    unit: Tensor | None


class _Scale(torch.autograd.Function):
    r"""``rows * f``, differentiated as ``rows * bound / ||rows||`` on pinned rows.

    The Jacobian of a row is :math:`f (I - \hat x \hat x^\top)` there, with
    :math:`\hat x = x \cdot \text{unit}` its direction (a slice scaled to a bound, or
    kept on a sphere), and :math:`f I` elsewhere (``unit = 0``: the identity on a
    slice kept in a ball or shell).
    """

    @staticmethod
    def forward(ctx: Any, rows: Tensor, f2: Tensor, f1: Tensor | None, unit: Tensor) -> Tensor:
        ctx.save_for_backward(rows, f2, f1, unit)
        return rows * f2 if f1 is None else rows * f1 * f2

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        rows, f2, f1, unit = ctx.saved_tensors
        f = f2 if f1 is None else f1 * f2
        if branches(unit) and not bool(unit.any()):  # no row pinned to a bound
            return grad * f, None, None, None
        dot = torch.linalg.vecdot(rows.to(grad.dtype), grad, dim=-1).unsqueeze(-1)  # one pass
        coefficient = f * unit * (unit * dot)
        return torch.addcmul(grad * f, rows.to(grad.dtype), coefficient, value=-1), None, None, None


def _exact(sub: Tensor, p: Plan, lo: float) -> _Factors:
    """The factors of ``sub``'s rows, from their norms computed to about two roundings."""
    wide = sub.dtype == torch.float64
    big = torch.finfo(sub.dtype).max
    rows = sub.detach().to(torch.float64).clamp(-big, big)
    scale = torch.ones_like(rows[:, :1])
    if wide:
        top = rows.abs().amax(dim=-1, keepdim=True)
        scale = torch.ldexp(scale, -torch.frexp(top).exponent.clamp(-1021, 1024))
        ns = accurate_sum((rows * scale).square()).sqrt()
    else:
        ns = torch.linalg.vector_norm(rows, dim=-1, keepdim=True)
    lower, upper = p.keep
    inside = (ns >= lower * scale) & (ns <= upper * scale)  # NaN: neither
    zero = ns == 0
    pinned = ~zero if p.sphere else ~zero & ~inside  # a sphere's kept rows too
    unit = torch.where(pinned, scale / ns, 0.0)
    bound = torch.where(ns > upper * scale, ns.new_full((), p.exact_target), lo)  # float64
    ratio = bound / torch.where(zero, 1.0, ns)  # the factor is ratio * scale
    if not wide:  # a power of two and a normal float32: right for factors up to 2**247
        exponent = torch.frexp(ratio).exponent
        scale = torch.ldexp(scale, exponent - exponent.clamp(-120, 120))
        ratio = ratio / scale
    f2 = torch.where(inside, 1.0, torch.where(zero, 0.0, ratio))
    f1 = torch.where(inside | zero, 1.0, scale)
    compute = torch.float64 if wide else torch.float32
    f1_needed = not branches(sub) or bool((f1 != 1).any())
    return _Factors(f2.to(compute), f1.to(compute) if f1_needed else None, unit.to(compute))


def project_rows(rows: Tensor, lo: float, hi: float, tau: float, *, inplace: bool) -> Tensor | None:
    """Bring each row's norm into ``[lo, hi]``, as a new (differentiable) tensor or in place.

    In place it returns ``rows``, or ``None`` when no row changed.
    """
    r, n = rows.shape
    if r == 0 or (n == 0 and lo == 0):
        return None if inplace else rows.clone()
    if n == 0:
        raise ValueError(
            f"a slice of 0 elements has no point of L2 norm at least {lo}: the set is empty"
        )
    p = plan(lo, hi, tau, rows.dtype, n)
    grad = not inplace and torch.is_grad_enabled() and rows.requires_grad
    if not branches(rows):
        factors, clamp = _exact(rows, p, lo), True
    elif not p.fast:
        factors, clamp = _exact(rows, p, lo), bool(rows.isinf().any())
    else:
        decided = _fast(rows, p, lo, grad)
        if decided is None:  # every row certainly in the set
            return None if inplace else rows.clone()
        factors, clamp = decided
    if clamp:
        big = torch.finfo(rows.dtype).max
        rows = rows.clamp_(-big, big) if inplace else rows.clamp(-big, big)
    f2, f1, unit = factors
    if inplace:
        return (rows if f1 is None else rows.mul_(f1)).mul_(f2)
    if grad and unit is not None:
        y: Tensor = _Scale.apply(rows, f2, f1, unit)  # type: ignore[no-untyped-call]
    else:
        y = rows * f2 if f1 is None else rows * f1 * f2
    return y if y.dtype == rows.dtype else y.to(rows.dtype)


def _fast(rows: Tensor, p: Plan, lo: float, grad: bool) -> tuple[_Factors, bool] | None:
    """The factors from the fast norms, undecided rows' from :func:`_exact`, and any ±inf.

    ``None`` when no row changes: one reduction decides it when every row is certainly
    in the set. Rows in the band around the upper threshold alone (the usual undecided
    rows: slices that a step moved by less than the bound) are decided by :func:`_band`.
    """
    m = fast_norms(rows.detach() if grad else rows)
    if p.bounds[0] < 0:  # a ball: the largest norm decides whether all are in (NaN: no)
        most = m.max().item()
        least = 0.0 if most <= p.bounds[1] else m.min().item()
    else:
        least, most = (t.item() for t in torch.aminmax(m))
    if least > p.bounds[0] and most <= p.bounds[1]:  # every row certainly in (NaN: no)
        return None
    compute = torch.float64 if rows.dtype == torch.float64 else torch.float32
    f2 = torch.div(_cpu_constant(p.target, m.dtype), m)  # target / m, one rounding
    unit = m.reciprocal() if grad else None
    label = None
    if not (least > p.bounds[2] and most <= p.bounds[3]):  # not every row certainly above
        label = torch.bucketize(m, _cpu_constant(p.bounds, m.dtype))
        moved = label == 3  # 1: inside; 0, 2, 4: undecided
        f2 = torch.where(moved, f2, 1.0)
        unit = None if unit is None else torch.where(moved, unit, 0.0)
    if m.dtype != compute:  # float64 norms of float32 rows
        f2, unit = f2.to(compute), None if unit is None else unit.to(compute)
    if label is None:
        return _Factors(f2, None, unit), False
    below, _, band, above, beyond = torch.bincount(label.view(-1), minlength=5).tolist()
    if below + band + beyond == 0:
        return _Factors(f2, None, unit), False
    if below + beyond == 0 and p.refine:
        return _band(rows, label, p, _Factors(f2, None, unit), moves=above > 0)
    undecided = ((label & 1) == 0).view(-1).nonzero().view(-1)
    if undecided.numel() == rows.shape[0]:
        return _exact(rows, p, lo), bool(rows.isinf().any())
    sub = rows.index_select(0, undecided)
    exact = _exact(sub, p, lo)

    def merged(ours: Tensor | None, theirs: Tensor | None, default: float) -> Tensor | None:
        if theirs is None:
            return ours
        return (torch.full_like(f2, default) if ours is None else ours.clone()).index_copy_(
            0, undecided, theirs
        )

    f1 = merged(None, exact.f1, 1.0)
    unit = merged(unit, exact.unit if grad else None, 0.0)
    return _Factors(merged(f2, exact.f2, 1.0), f1, unit), bool(sub.isinf().any())  # type: ignore[arg-type]


def _band(
    rows: Tensor, label: Tensor, p: Plan, factors: _Factors, *, moves: bool
) -> tuple[_Factors, bool] | None:
    """``factors`` with the band's rows (label 2) decided by their float64 norms.

    For float16, bfloat16 and float32 rows whose fast norm lies within the bound of the
    upper threshold (``p.refine``: the band lies above ``lo``): finite rows, whose
    widened norms decide them as :func:`_exact` does, with the same values, in a few
    operations instead of its general case. ``None`` when no row moves (``moves``: some
    row outside the band does).
    """
    band = (label == 2).view(-1).nonzero().view(-1)
    ns = torch.linalg.vector_norm(
        rows.detach().index_select(0, band).to(torch.float64), dim=-1, keepdim=True
    )
    out = ns > p.keep[1]
    if not moves and not bool(out.any()):
        return None
    f2, _, unit = factors
    ratio = torch.where(out, ns.new_full((), p.exact_target) / ns, 1.0)
    f2 = f2.index_copy(0, band, ratio.to(f2.dtype))
    if unit is not None:
        unit = unit.index_copy(0, band, torch.where(out, 1.0 / ns, 0.0).to(unit.dtype))
    return _Factors(f2, None, unit), False
