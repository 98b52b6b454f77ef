"""Exact numerics over the whole float range, against references written here.

The references are independent of the library: norms with ``math.hypot``
(correctly scaled, any magnitude) and, where a bound is checked exactly, sums of
squares in rational arithmetic (``fractions``); the L2 projections in
``decimal`` at 80 digits; sums with ``math.fsum``; the simplex projection by
sorting in rational arithmetic. None of them calls into ``torch_constraints``.
"""

from __future__ import annotations

import decimal
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torch_constraints import (
    L1Ball,
    L2Ball,
    L2Sphere,
    MaxNorm,
    MinMaxNorm,
    Simplex,
    UnitNorm,
    _l2,
    constrain,
    hard_project,
)
from torch_constraints.functional import project_min_max_norm, project_min_max_norm_

F32, F64 = torch.float32, torch.float64
INF, NAN = math.inf, math.nan
#: The documented slack of each membership test: 2 eps, and 4 eps for float64.
SLACK = {
    torch.float16: 2 * 2.0**-10,
    torch.bfloat16: 2 * 2.0**-7,
    torch.float32: 2 * 2.0**-23,
    torch.float64: 4 * 2.0**-52,
}


#: How far a moved slice may be from the exact projection, relative to it, per dtype
#: (docs/guarantees.md): 1e-5 in float32, 1e-13 in float64, one unit in the last place
#: more in float16 and bfloat16.
ACCURACY = {
    torch.float16: 2.0**-10 + 1e-5,
    torch.bfloat16: 2.0**-7 + 1e-5,
    torch.float32: 1e-5,
    torch.float64: 1e-13,
}


def squared_norm(values: torch.Tensor) -> Fraction:
    """The exact sum of squares of a tensor's values."""
    return sum((Fraction(float(v)) ** 2 for v in values.reshape(-1)), Fraction(0))


def assert_moved_into_ball(y: torch.Tensor, radius: float) -> None:
    """A slice moved onto a ball of ``radius``: true norm at most ``radius``, and close to it."""
    lowest = Fraction(radius) * (1 - Fraction(ACCURACY[y.dtype]))
    assert lowest**2 <= squared_norm(y) <= Fraction(radius) ** 2, (hypot(y), radius)


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
        assert_moved_into_ball(inside, 2.0)
    for c, radius in ((L2Ball(3.0, dim=0), 3.0), (UnitNorm(), 1.0), (L2Sphere(5.0), 5.0)):
        y = c.project(x)
        if isinstance(c, L2Ball) and hypot(x) <= 3.0:
            assert torch.equal(y, x)
        elif isinstance(c, L2Ball):
            assert_moved_into_ball(y, radius)
        else:
            assert hypot(y) == pytest.approx(radius, rel=SLACK[dtype]), c
        assert torch.equal(y[0, 0], y[0, 1])


def test_tiny_and_huge_float32_slices_are_projected_exactly() -> None:
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
            assert_moved_into_ball(ball, 0.5)


# ---------------------------------------------------------------- item 1: inf and NaN
def test_infinite_entries_count_as_the_largest_finite_value_in_norm_sets() -> None:
    big = torch.finfo(F32).max
    y = MaxNorm(2.0).project(torch.tensor([[INF, 0.5], [-INF, INF]]))
    assert y.isfinite().all()
    assert_moved_into_ball(y[0], 2.0)
    assert y[0, 0] == pytest.approx(2.0, rel=1e-6) and 0 <= y[0, 1] < 1e-37  # 0.5 * 2 / 3.4e38
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


# ---------------------------------------------------------------- float64 radii
@pytest.mark.parametrize(
    "c",
    [L2Ball(3.21), MaxNorm(3.21, dim=None), MinMaxNorm(0.0, 3.21, dim=None)],
    ids=lambda c: type(c).__name__,
)
def test_a_float64_radius_is_not_rounded_to_float32(c: nn.Module) -> None:
    y = c.project(torch.tensor([3.0, 4.0], dtype=F64))  # type: ignore[operator]
    assert_moved_into_ball(y, 3.21)  # within 1e-13: float32's 3.21 is 1.2e-8 away
    assert torch.equal(c.project_(torch.tensor([3.0, 4.0], dtype=F64)), y)  # type: ignore[operator]


