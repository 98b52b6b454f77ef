"""Every built-in constraint, every dtype, magnitudes from subnormal to the largest finite value.

For inputs drawn across the whole finite range of each dtype: the result is
finite and in the set (checked with ``math.hypot`` / ``math.fsum`` references,
within the documented slack), projecting it again changes nothing (bit for bit),
``project`` and the in-place ``project_`` agree bit for bit, points strictly
inside a set with an interior are unchanged, and projections onto convex sets
are non-expansive.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_constraints import (
    Box,
    Constraint,
    L1Ball,
    L2Ball,
    L2Sphere,
    LinfBall,
    MaxNorm,
    MinMaxNorm,
    NonNeg,
    Simplex,
    UnitNorm,
)

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SLACK = {
    torch.float16: 2 * 2.0**-10,
    torch.bfloat16: 2 * 2.0**-7,
    torch.float32: 2 * 2.0**-23,
    torch.float64: 4 * 2.0**-52,
}

Rows = list[list[float]]


def norms(y: torch.Tensor) -> list[float]:
    return [math.hypot(*row) for row in y.double().tolist()]


def sums(y: torch.Tensor) -> list[float]:
    return [fsum(row) for row in y.double().tolist()]


def fsum(row: list[float]) -> float:
    """``math.fsum``, or ``inf`` for a sum beyond the float range."""
    try:
        return math.fsum(row)
    except OverflowError:
        return math.inf


def in_shell(lo: float, hi: float, zero_ok: bool) -> Callable[[torch.Tensor], bool]:
    def member(y: torch.Tensor) -> bool:
        tau = SLACK[y.dtype]
        return all((zero_ok and n == 0) or lo * (1 - tau) <= n <= hi * (1 + tau) for n in norms(y))

    return member


def in_l1_ball(radius: float) -> Callable[[torch.Tensor], bool]:
    return lambda y: all(s <= radius * (1 + SLACK[y.dtype]) for s in sums(y.abs()))


def on_simplex(scale: float) -> Callable[[torch.Tensor], bool]:
    def member(y: torch.Tensor) -> bool:
        tau = SLACK[y.dtype]
        return bool((y >= 0).all()) and all(abs(s - scale) <= tau * scale for s in sums(y))

    return member


def in_box(lo: float, hi: float) -> Callable[[torch.Tensor], bool]:
    return lambda y: bool(((y.double() >= lo) & (y.double() <= hi)).all())


# name -> (constraint acting on each row, membership, convex, has an interior around 0)
CASES: dict[str, tuple[Constraint, Callable[[torch.Tensor], bool], bool, bool]] = {
    "Box": (Box(-0.5, 0.75), in_box(-0.5, 0.75), True, True),
    "NonNeg": (NonNeg(), in_box(0.0, math.inf), True, True),
    "LinfBall": (LinfBall(0.3), in_box(-0.3, 0.3), True, True),
    "MaxNorm": (MaxNorm(1.5, dim=0), in_shell(0.0, 1.5, True), True, True),
    "L2Ball": (L2Ball(0.7, dim=0), in_shell(0.0, 0.7, True), True, True),
    "MinMaxNorm": (MinMaxNorm(0.5, 1.5, dim=0), in_shell(0.5, 1.5, True), False, False),
    "UnitNorm": (UnitNorm(dim=0), in_shell(1.0, 1.0, True), False, False),
    "L2Sphere": (L2Sphere(2.5, dim=0), in_shell(2.5, 2.5, True), False, False),
    "L1Ball": (L1Ball(1.2, dim=0), in_l1_ball(1.2), True, True),
    "Simplex": (Simplex(2.0, dim=0), on_simplex(2.0), True, False),
}


@st.composite
def extreme_rows(
    draw: st.DrawFn, dtype: torch.dtype, shape: tuple[int, int] | None = None
) -> torch.Tensor:
    """Rows whose magnitudes span the dtype's range, subnormals included."""
    info = torch.finfo(dtype)
    lowest = math.frexp(info.smallest_normal * info.eps)[1] - 1  # the smallest subnormal
    highest = math.frexp(info.max)[1] - 1
    n_rows, n_cols = shape or (draw(st.integers(1, 3)), draw(st.integers(1, 6)))
    rows = []
    for _ in range(n_rows):
        base = draw(st.integers(lowest, highest))
        spread = draw(st.integers(0, 30))
        row = []
        for _ in range(n_cols):
            exponent = min(max(base - draw(st.integers(0, spread)), lowest), highest)
            mantissa = draw(st.floats(1.0, 2.0, exclude_max=True))
            sign = draw(st.sampled_from([-1.0, 1.0, 0.0]) if spread else st.just(1.0))
            row.append(sign * math.ldexp(mantissa, exponent))
        rows.append(row)
    x = torch.tensor(rows, dtype=torch.float64).to(dtype)
    return x.clamp(-info.max, info.max)  # rounding up at the top may overflow


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=25)
@given(data=st.data())
def test_feasible_idempotent_in_place_and_inside_points_fixed(
    name: str, dtype: torch.dtype, data: st.DataObject
) -> None:
    c, member, _, interior = CASES[name]
    x = data.draw(extreme_rows(dtype))
    y = c.project(x)
    assert y.dtype == dtype and y.isfinite().all(), "not finite"
    assert member(y), "result outside the set"
    assert torch.equal(c.project(y), y), "projecting twice differs from projecting once"
    assert torch.equal(c.project_(x.clone()), y), "the in-place twin differs"
    if member(x) and (interior or name in ("MinMaxNorm", "UnitNorm", "L2Sphere", "Simplex")):
        assert torch.equal(y, x), "a point of the set was moved"
    if interior:
        inner = y / 2  # strictly inside (or still on the boundary of a box)
        if member(inner):
            assert torch.equal(c.project(inner), inner), "an inside point was moved"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", sorted(n for n in CASES if CASES[n][2]))
@settings(max_examples=25)
@given(data=st.data())
def test_projection_onto_a_convex_set_is_non_expansive_at_every_magnitude(
    name: str, dtype: torch.dtype, data: st.DataObject
) -> None:
    c = CASES[name][0]
    a = data.draw(extreme_rows(dtype))
    b = data.draw(extreme_rows(dtype, (a.shape[0], a.shape[1])))
    pa, pb = c.project(a), c.project(b)
    moved = math.hypot(*(pa.double() - pb.double()).reshape(-1).tolist())
    apart = math.hypot(*(a.double() - b.double()).reshape(-1).tolist())
    # each result entry carries its own rounding error: a relative slack on the sizes
    size = math.hypot(*pa.double().reshape(-1).tolist(), *pb.double().reshape(-1).tolist())
    assert moved <= apart * (1 + SLACK[dtype]) + SLACK[dtype] * size
