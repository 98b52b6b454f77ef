"""Exact numerics over the whole float range: the regressions of issue 11, against references.

The references are written here, independently of the library: norms with
``math.hypot`` (correctly scaled, any magnitude), sums with ``math.fsum``, and the
simplex projection by sorting in exact rational arithmetic (``fractions``). None
of them calls into ``torch_constraints``.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from torch_constraints import (
    L1Ball,
    L2Ball,
    L2Sphere,
    MaxNorm,
    MinMaxNorm,
    Simplex,
    UnitNorm,
    constrain,
    hard_project,
)

F32, F64 = torch.float32, torch.float64
INF, NAN = math.inf, math.nan
#: The documented slack of each membership test: 2 eps, and 4 eps for float64.
SLACK = {
    torch.float16: 2 * 2.0**-10,
    torch.bfloat16: 2 * 2.0**-7,
    torch.float32: 2 * 2.0**-23,
    torch.float64: 4 * 2.0**-52,
}


def hypot(values: torch.Tensor) -> float:
    """The L2 norm of a 1-D tensor, correctly rounded-ish at any magnitude."""
    return math.hypot(*(float(v) for v in values.reshape(-1)))


def fsum(values: torch.Tensor) -> float:
    return math.fsum(float(v) for v in values.reshape(-1))


def simplex_reference(x: list[float], scale: float) -> list[float]:
    """Held et al.'s sort-based projection onto the simplex, in exact arithmetic."""
    exact = [Fraction(v) for v in x]
    ordered = sorted(exact, reverse=True)
    total, theta = Fraction(0), Fraction(0)
    for k, v in enumerate(ordered, start=1):
        total += v
        candidate = (total - Fraction(scale)) / k
        if v - candidate > 0:
            theta = candidate
    return [float(max(v - theta, Fraction(0))) for v in exact]


def simplex_reference_numpy(x: np.ndarray, scale: float) -> np.ndarray:
    """The same projection in numpy float64 (for well-conditioned inputs)."""
    u = np.sort(x)[::-1]
    css = np.cumsum(u) - scale
    k = np.arange(1, len(x) + 1)
    rho = np.nonzero(u - css / k > 0)[0][-1]
    return np.maximum(x - css[rho] / (rho + 1), 0.0)


# ---------------------------------------------------------------- item 1: range
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("exponent", [-0.9, -0.6, 0.6, 0.9], ids=lambda e: f"max^{e}")
def test_norm_balls_and_spheres_are_right_at_every_magnitude(
    dtype: torch.dtype, exponent: float
) -> None:
    # 1e-25 / 1e20 in float32, 1e-280 / 1e280 in float64: sums of squares leave the range.
    magnitude = torch.finfo(dtype).max ** exponent
    x = torch.full((1, 3), magnitude, dtype=dtype)
    inside = MaxNorm(2.0).project(x)
    if hypot(x) <= 2.0:
        assert torch.equal(inside, x)  # inside the ball: unchanged
    else:
        assert hypot(inside) == pytest.approx(2.0, rel=SLACK[dtype])
    for c, radius in ((L2Ball(3.0, dim=0), 3.0), (UnitNorm(), 1.0), (L2Sphere(5.0), 5.0)):
        y = c.project(x)
        if isinstance(c, L2Ball) and hypot(x) <= 3.0:
            assert torch.equal(y, x)
        else:
            assert hypot(y) == pytest.approx(radius, rel=SLACK[dtype]), c
            assert torch.equal(y[0, 0], y[0, 1])


def test_the_examples_of_the_issue() -> None:
    tiny = torch.full((1, 3), 1e-25)
    assert torch.equal(MaxNorm(2.0).project(tiny), tiny)
    huge = MaxNorm(2.0).project(torch.full((1, 3), 1e20))
    assert hypot(huge) == pytest.approx(2.0, rel=1e-6)
    unit = UnitNorm().project(torch.tensor([[1e-23, 2e-23]]))
    assert unit.tolist()[0] == pytest.approx([1 / math.sqrt(5), 2 / math.sqrt(5)], rel=1e-6)
    assert Simplex().project(torch.tensor([1e20, 1e20, 0.0])).tolist() == [0.5, 0.5, 0.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, F32, F64])