def test_a_float64_sphere_radius_is_not_rounded_to_float32() -> None:
    for c in (L2Sphere(3.21), MinMaxNorm(3.21, 3.21, dim=None)):
        y = c.project(torch.tensor([3.0, 4.0], dtype=F64))
        assert abs(hypot(y) - 3.21) <= SLACK[F64] * 3.21, c


@pytest.mark.parametrize("radius", [1e-300, 1e-50, 1e50, 1e300])
def test_float64_radii_of_every_magnitude_are_used_as_they_are(radius: float) -> None:
    x = torch.tensor([3.0, -4.0], dtype=F64) * radius  # norm 5 r: outside, at that magnitude
    for c in (L2Ball(radius), MaxNorm(radius, dim=None), MinMaxNorm(0.0, radius, dim=None)):
        assert_moved_into_ball(c.project(x), radius)
    for sphere in (L2Sphere(radius), MinMaxNorm(radius, radius, dim=None)):
        assert abs(hypot(sphere.project(x)) / radius - 1) <= SLACK[F64]
    assert torch.equal(L2Ball(radius).project(x / 10), x / 10)  # norm r / 2: inside


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, F32, F64])
def test_a_ball_of_radius_zero_holds_only_zero(dtype: torch.dtype) -> None:
    x = torch.tensor([[3.0, -4.0], [0.0, 0.0], [1e-3, 0.0]], dtype=dtype)
    for c in (MaxNorm(0.0), L2Ball(0.0, dim=0), MinMaxNorm(0.0, 0.0)):
        y = c.project(x)
        assert torch.equal(y, torch.zeros_like(x)), c
        assert torch.equal(c.project_(x.clone()), y)


# ---------------------------------------------------------------- float64 gradients at 0
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    "c", [MaxNorm(2.0), L2Ball(2.0, dim=0), MinMaxNorm(0.0, 2.0)], ids=lambda c: type(c).__name__
)
def test_the_jacobian_is_the_identity_at_zero_in_every_dtype(
    c: nn.Module, dtype: torch.dtype
) -> None:
    w = torch.zeros(2, 3, dtype=dtype, requires_grad=True)
    c(w).sum().backward()
    assert w.grad is not None and torch.equal(w.grad, torch.ones(2, 3, dtype=dtype))


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    "c", [UnitNorm(), L2Sphere(2.0, dim=0), MinMaxNorm(0.5, 2.0)], ids=lambda c: type(c).__name__
)
def test_a_zero_slice_of_a_set_without_zero_has_a_zero_gradient(
    c: nn.Module, dtype: torch.dtype
) -> None:
    w = torch.zeros(2, 3, dtype=dtype, requires_grad=True)
    y = c(w)
    (y * torch.arange(6.0, dtype=dtype).view(2, 3)).sum().backward()
    assert torch.equal(y.detach(), torch.zeros(2, 3, dtype=dtype))
    assert w.grad is not None and torch.equal(w.grad, torch.zeros(2, 3, dtype=dtype))


def test_a_zero_initialised_float64_layer_stays_finite_after_a_step() -> None:
    layer = nn.Linear(3, 2, bias=False).double()
    with torch.no_grad():
        layer.weight.zero_()
    constrain(layer, "weight", MaxNorm(1.0))
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.ones(4, 3, dtype=F64)).sum().backward()
    optimizer.step()
    assert layer.weight.isfinite().all() and layer.weight.abs().sum() > 0


# ---------------------------------------------------------------- tensors without elements
class Holder(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(shape))


