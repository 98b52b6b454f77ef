"""The properties every built-in constraint has, as one grid.

Constraint x dtype x shape and slices (``dim``) x magnitude (ordinary values, and
rows spanning the dtype's whole finite range, subnormals included) x mode. For each
cell, by the test's own arithmetic (``math.hypot``, ``math.fsum``, float64), never
the implementation's:

* **feasible**: the result is in the set, within the documented slack, and finite;
* **idempotent**: projecting the result again changes nothing, bit for bit;
* **in place**: ``project_`` writes what ``project`` returns, bit for bit;
* **fixed points**: a point of the set comes back unchanged (strictly inside points
  of sets with an interior too);
* **non-expansive** projections onto convex sets;
* **gradients**: no NaN at zero slices, ``gradcheck`` in float64 away from kinks,
  the formula's gradient on sets without an interior;
* **both modes** end to end: constrain, train, ``hard_project``, ``state_dict``.

The box is also checked over random bounds (one-sided, per channel) in both modes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

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
    constrain,
    constrain_all,
    hard_project,
    project_after_step,
)

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
DTYPE_IDS = [str(d).removeprefix("torch.") for d in DTYPES]
#: The documented slack τ of each membership test (``functional.tolerance``).
SLACK = {
    torch.float16: 2 * 2.0**-10,
    torch.bfloat16: 2 * 2.0**-7,
    torch.float32: 2 * 2.0**-23,
    torch.float64: 4 * 2.0**-52,
}
Dim = int | tuple[int, ...] | None


# ------------------------------------------------------------------ the test's own arithmetic
def slices(y: torch.Tensor, dim: Dim) -> list[list[float]]:
    """Each slice's values as Python floats: ``dim`` indexes the slices (None: one slice)."""
    if dim is None:
        kept: list[int] = []
    else:
        kept = sorted({d % y.ndim for d in ((dim,) if isinstance(dim, int) else dim)})
    reduced = [d for d in range(y.ndim) if d not in kept]
    count = math.prod(y.shape[d] for d in kept)
    rows = y.double().permute(kept + reduced).reshape(count, -1)
    return rows.tolist()  # type: ignore[no-any-return]


Member = Callable[[torch.Tensor, Dim], bool]


def in_shell(lo: float, hi: float) -> Member:
    """L2 norms in ``[lo, hi]`` within the slack, or zero (a zero slice stays zero)."""

    def member(y: torch.Tensor, dim: Dim) -> bool:
        tau = SLACK[y.dtype]
        norms = [math.hypot(*row) for row in slices(y, dim)]
        return all(n == 0 or lo * (1 - tau) <= n <= hi * (1 + tau) for n in norms)

    return member


def fsum(values: list[float]) -> float:
    """``math.fsum``, or ``inf`` for a sum beyond the float range."""
    try:
        return math.fsum(values)
    except OverflowError:
        return math.inf


def in_l1_ball(radius: float) -> Member:
    def member(y: torch.Tensor, dim: Dim) -> bool:
        tau = SLACK[y.dtype]
        return all(fsum(list(map(abs, row))) <= radius * (1 + tau) for row in slices(y, dim))

    return member


def on_simplex(scale: float) -> Member:
    def member(y: torch.Tensor, dim: Dim) -> bool:
        tau = SLACK[y.dtype]
        rows = slices(y, dim)
        return bool((y >= 0).all()) and all(abs(fsum(r) - scale) <= tau * scale for r in rows)

    return member


def in_box(lo: float, hi: float) -> Member:
    return lambda y, dim: bool(((y.double() >= lo) & (y.double() <= hi)).all())


class Case:
    """A constraint of the grid: how to make it, its set, and what kind of set it is."""

    def __init__(
        self, make: Callable[[Dim], Constraint], member: Member, convex: bool, interior: bool
    ) -> None:
        self.make, self.member, self.convex, self.interior = make, member, convex, interior


GRID: dict[str, Case] = {
    "Box": Case(lambda d: Box(-0.5, 0.75), in_box(-0.5, 0.75), True, True),
    "NonNeg": Case(lambda d: NonNeg(), in_box(0.0, math.inf), True, True),
    "LinfBall": Case(lambda d: LinfBall(0.3), in_box(-0.3, 0.3), True, True),
    "MaxNorm": Case(lambda d: MaxNorm(1.5, dim=d), in_shell(0.0, 1.5), True, True),
    "L2Ball": Case(lambda d: L2Ball(0.7, dim=d), in_shell(0.0, 0.7), True, True),
    "MinMaxNorm": Case(lambda d: MinMaxNorm(0.5, 1.5, dim=d), in_shell(0.5, 1.5), False, False),
    "UnitNorm": Case(lambda d: UnitNorm(dim=d), in_shell(1.0, 1.0), False, False),
    "L2Sphere": Case(lambda d: L2Sphere(2.5, dim=d), in_shell(2.5, 2.5), False, False),
    "L1Ball": Case(lambda d: L1Ball(1.2, dim=d), in_l1_ball(1.2), True, True),
    "Simplex": Case(lambda d: Simplex(2.0, dim=d), on_simplex(2.0), True, False),
}
NAMES = sorted(GRID)