def test_subnormal_and_largest_slices(dtype: torch.dtype) -> None:
    info = torch.finfo(dtype)
    smallest = info.smallest_normal * info.eps  # the smallest subnormal
    for value in (smallest, info.smallest_normal, info.max):
        x = torch.tensor([[value, -value, value / 2]], dtype=dtype)
        y = UnitNorm().project(x)
        assert y.isfinite().all() and hypot(y) == pytest.approx(1.0, rel=SLACK[dtype])
        ball = L2Ball(0.5).project(x)
        if hypot(x) <= 0.5:
            assert torch.equal(ball, x)
        else:
            assert hypot(ball) == pytest.approx(0.5, rel=SLACK[dtype])


# ---------------------------------------------------------------- item 1: inf and NaN
def test_infinite_entries_count_as_the_largest_finite_value_in_norm_sets() -> None:
    big = torch.finfo(F32).max
    y = MaxNorm(2.0).project(torch.tensor([[INF, 0.5], [-INF, INF]]))
    assert y.isfinite().all()
    assert y[0, 0] == 2.0 and 0 <= y[0, 1] < 1e-37  # 0.5 * 2 / 3.4e38
    assert y[1].tolist() == pytest.approx([-math.sqrt(2), math.sqrt(2)], rel=1e-6)
    assert torch.equal(y, MaxNorm(2.0).project(torch.tensor([[big, 0.5], [-big, big]])))
    assert UnitNorm().project(torch.tensor([[INF, INF]]))[0].tolist() == pytest.approx(
        [2**-0.5, 2**-0.5], rel=1e-6
    )


def test_infinite_entries_share_the_mass_of_the_simplex_and_the_l1_ball() -> None:
    assert Simplex().project(torch.tensor([INF, 0.5])).tolist() == [1.0, 0.0]
    assert Simplex(3.0).project(torch.tensor([INF, 7.0, INF])).tolist() == [1.5, 0.0, 1.5]
    assert Simplex().project(torch.tensor([-INF, -INF])).tolist() == [0.5, 0.5]
    assert L1Ball(2.0).project(torch.tensor([-INF, 0.5, INF])).tolist() == [-1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "c",
    [
        MaxNorm(1.0),
        UnitNorm(),
        MinMaxNorm(0.5, 1.0),
        L2Ball(1.0, dim=0),
        L1Ball(1.0, dim=0),
        Simplex(1.0, dim=0),
    ],
    ids=lambda c: type(c).__name__,
)
def test_a_nan_makes_its_slice_nan_and_leaves_the_others(c: nn.Module) -> None:
    x = torch.tensor([[NAN, 0.5, 0.25], [3.0, 4.0, 0.0]])
    y = c.project(x)  # type: ignore[operator]
    assert y[0].isnan().all()
    assert y[1].isfinite().all() and torch.equal(y[1:], c.project(x[1:]))  # type: ignore[operator]


# ---------------------------------------------------------------- item 2: gradient at 0
@pytest.mark.parametrize(
    "c", [MaxNorm(2.0), L2Ball(2.0, dim=0), MinMaxNorm(0.0, 2.0)], ids=lambda c: type(c).__name__
)
def test_the_jacobian_is_the_identity_at_zero_and_strictly_inside_a_ball(c: nn.Module) -> None:
    w = torch.zeros(2, 3, requires_grad=True)
    c(w).sum().backward()
    assert w.grad is not None and torch.equal(w.grad, torch.ones(2, 3))
    inside = torch.tensor([[0.3, -0.4, 0.1], [1.0, 0.5, -0.2]], dtype=F64, requires_grad=True)
    jacobian = torch.autograd.functional.jacobian(c, inside)
    assert torch.equal(jacobian.reshape(6, 6), torch.eye(6, dtype=F64))


# ---------------------------------------------------------------- item 3: long slices
def test_l1_ball_and_simplex_refuse_long_float32_slices_outside_the_set() -> None:
    x = torch.full((4_000_000,), 1.4 / 4_000_000)
    # numpy's pairwise float64 sum of float32 values errs by far less than 1e-12 here
    assert x.numpy().astype(np.float64).sum() == pytest.approx(1.4, rel=1e-6)
    for c in (L1Ball(1.0), Simplex(1.0)):
        y = c.project(x)
        assert abs(y.numpy().astype(np.float64).sum() - 1.0) <= SLACK[F32]