@pytest.mark.parametrize(
    ("c", "shape"),
    [
        (L2Ball(), (0,)),
        (L1Ball(), (0,)),
        (MaxNorm(1.0), (3, 0)),
        (MaxNorm(1.0), (0, 4)),
        (MinMaxNorm(0.0, 1.0), (3, 0)),
        (UnitNorm(), (0, 4)),  # no slices at all
        (L2Sphere(dim=0), (0, 3)),
        (Simplex(dim=0), (0, 3)),
        (L1Ball(dim=0), (4, 0)),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v),
)
@pytest.mark.parametrize("parametrize", [True, False])
def test_a_tensor_without_elements_is_a_no_op_where_the_set_holds_the_empty_vector(
    c: nn.Module, shape: tuple[int, ...], parametrize: bool
) -> None:
    x = torch.empty(shape)
    assert c.project(x).shape == shape  # type: ignore[operator]
    assert c.project_(x) is x  # type: ignore[operator]
    holder = constrain(Holder(shape), "weight", c, parametrize=parametrize)  # type: ignore[arg-type]
    hard_project(holder)
    assert holder.weight.shape == shape


@pytest.mark.parametrize(
    ("c", "shape"),
    [
        (UnitNorm(), (3, 0)),
        (L2Sphere(), (0,)),
        (Simplex(), (0,)),
        (Simplex(dim=0), (2, 0)),
        (MinMaxNorm(0.5, 1.0), (3, 0)),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v),
)
def test_slices_without_elements_are_refused_where_the_set_is_empty(
    c: nn.Module, shape: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError, match="slice of 0 elements"):
        c.project(torch.empty(shape))  # type: ignore[operator]
    with pytest.raises(ValueError, match=r"Holder\.weight: .* cannot constrain a tensor of shape"):
        constrain(Holder(shape), "weight", c)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the accuracy contract
DTYPES = [torch.float16, torch.bfloat16, F32, F64]
EXACT = decimal.Context(prec=80, Emin=-99999, Emax=99999)


def reference(row: list[float], lo: float, hi: float) -> tuple[list[decimal.Decimal], float]:
    """The exact projection of a slice onto the shell [lo, hi] (0 stays 0), and the slice's norm."""
    values = [EXACT.create_decimal(v) for v in row]  # every float, exactly
    norm = EXACT.sqrt(sum((EXACT.multiply(v, v) for v in values), decimal.Decimal(0)))
    bound = min(max(norm, EXACT.create_decimal(lo)), EXACT.create_decimal(hi))
    factor = EXACT.divide(bound, norm) if norm else decimal.Decimal(1)
    return [EXACT.multiply(v, factor) for v in values], float(norm)


def assert_contract(x: torch.Tensor, y: torch.Tensor, lo: float, hi: float) -> None:
    """``y`` (rows) is the projection of ``x`` onto the shell as docs/guarantees.md promises."""
    info, tau = torch.finfo(x.dtype), SLACK[x.dtype]
    big = info.max
    for row_x, row_y in zip(x.double().tolist(), y.double().tolist(), strict=True):
        if any(math.isnan(v) for v in row_x):
            assert all(math.isnan(v) for v in row_y)
            continue
        finite = [max(-big, min(big, v)) for v in row_x]  # an infinite entry counts as max
        expected, norm = reference(finite, lo, hi)
        if lo * (1 - tau) * (1 + 1e-9) <= norm <= hi * (1 + tau) * (1 - 1e-9) or norm == 0:
            assert row_y == finite, "a slice in the set was changed"
            continue
        if lo * (1 - tau) * (1 - 1e-9) <= norm <= hi * (1 + tau) * (1 + 1e-9):
            continue  # within 1e-9 of the membership test's threshold: either is right
        relative = decimal.Decimal(ACCURACY[x.dtype])
        # results in the subnormal range: the rounding, and the margin it makes
        floor = decimal.Decimal((1 + math.sqrt(len(row_y))) * info.smallest_normal * info.eps)
        for got, want in zip(row_y, expected, strict=True):
            assert abs(decimal.Decimal(got) - want) <= relative * abs(want) + floor, (got, want)
        exact = squared_norm(torch.tensor(row_y, dtype=F64))
        if norm > hi and lo < hi:  # moved into a ball or shell: true norm at most hi
            assert exact <= Fraction(hi) ** 2
        else:  # onto a sphere, or up to lo: within the slack (and the subnormal spacing)
            bound = hi if norm > hi else lo
            slack = tau * bound + math.sqrt(len(row_y)) * info.smallest_normal * info.eps / 2
            assert (Fraction(bound) - Fraction(slack)) ** 2 <= exact
            assert exact <= (Fraction(bound) + Fraction(slack)) ** 2