# ------------------------------------------------------------------ inputs
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


@st.composite
def ordinary(draw: st.DrawFn, dtype: torch.dtype) -> tuple[torch.Tensor, Dim]:
    """Normal values of a few scales, of any shape up to 3-D, and any slicing."""
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=1, max_size=3)))
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype)
    ndim = len(shape)
    dim = draw(
        st.one_of(
            st.none(),
            st.integers(-ndim, ndim - 1),
            st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple),
        )
    )
    return x, dim


def inputs(dtype: torch.dtype) -> st.SearchStrategy[tuple[torch.Tensor, Dim]]:
    """Ordinary tensors, or rows of extreme magnitudes each a slice (``dim=0``)."""
    return st.one_of(ordinary(dtype), extreme_rows(dtype).map(lambda x: (x, 0)))


GRID_CELLS = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)


# ------------------------------------------------------------------ the grid
@pytest.mark.parametrize("name", NAMES)
@GRID_CELLS
@settings(max_examples=30)
@given(data=st.data())
def test_feasible_idempotent_in_place_and_the_points_of_the_set_are_fixed(
    name: str, dtype: torch.dtype, data: st.DataObject
) -> None:
    case = GRID[name]
    x, dim = data.draw(inputs(dtype))
    c = case.make(dim)
    y = c.project(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert y.isfinite().all(), "not finite"
    assert case.member(y, dim), "result outside the set"
    assert torch.equal(c.project(y), y), "projecting twice differs from projecting once"
    assert torch.equal(c.project_(x.clone()), y), "the in-place twin differs"
    if case.member(x, dim):
        assert torch.equal(y, x), "a point of the set was moved"
    if case.interior:
        inner = y / 2  # strictly inside a ball or box around 0 (or on its boundary)
        if case.member(inner, dim):
            assert torch.equal(c.project(inner), inner), "a point inside the set was moved"


@pytest.mark.parametrize("name", [n for n in NAMES if GRID[n].convex])
@GRID_CELLS
@settings(max_examples=30)
@given(data=st.data())
def test_projection_onto_a_convex_set_is_non_expansive(
    name: str, dtype: torch.dtype, data: st.DataObject
) -> None:
    a, dim = data.draw(inputs(dtype))
    if data.draw(st.booleans()):  # a nearby point
        seed = data.draw(st.integers(0, 2**16))
        noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(seed))
        b = (a.double() + noise.double()).to(dtype)
    else:  # another point anywhere in the dtype's range
        b = data.draw(extreme_rows(dtype, (a.shape[0], math.prod(a.shape[1:])))).reshape(a.shape)
    assume(b.isfinite().all())
    c = GRID[name].make(dim)
    pa, pb = c.project(a).double(), c.project(b).double()
    moved = math.hypot(*(pa - pb).reshape(-1).tolist())
    apart = math.hypot(*(a.double() - b.double()).reshape(-1).tolist())
    # each result entry carries its own rounding error: a relative slack on the sizes
    size = math.hypot(*pa.reshape(-1).tolist(), *pb.reshape(-1).tolist())
    tau = SLACK[dtype]
    assert moved <= apart * (1 + tau) + tau * size


@pytest.mark.parametrize("name", NAMES)
def test_zero_slices_give_no_nan_in_value_or_gradient(name: str) -> None:
    x = torch.zeros(3, 4, requires_grad=True)
    with torch.no_grad():
        x[1] = torch.tensor([3.0, -4.0, 0.5, 1.0])
    c = GRID[name].make(0)
    y = c.project(x)
    assert (not y.isnan().any() and y[0].abs().sum() == 0) or name == "Simplex"
    y.square().sum().backward()
    assert x.grad is not None and x.grad.isfinite().all()


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_in_float64_away_from_kinks(name: str) -> None:
    torch.manual_seed(0)
    c = GRID[name].make(0)
    x = (torch.randn(4, 5, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(c.project, (x,))


@pytest.mark.parametrize("name", ["UnitNorm", "L2Sphere", "Simplex"])
def test_points_on_a_set_without_interior_keep_the_gradient_of_the_projection(name: str) -> None:
    c = GRID[name].make(0)
    positive = torch.rand(3, 4, dtype=torch.float64) + 0.1
    # Points of the set away from its kinks (no zero entry on the simplex).
    x = c.project(positive / positive.sum(dim=1, keepdim=True)).requires_grad_()
    assert (x > 0).all()
    assert torch.equal(c.project(x), x)  # unchanged in value...
    assert torch.autograd.gradcheck(c.project, (x,))  # ...and differentiated as the formula


# ------------------------------------------------------------------ both modes, end to end
def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))


