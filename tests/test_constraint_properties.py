"""Properties every constraint must have, over random shapes, dtypes, dims and values.

For each constraint: the result is in the set (up to the documented slack of a
few units in the last place); projecting twice equals projecting once, bit for
bit; points already in the set are unchanged; the projection onto a convex set
is non-expansive; zero slices give no NaN in the value or the gradient; the
forward map passes gradcheck in float64 away from kinks; and the constraint
works end to end: constrain, train, hard_project, state_dict round trip.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import assume, given
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
from torch_constraints.functional import _reduced_dims, tolerance

Dim = int | tuple[int, ...] | None


def slice_norms(x: torch.Tensor, dim: Dim, ord: float = 2.0) -> torch.Tensor:
    reduced = _reduced_dims(x, dim)
    x64 = x.double()
    if not reduced:
        return x64.abs()
    return torch.linalg.vector_norm(x64, ord=ord, dim=reduced, keepdim=True)


def slack(x: torch.Tensor) -> float:
    return tolerance(x.dtype)


# name -> (factory(dim), membership test, convex)
def in_ball(radius: float, ord: float) -> Callable[[torch.Tensor, Dim], bool]:
    def test(y: torch.Tensor, dim: Dim) -> bool:
        return bool((slice_norms(y, dim, ord) <= radius * (1 + slack(y))).all())

    return test


def on_sphere(radius: float) -> Callable[[torch.Tensor, Dim], bool]:
    def test(y: torch.Tensor, dim: Dim) -> bool:
        n = slice_norms(y, dim)
        return bool(((n == 0) | ((n - radius).abs() <= radius * slack(y))).all())

    return test


def in_shell(lo: float, hi: float) -> Callable[[torch.Tensor, Dim], bool]:
    def test(y: torch.Tensor, dim: Dim) -> bool:
        n = slice_norms(y, dim)
        inside = (n >= lo * (1 - slack(y))) & (n <= hi * (1 + slack(y)))
        return bool(((n == 0) | inside).all())

    return test


def on_simplex(scale: float) -> Callable[[torch.Tensor, Dim], bool]:
    def test(y: torch.Tensor, dim: Dim) -> bool:
        reduced = _reduced_dims(y, dim)
        total = y.double().sum(dim=reduced) if reduced else y.double()
        return bool((y >= 0).all() and ((total - scale).abs() <= scale * slack(y)).all())

    return test


def in_box(lo: float, hi: float) -> Callable[[torch.Tensor, Dim], bool]:
    return lambda y, dim: bool(((y.double() >= lo) & (y.double() <= hi)).all())


CASES: dict[str, tuple[Callable[[Dim], Constraint], Callable[[torch.Tensor, Dim], bool], bool]] = {
    "MaxNorm": (lambda d: MaxNorm(1.5, dim=d), in_ball(1.5, 2), True),
    "L2Ball": (lambda d: L2Ball(0.7, dim=d), in_ball(0.7, 2), True),
    "L1Ball": (lambda d: L1Ball(1.2, dim=d), in_ball(1.2, 1), True),
    "UnitNorm": (lambda d: UnitNorm(dim=d), on_sphere(1.0), False),
    "L2Sphere": (lambda d: L2Sphere(2.5, dim=d), on_sphere(2.5), False),
    "MinMaxNorm": (lambda d: MinMaxNorm(0.5, 1.5, dim=d), in_shell(0.5, 1.5), False),
    "Simplex": (lambda d: Simplex(2.0, dim=d), on_simplex(2.0), True),
    "Box": (lambda d: Box(-0.5, 0.75), in_box(-0.5, 0.75), True),
    "NonNeg": (lambda d: NonNeg(), in_box(0.0, float("inf")), True),
    "LinfBall": (lambda d: LinfBall(0.3), in_box(-0.3, 0.3), True),
}
NAMES = sorted(CASES)
#: Sets with an interior around 0: a point strictly inside is returned as it is.
WITH_INTERIOR = {"MaxNorm", "L2Ball", "L1Ball", "Box", "NonNeg", "LinfBall"}


@st.composite
def inputs(draw: st.DrawFn) -> tuple[torch.Tensor, Dim]:
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=1, max_size=3)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    x = (
        torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        * scale
    ).to(dtype)
    ndim = len(shape)
    dim = draw(
        st.one_of(
            st.none(),
            st.integers(-ndim, ndim - 1),
            st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple),
        )
    )
    return x, dim


@pytest.mark.parametrize("name", NAMES)
@given(case=inputs())
def test_feasible_idempotent_and_feasible_points_are_fixed(
    name: str, case: tuple[torch.Tensor, Dim]
) -> None:
    x, dim = case
    factory, member, _ = CASES[name]
    c = factory(dim)
    y = c.project(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert not y.isnan().any()
    assert member(y, dim), "result outside the set"
    assert torch.equal(c.project(y), y), "projecting twice differs from projecting once"
    assert torch.equal(c.project_(y.clone()), y), "the in-place twin differs"
    if name in WITH_INTERIOR:
        inner = y * 0.5  # strictly inside a ball or box around 0 (or on its boundary)
        assume(member(inner, dim))
        assert torch.equal(c.project(inner), inner), "a point inside the set was moved"


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n][2]])
@given(a=inputs(), seed=st.integers(0, 2**16))
def test_projection_onto_a_convex_set_is_non_expansive(
    name: str, a: tuple[torch.Tensor, Dim], seed: int
) -> None:
    x, dim = a
    x = x.double()
    y = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    c = CASES[name][0](dim)
    assert (c.project(x) - c.project(y)).norm() <= (x - y).norm() * (1 + 1e-12) + 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_zero_slices_give_no_nan_in_value_or_gradient(name: str) -> None:
    x = torch.zeros(3, 4, requires_grad=True)
    with torch.no_grad():
        x[1] = torch.tensor([3.0, -4.0, 0.5, 1.0])
    c = CASES[name][0](0)
    y = c.project(x)
    assert (not y.isnan().any() and y[0].abs().sum() == 0) or name == "Simplex"
    y.square().sum().backward()
    assert x.grad is not None and x.grad.isfinite().all()


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_in_float64_away_from_kinks(name: str) -> None:
    torch.manual_seed(0)
    c = CASES[name][0](0)
    x = (torch.randn(4, 5, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(c.project, (x,))


@pytest.mark.parametrize("name", ["UnitNorm", "L2Sphere", "Simplex"])
def test_points_on_a_set_without_interior_keep_the_gradient_of_the_projection(name: str) -> None:
    c = CASES[name][0](0)
    positive = torch.rand(3, 4, dtype=torch.float64) + 0.1
    # Points of the set away from its kinks (no zero entry on the simplex).
    x = c.project(positive / positive.sum(dim=1, keepdim=True)).requires_grad_()
    assert (x > 0).all()
    assert torch.equal(c.project(x), x)  # unchanged in value...
    assert torch.autograd.gradcheck(c.project, (x,))  # ...and differentiated as the formula


@pytest.mark.parametrize("name", NAMES)
def test_end_to_end_constrain_train_hard_project_and_state_dict(name: str) -> None:
    factory, member, _ = CASES[name]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    template = factory(0)
    assert constrain_all(model, template, include={"weight"}) == [
        "0.weight",
        "2.weight",
        "4.weight",
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    project_after_step(optimizer, model)
    x, target = torch.randn(32, 5), torch.randn(32, 1)
    for _ in range(5):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), target).backward()
        optimizer.step()
        for layer in (model[0], model[2], model[4]):
            assert member(layer.weight.detach(), 0), "forward value outside the set"
            if not (isinstance(template, MinMaxNorm) and template.rate < 1):
                assert member(layer.parametrizations.weight.original.detach(), 0), (
                    "raw value outside"
                )
    fresh = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    constrain_all(fresh, template, include={"weight"})
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), model(x))
    hard_project(fresh)
    assert all(
        torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True)
    )


def test_min_max_norm_with_rate_below_one_is_applied_once_per_hard_project() -> None:
    layer = nn.Linear(2, 1, bias=False)
    constrain(layer, "weight", MinMaxNorm(0.0, 1.0, rate=0.5))
    raw = layer.parametrizations.weight.original
    with torch.no_grad():
        raw.copy_(torch.tensor([[3.0, 4.0]]))  # norm 5
    hard_project(layer)
    assert torch.allclose(raw.norm(), torch.tensor(3.0))  # 0.5 * 1 + 0.5 * 5
    hard_project(layer)
    assert torch.allclose(raw.norm(), torch.tensor(2.0))  # moves further: not a projection
    assert torch.allclose(layer.weight.norm(), torch.tensor(1.0))  # the forward map is


def test_stacked_constraints_apply_in_registration_order() -> None:
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, -4.0, 0.0], [0.1, 0.2, -0.3]]))
    constrain(layer, "weight", NonNeg())
    constrain(layer, "weight", MaxNorm(1.0))
    expected = MaxNorm(1.0).project(
        NonNeg().project(torch.tensor([[3.0, -4.0, 0.0], [0.1, 0.2, -0.3]]))
    )
    assert torch.equal(layer.weight, expected)
    assert torch.equal(layer.parametrizations.weight.original, expected)
    # Each set in turn is not the projection onto the intersection in general:
    # here it is (the sets commute), and the result is in both.
    assert (expected >= 0).all() and (expected.norm(dim=1) <= 1 + 1e-6).all()