@st.composite
def shells_and_slices(draw: st.DrawFn, dtype: torch.dtype) -> tuple[torch.Tensor, float, float]:
    """Rows of one length (1 to 300) spanning the dtype's range, and a shell near their norms."""
    info = torch.finfo(dtype)
    lowest = math.frexp(info.smallest_normal * info.eps)[1] - 1
    highest = math.frexp(info.max)[1] - 1
    n = draw(st.integers(1, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = draw(st.integers(lowest, highest))
    spread = draw(st.integers(0, 40))
    exponents = np.clip(base - rng.integers(0, spread + 1, (3, n)), lowest, highest)
    values = np.ldexp(rng.uniform(1, 2, (3, n)) * rng.choice([-1.0, 1.0], (3, n)), exponents)
    x = torch.from_numpy(values).to(dtype).clamp(-info.max, info.max)
    norm = math.hypot(*x[0].double().tolist())
    kind = draw(st.sampled_from(["ball", "shell", "sphere"]))
    ratio = draw(st.sampled_from([0.25, 0.999, 1 - 4e-7, 1.0, 1 + 4e-7, 1.0001, 4.0]))
    # radii whose projections have normal entries (below, rounding errs by a subnormal
    # spacing, not relatively: docs/guarantees.md), with room for them below the largest
    smallest = 4 * math.sqrt(n) * info.smallest_normal
    hi = min(max(norm * ratio, smallest), info.max / 4) if math.isfinite(norm) else 1.0
    lo = {"ball": 0.0, "shell": hi / 2, "sphere": hi}[kind]
    return x, lo, hi


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@settings(max_examples=40)
@given(data=st.data())
def test_norm_projections_meet_the_contract_at_every_magnitude(
    dtype: torch.dtype, data: st.DataObject
) -> None:
    x, lo, hi = data.draw(shells_and_slices(dtype))
    y = project_min_max_norm(x, lo, hi, dim=0)
    assert_contract(x, y, lo, hi)
    assert torch.equal(project_min_max_norm(y, lo, hi, dim=0), y), "not idempotent"
    assert torch.equal(project_min_max_norm_(x.clone(), lo, hi, dim=0), y), "in place differs"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 1000, 4097, 100_000])
def test_long_and_short_slices_meet_the_contract(dtype: torch.dtype, n: int) -> None:
    generator = torch.Generator().manual_seed(n)
    x = torch.randn(3, n, generator=generator, dtype=F64).to(dtype)
    norms = [math.hypot(*row) for row in x.double().tolist()]
    x[1] *= 3  # outside
    hi = norms[0] * (1 + SLACK[dtype] / 2)  # the first row: on the boundary, inside
    for lo in (0.0, hi):
        y = project_min_max_norm(x, lo, hi, dim=0)
        assert_contract(x, y, lo, hi)
        assert torch.equal(project_min_max_norm(y, lo, hi, dim=0), y)