def raw(layer: nn.Module) -> torch.Tensor:
    chains = getattr(layer, "parametrizations", None)
    return (chains.weight.original if chains is not None else layer.weight).detach()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("parametrized", [True, False], ids=["parametrize", "recorded"])
def test_constrain_train_project_and_round_trip_in_both_modes(
    name: str, parametrized: bool
) -> None:
    case = GRID[name]
    model = mlp()
    template = case.make(0)
    names = constrain_all(model, template, include={"weight"}, parametrize=parametrized)
    assert names == ["0.weight", "2.weight", "4.weight"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    project_after_step(optimizer, model)
    x, target = torch.randn(32, 5), torch.randn(32, 1)
    for _ in range(5):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), target).backward()
        optimizer.step()
        for layer in (model[0], model[2], model[4]):
            assert case.member(layer.weight.detach(), 0), "forward value outside the set"
            assert case.member(raw(layer), 0), "raw value outside"
    fresh = mlp()
    constrain_all(fresh, template, include={"weight"}, parametrize=parametrized)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), model(x))
    hard_project(fresh)
    assert all(
        torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True)
    )


# ------------------------------------------------------------------ the box over random bounds
numbers = st.floats(-2, 2, allow_nan=False, width=32)


@st.composite
def bounds(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[object, object]:
    kind = draw(st.sampled_from(["both", "min", "max", "per-channel"]))
    lo, hi = sorted([draw(numbers), draw(numbers)])
    if kind == "min":
        return lo, None
    if kind == "max":
        return None, hi
    if kind == "per-channel":
        channel = (shape[0],) + (1,) * (len(shape) - 1)
        width = torch.rand(
            channel, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))
        )
        return lo - width.double(), hi + width.double()
    return lo, hi


def in_range(value: torch.Tensor, lo: object, hi: object) -> bool:
    v = value.double()
    ok = torch.ones_like(v, dtype=torch.bool)
    if lo is not None:
        ok &= v >= torch.as_tensor(lo, dtype=torch.float64)
    if hi is not None:
        ok &= v <= torch.as_tensor(hi, dtype=torch.float64)
    return bool(ok.all())


def has_a_bfloat16_value(lo: object, hi: object) -> torch.Tensor:
    """Whether some bfloat16 number lies in [lo, hi], elementwise, by enumerating them all."""
    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    every = every[every.isfinite()].double().sort().values
    lo_t = torch.as_tensor(lo, dtype=torch.float64).reshape(-1)
    hi_t = torch.as_tensor(hi, dtype=torch.float64).reshape(-1)
    smallest_above_lo = every[torch.searchsorted(every, lo_t).clamp(max=every.numel() - 1)]
    return (smallest_above_lo >= lo_t) & (smallest_above_lo <= hi_t)


@pytest.mark.parametrize("parametrized", [True, False], ids=["parametrize", "recorded"])
@given(
    data=st.data(),
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_a_box_of_any_bounds_is_feasible_idempotent_and_keeps_inside_points(
    parametrized: bool, data: st.DataObject, shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    lo, hi = data.draw(bounds(shape))
    module = nn.Module()
    seed = data.draw(st.integers(0, 2**16))
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3).to(dtype)
    module.register_parameter("w", nn.Parameter(x.clone()))
    try:
        constrain(module, "w", lo, hi, parametrize=parametrized)
    except ValueError as error:
        # Only a range that holds no value of the dtype may be refused.
        assert f"no {dtype} value lies in [min, max]" in str(error)
        assert dtype == torch.bfloat16 and lo is not None and hi is not None
        assert not has_a_bfloat16_value(lo, hi).all()
        return
    box = Box(lo, hi)
    value = module.w if parametrized else box.project(x)
    if not parametrized:
        assert torch.equal(module.w.detach(), value), "registration did not project"
    assert value.dtype == dtype and value.shape == shape
    assert in_range(value, lo, hi), "value outside the requested range"
    assert torch.equal(box.project(value), value), "projecting twice differs from once"
    inside = box.project(x) == x
    assert torch.equal(value[inside], x[inside]), "a feasible value was moved"

    stored = module.parametrizations.w.original if parametrized else module.w
    with torch.no_grad():
        stored.copy_(x)
    hard_project(module)
    assert torch.equal(stored.detach(), value.detach()), "hard_project differs from project"
    hard_project(module)
    assert torch.equal(stored.detach(), value.detach()), "hard_project is not idempotent"
    y = (torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)) * 3).double()
    a, b = x.double(), y
    projected = box.project(a) - box.project(b)
    assert projected.norm() <= (a - b).norm() + 1e-12, "the box projection expanded a distance"