def test_l1_ball_and_simplex_refuse_bfloat16_slices_outside_the_set() -> None:
    x = torch.full((1000,), 0.005, dtype=torch.bfloat16)
    assert fsum(x) == pytest.approx(5.0, rel=1e-2)
    for c in (L1Ball(1.0), Simplex(1.0)):
        y = c.project(x)
        assert abs(fsum(y) - 1.0) <= SLACK[torch.bfloat16]


def test_a_slice_on_the_boundary_up_to_the_slack_is_kept() -> None:
    x = torch.full((1000,), 0.001, dtype=F64)  # sums to 1 up to float64 rounding
    assert torch.equal(Simplex(1.0).project(x), x) and torch.equal(L1Ball(1.0).project(x), x)


# ---------------------------------------------------------------- item 4: idempotence
def test_unit_norm_of_many_equal_float32_entries_is_idempotent() -> None:
    x = torch.full((1, 2112), 0.3)
    y = UnitNorm().project(x)
    assert torch.equal(UnitNorm().project(y), y)
    assert hypot(y) == pytest.approx(1.0, rel=SLACK[F32])


def test_simplex_of_float64_inputs_around_1000_is_idempotent() -> None:
    generator = torch.Generator().manual_seed(0)
    c = Simplex(0.001)
    for _ in range(50):
        x = 1000 + torch.randn(50, dtype=F64, generator=generator)
        y = c.project(x)
        assert torch.equal(c.project(y), y)
        assert torch.equal(c.project_(x.clone()), y)


# ---------------------------------------------------------------- item 5: conditioning
def test_float64_simplex_of_inputs_around_1e8_is_exact() -> None:
    generator = torch.Generator().manual_seed(1)
    for scale in (1.0, 0.8, 3.0):
        x = 1e8 + torch.rand(20, dtype=F64, generator=generator)
        expected = torch.tensor(simplex_reference(x.tolist(), scale), dtype=F64)
        assert (Simplex(scale).project(x) - expected).abs().max() <= 4 * 2.0**-52 * scale


def test_float64_l1_ball_of_inputs_around_1e8_is_exact() -> None:
    generator = torch.Generator().manual_seed(2)
    x = (1e8 + torch.rand(20, dtype=F64, generator=generator)) * torch.tensor([1.0, -1.0]).repeat(
        10
    )
    magnitude = torch.tensor(simplex_reference(x.abs().tolist(), 2.0), dtype=F64)
    assert (L1Ball(2.0).project(x) - x.sign() * magnitude).abs().max() <= 8 * 2.0**-52


def test_simplex_of_a_single_element_is_the_scale() -> None:
    for dtype in (F32, F64):
        for scale in (0.8, 0.1, 3.7):
            assert Simplex(scale).project(torch.tensor([5.0], dtype=dtype)).item() == float(
                torch.tensor(scale, dtype=dtype)
            )


def test_simplex_matches_the_numpy_reference_on_ordinary_inputs() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = rng.normal(size=7)
        ours = Simplex(1.5).project(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ours, simplex_reference_numpy(x, 1.5), rtol=0, atol=1e-15)


# ---------------------------------------------------------------- hard_project
def test_a_second_hard_project_is_a_no_op() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200), nn.Linear(200, 10))
    constrain(model[0], "weight", UnitNorm())
    constrain(model[1], "weight", Simplex(0.001, dim=0))
    with torch.no_grad():
        model[0].parametrizations.weight.original.mul_(1e30)
        model[1].parametrizations.weight.original.add_(1000)
    hard_project(model)
    before = [p.detach().clone() for p in model.parameters()]
    hard_project(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_entries_outside_the_support_stay_exactly_zero() -> None:
    # The threshold's final correction must not lift entries it had set to 0.
    generator = torch.Generator().manual_seed(4)
    for _ in range(300):
        x = torch.randn(20, dtype=F64, generator=generator)
        for c in (L1Ball(1.2), Simplex(1.2)):
            y = c.project(x)
            reference = simplex_reference((x.abs() if isinstance(c, L1Ball) else x).tolist(), 1.2)
            assert ((y == 0) == torch.tensor([v == 0 for v in reference])).all()
            assert torch.equal(c.project(y), y)