# ---------------------------------------------------------------- each path, taken and right
@pytest.fixture
def exact_rows(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The rows each call hands to the exact path (a recording wrapper around it)."""
    seen: list[torch.Tensor] = []
    original = _l2._exact

    def recording(sub: torch.Tensor, *args: object) -> object:
        seen.extend(sub.detach().double().clone())
        return original(sub, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(_l2, "_exact", recording)
    return seen


def rows_like(values: list[list[float]], dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=F64).to(dtype)


def same_rows(a: list[torch.Tensor], b: torch.Tensor) -> bool:
    key = sorted(tuple(r.nan_to_num(nan=7.0).tolist()) for r in a)
    return key == sorted(tuple(r.nan_to_num(nan=7.0).tolist()) for r in b.double())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_each_path_of_a_ball_is_taken_for_its_slices_and_right(
    dtype: torch.dtype, exact_rows: list[torch.Tensor]
) -> None:
    n = 130  # two chunks of the fast norm: its float64 combination runs too
    unit = [1 / math.sqrt(n)] * n
    big = torch.finfo(dtype).max
    certain = rows_like([[0.5 * v for v in unit], [3.0 * v for v in unit], [0.0] * n], dtype)
    boundary = [[1 + SLACK[dtype]] + [0.0] * (n - 1)]  # norm exactly 1 + tau: the threshold
    odd = [[INF] + [1.0] * (n - 1), [NAN] + [1.0] * (n - 1)]
    undecided = rows_like(boundary + odd, dtype)
    if dtype != torch.float16:  # squares of float16 do not overflow float32
        undecided = torch.cat([undecided, rows_like([[big / 2] * n], dtype)])
    x = torch.cat([certain, undecided])
    y = project_min_max_norm(x, 0.0, 1.0, dim=0)
    assert same_rows(exact_rows, undecided), "exactly the undecided slices take the exact path"
    assert torch.equal(y[0], x[0]) and torch.equal(y[2], x[2])  # certainly inside: kept
    assert_contract(x, y, 0.0, 1.0)
    exact_rows.clear()
    again = project_min_max_norm(y, 0.0, 1.0, dim=0)
    assert torch.equal(again.nan_to_num(7.0), y.nan_to_num(7.0))  # the NaN slice stays NaN
    assert same_rows(exact_rows, y[[3, 5]]), "moved slices are certified inside on the next call"


def band_rows(dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rows of 130 (two chunks) whose norms straddle 1 + tau within 4e-6: the fast bound's band."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(40, 130, generator=generator, dtype=F64)
    targets = (1 + SLACK[dtype]) * (1 + torch.linspace(-4e-6, 4e-6, 40, dtype=F64))
    return (rows * (targets / rows.norm(dim=1)).unsqueeze(1)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, F32], ids=str)
@pytest.mark.parametrize("seed", range(3))
def test_slices_in_the_band_alone_are_decided_by_float64_norms_as_the_exact_path_would(
    dtype: torch.dtype, seed: int, exact_rows: list[torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    band = band_rows(dtype, seed)
    inside = rows_like([[0.5 / math.sqrt(130)] * 130], dtype)
    above = rows_like([[3.0 / math.sqrt(130)] * 130], dtype)
    refined = []
    original, plan = _l2._band, _l2.plan
    monkeypatch.setattr(_l2, "_band", lambda *a, **k: refined.append(1) or original(*a, **k))
    for x in (torch.cat([inside, band]), torch.cat([inside, band, above])):
        x.requires_grad_()
        y = project_min_max_norm(x, 0.0, 1.0, dim=0)
        (grad,) = torch.autograd.grad(y, x, torch.linspace(-1, 1, x.numel()).view_as(x).to(dtype))
        assert refined and not exact_rows, "the band is decided without the general exact path"
        assert_contract(x.detach(), y.detach(), 0.0, 1.0)
        with monkeypatch.context() as general:  # the same rows through the exact path
            general.setattr(_l2, "plan", lambda *a: plan(*a)._replace(refine=False))
            z = project_min_max_norm(x, 0.0, 1.0, dim=0)
            (expected,) = torch.autograd.grad(
                z, x, torch.linspace(-1, 1, x.numel()).view_as(x).to(dtype)
            )
        assert exact_rows, "without refine the band takes the exact path"
        assert torch.equal(y, z) and torch.equal(grad, expected)
        exact_rows.clear()
        refined.clear()


def test_another_default_device_leaves_the_cpu_fast_path_alone() -> None:
    x = rows_like([[3.0, 4.0], [0.3, 0.4], [1.0 + 2 * SLACK[F32], 0.0]], F32)
    expected = project_min_max_norm(x, 0.0, 1.0, dim=0)
    _l2._cpu_constant.cache_clear()  # the constants are made again, under the meta device
    with torch.device("meta"):
        y = project_min_max_norm(x, 0.0, 1.0, dim=0)
    assert y.device.type == "cpu" and torch.equal(y, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, F32], ids=str)
def test_a_band_of_slices_all_kept_is_not_written(dtype: torch.dtype) -> None:
    band = band_rows(dtype, 0)
    norms = band.double().norm(dim=1)
    kept = band[norms <= 1 + SLACK[dtype]]
    assert len(kept) > 3
    x = torch.cat([kept, rows_like([[0.5 / math.sqrt(130)] * 130], dtype)])
    before = x.clone()
    assert _l2.project_rows(x, 0.0, 1.0, SLACK[dtype], inplace=True) is None
    assert torch.equal(x, before)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_a_sphere_takes_the_exact_path_where_the_fast_bound_is_wider_than_the_slack(
    dtype: torch.dtype, exact_rows: list[torch.Tensor]
) -> None:
    unit = [1 / math.sqrt(130)] * 130  # rows of 130: the fast bound is about 65 units
    x = rows_like([[5 * v for v in unit], [v / 2 for v in unit], [0.0] * 130, unit], dtype)
    y = project_min_max_norm(x, 1.0, 1.0, dim=0)
    assert_contract(x, y, 1.0, 1.0)
    if dtype in (F32, F64):  # wider than the slack of 2 and 4 eps: every slice is exact
        assert same_rows(exact_rows, x)
    else:  # float16, bfloat16: the fast path keeps the last slice and moves the first
        # down; a slice moved up, and the zero slice, take the exact path
        assert same_rows(exact_rows, x[1:3])


def test_radii_too_small_for_the_fast_bound_take_the_exact_path(
    exact_rows: list[torch.Tensor],
) -> None:
    x = torch.tensor([[3e-30, 4e-30], [3e-31, 4e-31], [1e-44, 0.0]])  # squares underflow
    y = project_min_max_norm(x, 0.0, 1e-30, dim=0)
    assert same_rows(exact_rows, x)
    assert_contract(x, y, 0.0, 1e-30)


def test_under_torch_compile_every_slice_takes_the_branch_free_exact_path() -> None:
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [INF, 1.0], [0.0, 0.0]])
    compiled = torch.compile(
        lambda t: project_min_max_norm(t, 0.0, 1.0, dim=0), fullgraph=True, backend="eager"
    )
    y = compiled(x)
    assert_contract(x, y, 0.0, 1.0)
    assert torch.equal(y[1], x[1])


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_off_the_cpu_no_kernel_reads_a_value(dtype: torch.dtype) -> None:
    # What a GPU sees (the branch-free exact path): no host-device synchronisation.
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [INF, 1.0], [0.0, 0.0]], dtype=dtype)
    rows = torch.tensor([[0.2, -0.7, 3.0], [0.5, 0.1, 0.3]], dtype=dtype)
    sets = (L1Ball(1.0, dim=0), Simplex(1.0, dim=0))
    results, grads = [], []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_l2, "branches", lambda t: False)
        mp.setattr(torch.Tensor, "item", lambda self: pytest.fail("item() syncs"))
        mp.setattr(torch.Tensor, "__bool__", lambda self: pytest.fail("bool() syncs"))
        for lo in (0.0, 1.0):
            results.append(project_min_max_norm(x, lo, 1.0, dim=0))
            results.append(project_min_max_norm_(x.clone(), lo, 1.0, dim=0))
            w = x[:2].clone().requires_grad_()
            project_min_max_norm(w, lo, 1.0, dim=0).sum().backward()
            grads.append(w.grad)
        results += [c.project(rows) for c in sets]
    for k, lo in enumerate((0.0, 1.0)):
        assert_contract(x, results[2 * k], lo, 1.0)
        assert torch.equal(results[2 * k + 1], results[2 * k])
        torch.testing.assert_close(results[2 * k], project_min_max_norm(x, lo, 1.0, dim=0))
        assert grads[k] is not None and grads[k].isfinite().all()
    for c, y in zip(sets, results[4:], strict=True):
        torch.testing.assert_close(y, c.project(rows), rtol=1e-6, atol=1e-12)
