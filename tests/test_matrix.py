"""SpectralBall, Orthogonal, PSD: numpy float64 oracles, feasibility, gradients, batching."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch
from helpers import raw
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from torch_constraints import (
    PSD,
    Constraint,
    Orthogonal,
    PackedProjection,
    SpectralBall,
    constrain,
    get,
    hard_project,
    serialize,
    spectral_norm_bound,
    violation,
)

SHAPES = [(5, 8), (8, 5), (6, 6), (3, 2, 2, 2)]  # wide, tall, square, a conv (3, 8)
FLOAT_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


# ----------------------------------------------------------------------------- oracles
def as_matrix(w: np.ndarray) -> np.ndarray:
    return w.reshape(w.shape[0], -1)


def oracle_ball(w: np.ndarray, radius: float) -> np.ndarray:
    m = as_matrix(w)
    u, s, vh = np.linalg.svd(m, full_matrices=False)
    return ((u * np.minimum(s, radius)) @ vh).reshape(w.shape)


def oracle_polar(w: np.ndarray) -> np.ndarray:
    u, _, vh = np.linalg.svd(as_matrix(w), full_matrices=False)
    return (u @ vh).reshape(w.shape)


def oracle_psd(w: np.ndarray) -> np.ndarray:
    m = as_matrix(w)
    lam, q = np.linalg.eigh((m + m.T) / 2)
    return ((q * np.maximum(lam, 0)) @ q.T).reshape(w.shape)


def sigma_max(w: torch.Tensor) -> float:
    return float(np.linalg.norm(as_matrix(w.detach().double().numpy()), 2))


def with_singular_values(shape: tuple[int, ...], values: list[float], seed: int) -> np.ndarray:
    """A matrix of ``shape`` (as (out, -1)) with the given singular values."""
    rng = np.random.default_rng(seed)
    m, n = shape[0], math.prod(shape[1:])
    k = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = np.array((values * k)[:k])
    return ((u * s) @ v.T).reshape(shape)


def random(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape) * scale


CASES = {
    "random": lambda shape: random(shape, 0, 1.0),
    "rank_one": lambda shape: with_singular_values(shape, [3.0] + [0.0] * 10, 1),
    "repeated": lambda shape: with_singular_values(shape, [2.0, 2.0, 0.5], 2),
    "feasible": lambda shape: with_singular_values(shape, [0.9, 0.3], 3),
}


# ----------------------------------------------------------------------------- float64 oracle
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_spectral_ball_matches_numpy_svd(shape: tuple[int, ...], case: str) -> None:
    w = CASES[case](shape)
    expected = oracle_ball(w, 1.0)
    got = SpectralBall(1.0).project(torch.from_numpy(w))
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)
    inplace = torch.from_numpy(w.copy())
    SpectralBall(1.0).project_(inplace)
    np.testing.assert_allclose(inplace.numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("case", ["random", "repeated", "feasible"])
def test_orthogonal_matches_numpy_polar_factor(shape: tuple[int, ...], case: str) -> None:
    w = CASES[case](shape)  # full rank: the polar factor is unique
    got = Orthogonal().project(torch.from_numpy(w))
    np.testing.assert_allclose(got.numpy(), oracle_polar(w), rtol=0, atol=1e-12)


def test_orthogonal_of_rank_deficient_matrix_is_still_orthogonal() -> None:
    w = torch.from_numpy(with_singular_values((4, 6), [2.0, 0.0], 4))
    q = Orthogonal().project(w)
    torch.testing.assert_close(q @ q.T, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", ["random", "rank_deficient", "psd", "negative"])
def test_psd_matches_numpy_eigh(case: str) -> None:
    rng = np.random.default_rng(5)
    a = rng.standard_normal((6, 6))
    w = {
        "random": a,
        "rank_deficient": a[:, :2] @ a[:, :2].T - a[:, 2:4] @ a[:, 2:4].T,
        "psd": a @ a.T,
        "negative": -(a @ a.T),
    }[case]
    got = PSD().project(torch.from_numpy(w))
    np.testing.assert_allclose(got.numpy(), oracle_psd(w), rtol=0, atol=1e-12)
    assert torch.equal(got, got.T)


def test_psd_of_a_conv_shaped_square_weight() -> None:
    w = random((8, 2, 2, 2), 6)
    got = PSD().project(torch.from_numpy(w))
    np.testing.assert_allclose(got.numpy(), oracle_psd(w), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- low precision
# float32: 1e-5 relative to the largest singular value; bfloat16: decomposed in float32,
# then rounded, so within a few bfloat16 units (2**-8) of the largest entry.
TOLERANCES = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize(
    ("constraint", "oracle"),
    [
        (SpectralBall(1.0), lambda w: oracle_ball(w, 1.0)),
        (Orthogonal(), oracle_polar),
        (PSD(), oracle_psd),
    ],
    ids=["SpectralBall", "Orthogonal", "PSD"],
)
def test_low_precision_within_documented_tolerance(dtype: torch.dtype, constraint, oracle) -> None:  # type: ignore[no-untyped-def]
    w = torch.from_numpy(random((16, 16), 7, 0.5)).to(dtype)
    expected = oracle(w.double().numpy())
    got = constraint.project(w)
    assert got.dtype == dtype
    scale = max(1.0, np.abs(expected).max())
    assert np.abs(got.double().numpy() - expected).max() <= TOLERANCES[dtype] * scale


# ----------------------------------------------------------------------------- properties
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_spectral_ball_identity_inside_bit_for_bit(shape: tuple[int, ...]) -> None:
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        w = torch.from_numpy(with_singular_values(shape, [0.99, 0.5, 0.1], 8)).to(dtype)
        assert torch.equal(SpectralBall(1.0).project(w), w)
        inplace = w.clone()
        SpectralBall(1.0).project_(inplace)
        assert torch.equal(inplace, w)


def test_psd_identity_on_symmetric_psd_bit_for_bit() -> None:
    a = torch.randn(7, 7, generator=torch.Generator().manual_seed(0))
    w = a @ a.T + torch.eye(7)
    w = (w + w.T) / 2
    assert torch.equal(PSD().project(w), w)


@pytest.mark.parametrize(
    "constraint", [SpectralBall(0.7), Orthogonal(), PSD()], ids=["ball", "orth", "psd"]
)
def test_idempotent(constraint: SpectralBall | Orthogonal | PSD) -> None:
    w = torch.from_numpy(random((6, 6), 9, 2.0))
    once = constraint.project(w)
    torch.testing.assert_close(constraint.project(once), once, rtol=0, atol=1e-12)


@pytest.mark.parametrize("constraint", [SpectralBall(0.7), PSD()], ids=["ball", "psd"])
def test_non_expansive(constraint: SpectralBall | PSD) -> None:
    for seed in range(10):
        x = torch.from_numpy(random((6, 6), 100 + seed, 2.0))
        y = torch.from_numpy(random((6, 6), 200 + seed, 2.0))
        gap = (constraint.project(x) - constraint.project(y)).norm()
        assert gap <= (x - y).norm() * (1 + 1e-12)


# ----------------------------------------------------------------------------- the bound
PRECISIONS = ["highest", "high", "medium"]  # float32 matmuls: IEEE, TF32, bf16


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """``torch.set_float32_matmul_precision(precision)`` for the block ("high" and
    "medium" let oneDNN's CPU matmuls round to TF32/bf16 too)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(
    "case",
    [
        "rank_one",
        "repeated",
        "near_repeated",
        "random_square",
        "random_wide",
        "tall",
        "zero",
        "tiny",
        "subnormal",
        "huge",
    ],
)
def test_spectral_norm_bound_never_under_estimates(
    dtype: torch.dtype, case: str, precision: str
) -> None:
    w = {
        "rank_one": with_singular_values((40, 60), [5.0, 0.0], 10),
        "repeated": with_singular_values((40, 40), [1.0], 11),
        "near_repeated": with_singular_values((30, 50), [1.0, 1 - 1e-7, 1 - 2e-7, 0.5], 12),
        "random_square": random((64, 64), 12),
        "random_wide": random((16, 300), 13),
        "tall": random((300, 16), 14),
        "zero": np.zeros((5, 5)),
        "tiny": random((20, 20), 15, 1e-30),
        "subnormal": random((20, 20), 17, 1e-42),
        "huge": random((20, 20), 16, 1e30),
    }[case]
    if dtype in (torch.bfloat16, torch.float16) and case in ("tiny", "subnormal", "huge"):
        return  # out of the half dtypes' range
    stored = torch.from_numpy(w).to(dtype)
    with matmul_precision(precision):
        bound = float(spectral_norm_bound(stored))
    exact = sigma_max(stored)
    assert exact <= bound
    # And useful: TF32/bf16 products carry a larger rounding error, and so a looser bound.
    assert bound <= exact * (1.1 if precision == "highest" else 2.0) + 1e-300


def integer_vector(draw: Callable[..., Any], length: int, bits: int) -> np.ndarray:
    values = st.integers(-(2**bits) + 1, 2**bits - 1)
    return np.array(draw(st.lists(values, min_size=length, max_size=length)), dtype=np.int64)


#: Per dtype: bits of each integer factor (so every entry x_i * y_j is exact) and the
#: range of the power of two scaling them (so that it stays exact and finite).
RANK_ONE_RANGES = {
    torch.float16: (5, -24, 4),
    torch.bfloat16: (4, -120, 110),
    torch.float32: (12, -149, 100),
    torch.float64: (26, -1074, 960),
}


@given(data=st.data())
def test_spectral_norm_bound_of_rank_one_matrices_against_exact_arithmetic(
    data: st.DataObject,
) -> None:
    # x y^T 2^e has the single singular value |x| |y| 2^e: exact in rational arithmetic.
    dtype = data.draw(st.sampled_from(list(RANK_ONE_RANGES)))
    bits, low, high = RANK_ONE_RANGES[dtype]
    m, n = data.draw(st.integers(1, 320)), data.draw(st.integers(1, 320))
    constant = data.draw(st.booleans())
    x = integer_vector(data.draw, 1 if constant else m, bits).repeat(m if constant else 1)
    y = integer_vector(data.draw, 1 if constant else n, bits).repeat(n if constant else 1)
    e = data.draw(st.integers(low, high))
    iterations = data.draw(st.integers(0, 6))
    entries = np.outer(x, y).astype(np.float64) * 2.0**e
    stored = torch.from_numpy(entries).to(dtype)
    assert np.array_equal(stored.double().numpy(), entries)  # the oracle's matrix is the stored one
    sigma_squared = Fraction(int((x**2).sum()) * int((y**2).sum())) * Fraction(2) ** (2 * e)
    with matmul_precision(data.draw(st.sampled_from(PRECISIONS))):
        bound = float(spectral_norm_bound(stored, iterations=iterations))
    assert Fraction(bound) ** 2 >= sigma_squared
    assert sigma_squared > 0 or bound == 0


@pytest.mark.parametrize("precision", PRECISIONS)
def test_spectral_norm_bound_of_constant_matrices_covers_the_rounding(precision: str) -> None:
    # sigma_max(c * ones(m, n)) = |c| sqrt(mn): these float32 cases were under by 0.15 and
    # 0.27, the float64 one by 2.5e-14 (its rounding was not fully accounted for).
    with matmul_precision(precision):
        assert float(spectral_norm_bound(torch.ones(1000, 1000), iterations=0)) >= 1000
        assert float(spectral_norm_bound(torch.ones(1500, 1500), iterations=1)) >= 1500
        for iterations in range(8):
            ones = torch.ones(300, 300, dtype=torch.float64)
            assert float(spectral_norm_bound(ones, iterations=iterations)) >= 300
            third = torch.full((300, 300), 1 / 3)  # sigma = 300 * fl32(1/3) exactly
            exact = 300 * Fraction(float(third[0, 0]))
            assert Fraction(float(spectral_norm_bound(third, iterations=iterations))) >= exact


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_spectral_norm_bound_of_zero_infinite_and_nan_matrices(
    dtype: torch.dtype, precision: str
) -> None:
    batch = torch.zeros(5, 300, 300, dtype=dtype)
    batch[1, 3, 4] = math.inf
    batch[2, 0, 0] = -math.inf
    batch[3, 5, 5] = math.nan
    batch[4] = 2.0
    with matmul_precision(precision):
        bounds = spectral_norm_bound(batch).tolist()
        empty = [spectral_norm_bound(torch.ones(s)).tolist() for s in [(3, 0), (0, 3), (0, 4, 4)]]
    assert bounds[:3] == [0.0, math.inf, math.inf]
    assert math.isnan(bounds[3])
    assert 600.0 <= bounds[4] < 600.0 * 1.1
    assert empty == [0.0, 0.0, []]


def test_spectral_norm_bound_assumes_the_backend_matmul_precision() -> None:
    # oneDNN may run float32 CPU matmuls in bf16 when its fp32_precision says so.
    w = torch.from_numpy(random((64, 64), 18)).float()
    exact = sigma_max(w)
    before = torch.backends.mkldnn.matmul.fp32_precision  # type: ignore[attr-defined]
    try:
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"  # type: ignore[attr-defined]
        reduced = float(spectral_norm_bound(w))
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = before  # type: ignore[attr-defined]
    assert exact <= float(spectral_norm_bound(w)) < reduced


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_ldexp_builds_exact_powers_of_two_across_the_normal_range(
    dtype: torch.dtype, device: str
) -> None:
    # The bound's proof scales by powers of two built with torch.ldexp.
    limit = 126 if dtype == torch.float32 else 1022
    k = torch.arange(-limit, limit + 1, device=device)
    powers = torch.ldexp(torch.ones_like(k, dtype=dtype), k).cpu().tolist()
    assert powers == [2.0**e for e in range(-limit, limit + 1)]


def test_spectral_norm_bound_batched_and_tight_with_more_iterations() -> None:
    w = torch.from_numpy(np.stack([random((30, 20), s) for s in range(4)]))
    bounds = spectral_norm_bound(w, iterations=8)
    exact = torch.linalg.matrix_norm(w, ord=2)
    assert bounds.shape == (4,)
    assert bool((bounds >= exact).all()) and bool((bounds <= exact * 1.001).all())


def test_spectral_norm_bound_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        spectral_norm_bound(torch.ones(3))
    with pytest.raises(ValueError, match="-1"):
        spectral_norm_bound(torch.ones(3, 3), iterations=-1)


def test_hard_project_moves_a_matrix_that_the_bound_only_just_excludes() -> None:
    # sigma = 300 exactly; the radius is 5e-12 below it (the old bound certified it inside).
    radius = 300 - 5e-12
    layer = nn.Linear(300, 300, bias=False, dtype=torch.float64)
    constrain(layer, "weight", SpectralBall(radius, iterations=0), parametrize=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    hard_project(layer)
    assert not bool((layer.weight == 1.0).all())
    assert sigma_max(layer.weight) <= radius * (1 + 1e-14)


# ----------------------------------------------------------------------------- rescale
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_rescale_is_always_inside_and_keeps_feasible_matrices(dtype: torch.dtype) -> None:
    c = SpectralBall(1.0, method="rescale")
    for seed in range(5):
        w = torch.from_numpy(random((32, 48), 300 + seed, 1.0)).to(dtype)
        out = c.project(w)
        assert out.dtype == dtype
        assert sigma_max(out) <= 1.0
        # A multiple of w, shrunk at most by the bound's overshoot.
        ratio = sigma_max(out) / sigma_max(w)
        assert 1 / sigma_max(w) / 1.1 <= ratio
    inside = torch.from_numpy(with_singular_values((32, 48), [0.9, 0.1], 17)).to(dtype)
    assert torch.equal(c.project(inside), inside)
    inplace = inside.clone()
    c.project_(inplace)
    assert torch.equal(inplace, inside)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("shape", [(4, 6), (6, 4), (3, 2, 2)], ids=str)
@pytest.mark.parametrize(
    "constraint",
    [SpectralBall(1.0), Orthogonal(), SpectralBall(1.0, method="rescale")],
    ids=["ball", "orth", "rescale"],
)
def test_gradcheck(shape: tuple[int, ...], constraint: nn.Module) -> None:
    w = torch.from_numpy(random(shape, 18, 1.0)).requires_grad_()
    assert torch.autograd.gradcheck(constraint.project, (w,))  # type: ignore[attr-defined]


def test_gradcheck_psd() -> None:
    w = torch.from_numpy(random((5, 5), 19)).requires_grad_()
    assert torch.autograd.gradcheck(PSD().project, (w,))


def test_spectral_ball_jacobian_is_the_identity_inside_even_with_repeated_values() -> None:
    w = torch.from_numpy(with_singular_values((6, 6), [0.5], 20)).requires_grad_()
    upstream = torch.randn(6, 6, dtype=torch.float64)
    (grad,) = torch.autograd.grad(SpectralBall(1.0).project(w), w, upstream)
    assert torch.equal(grad, upstream)


def test_gradient_finite_on_the_boundary_after_projection() -> None:
    # Every singular value equal to the radius: torch.linalg.svd's own backward
    # divides by sigma_i^2 - sigma_j^2 there.
    w = SpectralBall(1.0).project(torch.from_numpy(random((8, 8), 21, 3.0)))
    w = (w * 1.01).requires_grad_()
    (grad,) = torch.autograd.grad(SpectralBall(1.0).project(w).sum(), w)
    assert bool(grad.isfinite().all())
    # Projection onto a convex set: its Jacobian has operator norm <= 1.
    assert grad.norm() <= torch.ones(8, 8).norm() * (1 + 1e-9)


def test_straight_through_passes_the_gradient_unchanged() -> None:
    layer = constrain(nn.Linear(6, 4), "weight", SpectralBall(0.1), straight_through=True)
    layer.weight.sum().backward()
    assert torch.equal(raw(layer).grad, torch.ones(4, 6))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- in a model
def test_hard_project_feasibility_and_oracle_on_a_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(12, 16),
        nn.Linear(16, 16),
        nn.Linear(16, 16),
        nn.Conv2d(4, 8, 3),
        nn.Linear(16, 3),
    )
    for layer in model:
        constrain(layer, "weight", SpectralBall(1.0))
    with torch.no_grad():
        for layer in model:
            raw(layer).mul_(torch.tensor(float(layer.weight.shape[0])) / 2)
        before = [raw(layer).detach().double().numpy().copy() for layer in model]
    ids = [(id(raw(layer)), raw(layer).data_ptr()) for layer in model]
    hard_project(model)
    for layer, w in zip(model, before, strict=True):
        np.testing.assert_allclose(
            raw(layer).detach().double().numpy(), oracle_ball(w, 1.0), atol=2e-5
        )
        assert sigma_max(raw(layer)) <= 1.0 + 2e-6
    assert ids == [(id(raw(layer)), raw(layer).data_ptr()) for layer in model]


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize(
    ("constraint", "oracle"),
    [
        (SpectralBall(0.5), lambda w: oracle_ball(w, 0.5)),
        (Orthogonal(), oracle_polar),
        (PSD(), oracle_psd),
    ],
    ids=["ball", "orth", "psd"],
)
def test_hard_project_batches_same_shaped_tensors(pack: bool, constraint, oracle) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(1)
    model = nn.Sequential(
        *[nn.Linear(8, 8, dtype=torch.float64) for _ in range(4)], nn.Linear(8, 8)
    )
    for layer in model:
        constrain(layer, "weight", constraint)
    with torch.no_grad():
        for layer in model:
            raw(layer).mul_(3.0)
        before = [raw(layer).detach().double().numpy().copy() for layer in model]
    calls = []
    original = torch.linalg.svd if not isinstance(constraint, PSD) else torch.linalg.eigh

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    name = "eigh" if isinstance(constraint, PSD) else "svd"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.linalg, name, counting)
        if pack:
            PackedProjection(model)()
        else:
            hard_project(model)
    for layer, w in zip(model, before, strict=True):
        tol = 1e-12 if raw(layer).dtype == torch.float64 else 1e-5
        np.testing.assert_allclose(
            raw(layer).detach().double().numpy(), oracle(w), rtol=0, atol=tol
        )
    # The four float64 weights in one batched call, the float32 one alone.
    assert sorted(math.prod(shape[:-2]) for shape in calls) == [1, 4]
    assert all(shape[-2:] == (8, 8) for shape in calls)


def test_feasible_weights_cost_no_svd() -> None:
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(3)])
    for layer in model:
        constrain(layer, "weight", SpectralBall(10.0))
    before = [raw(layer).clone() for layer in model]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.linalg, "svd", lambda *a, **k: pytest.fail("SVD on a feasible weight"))
        hard_project(model)
    assert all(torch.equal(raw(layer), w) for layer, w in zip(model, before, strict=True))


def test_only_the_infeasible_matrices_are_decomposed() -> None:
    stack = torch.from_numpy(np.stack([random((5, 7), 30, 0.01), random((5, 7), 31, 3.0)]))
    c = SpectralBall(1.0)
    c.bind(stack[0])
    shapes = []
    original = torch.linalg.svd

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        shapes.append(tuple(args[0].shape))
        return original(*args, **kwargs)

    expected = [stack[0].clone(), oracle_ball(stack[1].numpy(), 1.0)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.linalg, "svd", counting)
        c.project_(stack)
    assert len(shapes) == 1 and shapes[0] in [(1, 5, 7), (1, 7, 5)]  # either orientation
    assert torch.equal(stack[0], expected[0])
    np.testing.assert_allclose(stack[1].numpy(), expected[1], atol=1e-12)


def test_forward_sees_feasible_weights_in_parametrize_mode() -> None:
    layer = constrain(nn.Conv2d(3, 4, 3), "weight", Orthogonal())
    w = layer.weight.reshape(4, -1)
    torch.testing.assert_close(w @ w.T, torch.eye(4), rtol=0, atol=1e-5)
    psd = constrain(nn.Linear(5, 5), "weight", PSD())
    assert float(torch.linalg.eigvalsh(psd.weight.double()).min()) >= -1e-6


def test_stacks_after_another_constraint() -> None:
    layer = constrain(nn.Linear(6, 6), "weight", -0.3, 0.3)
    constrain(layer, "weight", SpectralBall(0.5))
    with torch.no_grad():
        raw(layer).fill_(2.0)
    hard_project(layer)
    # Box first, then the ball: all entries 0.3 (rank one, sigma 1.8) scaled to sigma 0.5.
    torch.testing.assert_close(raw(layer), torch.full((6, 6), 0.5 / 6), rtol=1e-5, atol=0)


def test_lipschitz_mlp_after_training() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2)
    )
    for layer in model:
        if isinstance(layer, nn.Linear):
            constrain(layer, "weight", SpectralBall(1.0))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x = torch.randn(256, 4)
    target = 5 * torch.sin(3 * x[:, :2])  # steep: pushes the weights outwards
    for _ in range(30):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), target).backward()
        opt.step()
        hard_project(model)
    a, b = torch.randn(2000, 4), torch.randn(2000, 4) * 0.1
    b = a + b
    with torch.no_grad():
        gap = (model(a) - model(b)).double().norm(dim=1)
    assert bool((gap <= (a - b).double().norm(dim=1) * (1 + 1e-5)).all())
    # The weights did reach the boundary, so the test constrains something.
    assert max(sigma_max(raw(layer)) for layer in model if isinstance(layer, nn.Linear)) > 0.99


def test_conv_lipschitz_is_within_sqrt_kernel_area_of_the_reshaped_norm() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False).double()
    x = torch.zeros(1, 2, 6, 6, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(conv, x).reshape(3 * 36, 2 * 36)
    operator = float(torch.linalg.matrix_norm(jac, ord=2))
    reshaped = sigma_max(conv.weight.detach())
    assert operator <= 3 * reshaped  # sqrt(kh * kw) = 3


# ----------------------------------------------------------------------------- robustness
def failing(times: int) -> Callable[..., object]:
    """``torch.linalg.svd`` that raises ``LinAlgError`` on its first ``times`` calls."""
    original, calls = torch.linalg.svd, []

    def svd(*args: Any, **kwargs: Any) -> object:
        calls.append(args[0])
        if len(calls) <= times:
            raise torch.linalg.LinAlgError("linalg.svd: did not converge")  # type: ignore[attr-defined]
        return original(*args, **kwargs)

    return svd


@pytest.mark.parametrize("failures", [1, 2])
@pytest.mark.parametrize(
    ("constraint", "oracle"),
    [(SpectralBall(1.0), lambda w: oracle_ball(w, 1.0)), (Orthogonal(), oracle_polar)],
    ids=["ball", "orth"],
)
def test_an_svd_that_fails_to_converge_is_retried(failures: int, constraint, oracle) -> None:  # type: ignore[no-untyped-def]
    # Retried on the other orientation, then in float64 (the CPU has no other driver).
    w = torch.from_numpy(random((6, 9), 40, 2.0)).float()
    expected = oracle(w.double().numpy())
    for project in (constraint.project, constraint.project_):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.linalg, "svd", failing(failures))
            got = project(w.clone())
        np.testing.assert_allclose(got.double().numpy(), expected, rtol=0, atol=1e-5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.linalg, "svd", failing(3))
        with pytest.raises(torch.linalg.LinAlgError):  # type: ignore[attr-defined]
            constraint.project(w)


def test_a_matrix_lapack_fails_on_is_projected() -> None:
    # With this build's LAPACK on one thread, svd(w.mT) of the last w does not converge
    # (svd(w) and float64 do); elsewhere the test still checks the projection.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(57)
        w = nn.Linear(256, 256).weight.detach()
        for _ in range(9):
            w = SpectralBall(1.0).project(w * 1.01)
        layers = [nn.Linear(256, 256), nn.Linear(256, 256)]
        for layer, constraint in zip(layers, [SpectralBall(1.0), Orthogonal()], strict=True):
            constrain(layer, "weight", constraint, parametrize=False)
            with torch.no_grad():
                layer.weight.copy_(w)
            hard_project(layer)
    finally:
        torch.set_num_threads(threads)
    assert sigma_max(w) <= 1 + 1e-5
    assert sigma_max(layers[0].weight) <= 1 + 1e-5
    q = layers[1].weight.detach().double()
    torch.testing.assert_close(q @ q.T, torch.eye(256, dtype=torch.float64), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("constraint", "oracle"),
    [
        (SpectralBall(1.0), lambda w: oracle_ball(w, 1.0)),
        (SpectralBall(1.0, method="rescale"), None),
        (Orthogonal(), oracle_polar),
        (PSD(), oracle_psd),
    ],
    ids=["ball", "rescale", "orth", "psd"],
)
def test_a_non_finite_matrix_projects_to_nan_and_leaves_the_others(constraint, oracle) -> None:  # type: ignore[no-untyped-def]
    finite = random((6, 6), 41, 2.0)
    stack = torch.from_numpy(np.stack([finite, finite, finite, finite])).float()
    stack[1, 2, 3], stack[2, 0, 0], stack[3, 5, 1] = math.nan, math.inf, -math.inf
    c = copy.deepcopy(constraint)
    c.bind(stack[0])  # the stack is a batch of four 6x6 weights
    for got in (c.project(stack), c.project_(stack.clone())):
        assert bool(got[1:].isnan().all())
        if oracle is not None:
            np.testing.assert_allclose(got[0].double().numpy(), oracle(finite), atol=1e-5)
        else:
            assert sigma_max(got[0]) <= 1.0
    # In a model: hard_project propagates the NaN instead of failing the step.
    layer = nn.Linear(6, 6)
    constrain(layer, "weight", copy.deepcopy(constraint), parametrize=False)
    with torch.no_grad():
        layer.weight.fill_(math.nan)
    hard_project(layer)
    assert bool(layer.weight.isnan().all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", ["random", "ones", "indefinite", "negative"])
def test_psd_of_a_huge_finite_matrix_is_finite_and_accurate(dtype: torch.dtype, case: str) -> None:
    big = torch.finfo(dtype).max * 0.9
    w = {
        "random": random((8, 8), 42, 1.0) / 3,
        "ones": np.ones((8, 8)),
        "indefinite": np.array([[1.0, 1.0], [1.0, -1.0]]),  # P's corner is 1.207: beyond max
        "negative": -np.eye(5),
    }[case]
    got = PSD().project(torch.from_numpy(w * big).to(dtype)).double().numpy()
    assert np.isfinite(got).all()
    expected = np.clip(oracle_psd(w) * big, -torch.finfo(dtype).max, torch.finfo(dtype).max)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(got / big, expected / big, rtol=0, atol=tolerance)


@pytest.mark.parametrize(
    ("w", "radius"),
    [
        (torch.ones(300, 300) * (torch.finfo(torch.float32).max / 4), 1.0),
        (torch.ones(128, 128), 1e-6),  # every singular value clipped, rank-one input
        (torch.from_numpy(random((128, 96), 43, 3.0)).float(), 1.0),
        (torch.from_numpy(with_singular_values((128, 128), [5.0, 0.0], 44)).float(), 1.0),
    ],
    ids=["ones_huge", "ones_tiny_radius", "random", "rank_one"],
)
def test_float32_spectral_ball_overshoot_is_within_the_documented_bound(
    w: torch.Tensor, radius: float
) -> None:
    # docs/matrix-constraints.md: sigma_max(P(W)) <= r (1 + 2 n u), n the larger side.
    bound = radius * (1 + 2 * max(w.shape) * 2.0**-24)
    assert sigma_max(SpectralBall(radius).project(w)) <= bound
    inplace = w.clone()
    SpectralBall(radius).project_(inplace)
    assert sigma_max(inplace) <= bound


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("constraint", [SpectralBall(1.0), Orthogonal()], ids=repr)
def test_violation_right_after_hard_project_is_rounding(
    dtype: torch.dtype, constraint: Constraint
) -> None:
    # Not 0: violation() decomposes the projected weight again, on its boundary.
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(128, 128)).to(dtype)
    for layer in model:
        constrain(layer, "weight", copy.deepcopy(constraint), parametrize=False)
        with torch.no_grad():
            layer.weight.mul_(20.0)  # type: ignore[operator]
    hard_project(model)
    eps = torch.finfo(dtype).eps
    assert all(0 <= v <= 16 * eps for v in violation(model).values())


# ----------------------------------------------------------------------------- zero size
@pytest.mark.parametrize("shape", [(3, 0), (0, 3), (0, 0), (4, 0, 3), (2, 3, 0)], ids=str)
@pytest.mark.parametrize(
    "constraint",
    [SpectralBall(1.0), SpectralBall(1.0, method="rescale"), Orthogonal()],
    ids=["ball", "rescale", "orth"],
)
def test_a_tensor_without_elements_is_left_as_it_is(
    shape: tuple[int, ...], constraint: Constraint
) -> None:
    # The empty matrix is in every one of these sets: sigma_max = 0, and a 3x0 matrix has
    # orthonormal columns (a 0x3 one orthonormal rows) vacuously.
    x = torch.ones(shape)
    projected = constraint.project(x)
    assert projected.shape == x.shape and projected is not x
    assert constraint.project_(x) is x and x.shape == shape
    for parametrize in (True, False):
        holder = nn.Module()
        holder.weight = nn.Parameter(torch.ones(shape))
        constrain(holder, "weight", copy.deepcopy(constraint), parametrize=parametrize)
        hard_project(holder)
        assert holder.weight.shape == shape


def test_psd_of_an_empty_square_tensor_is_a_no_op_and_of_a_non_square_one_an_error() -> None:
    for x in (torch.ones(0, 0), torch.ones(0, 0, 0), torch.ones(0, 4, 4)):
        c = PSD()
        if x.ndim == 3:
            c.bind(torch.ones(x.shape[1:]))
        assert c.project(x).shape == x.shape and c.project_(x) is x
    with pytest.raises(ValueError, match=r"square.*\(3, 0\)"):
        PSD().project(torch.ones(3, 0))


# ----------------------------------------------------------------------------- config, errors
@pytest.mark.parametrize(
    "constraint", [SpectralBall(0.5, method="rescale", iterations=6), Orthogonal(), PSD()]
)
def test_config_round_trip_and_copies(constraint: nn.Module) -> None:
    rebuilt = get(serialize(constraint))  # type: ignore[arg-type]
    assert repr(rebuilt) == repr(constraint)
    assert rebuilt.get_config() == constraint.get_config()  # type: ignore[operator]
    assert repr(copy.deepcopy(constraint)) == repr(constraint)


def test_names() -> None:
    assert type(get("spectral_ball")) is SpectralBall
    assert type(get("orthogonal")) is Orthogonal
    assert type(get("psd")) is PSD


def test_fusion_key_tells_configurations_apart() -> None:
    a, b, c = SpectralBall(1.0), SpectralBall(2.0), SpectralBall(1.0, method="rescale")
    for constraint in (a, b, c):
        constraint.bind(torch.ones(3, 3))
    assert len({a.fusion_key(), b.fusion_key(), c.fusion_key()}) == 3
    d = SpectralBall(1.0)
    d.bind(torch.ones(3, 1, 3))
    assert d.fusion_key() != a.fusion_key()
    assert SpectralBall(1.0).fusion_key() is None  # unbound


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"radius": -1.0}, "radius must be >= 0, got -1.0"),
        ({"radius": math.inf}, "radius must be finite"),
        ({"method": "power"}, "method must be 'svd' or 'rescale', got 'power'"),
        ({"iterations": 31}, r"iterations must be an int in \[0, 30\], got 31"),
        ({"iterations": 2.0}, "iterations must be an int in .*, got 2.0"),
    ],
)
def test_spectral_ball_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        SpectralBall(**kwargs)  # type: ignore[arg-type]


def test_psd_refuses_non_square_weight_and_changes_nothing() -> None:
    layer = nn.Linear(4, 3)
    before = layer.weight.detach().clone()
    with pytest.raises(ValueError, match=r"Linear\.weight.*square.*\(3, 4\)"):
        constrain(layer, "weight", PSD())
    assert not hasattr(layer, "parametrizations")
    assert torch.equal(layer.weight, before)


@pytest.mark.parametrize("constraint", [SpectralBall(), Orthogonal(), PSD()])
def test_vectors_refused_at_registration(constraint: nn.Module) -> None:
    layer = nn.Linear(4, 4)
    with pytest.raises(ValueError, match=r"bias.*at least 2 dimensions.*\(4,\)"):
        constrain(layer, "bias", constraint)  # type: ignore[arg-type]
    assert not hasattr(layer, "parametrizations")


@pytest.mark.parametrize("constraint", [SpectralBall(1.0), Orthogonal(), PSD()], ids=repr)
def test_recorded_without_a_parametrization(constraint: Constraint) -> None:
    torch.manual_seed(3)
    layer = nn.Linear(6, 6)
    weight = layer.weight
    constrain(layer, "weight", constraint, parametrize=False)
    assert type(layer) is nn.Linear and layer.weight is weight
    with torch.no_grad():
        layer.weight.mul_(5.0)
    hard_project(layer)
    w = layer.weight.detach().double()
    if isinstance(constraint, SpectralBall):
        assert sigma_max(layer.weight) <= 1.0 + 2e-6
    elif isinstance(constraint, Orthogonal):
        assert torch.allclose(w @ w.T, torch.eye(6, dtype=torch.float64), atol=1e-5)
    else:
        assert torch.linalg.eigvalsh((w + w.T) / 2).min() >= -1e-5


def test_a_bound_below_float64s_normal_range_still_covers_sigma() -> None:
    # sigma = sqrt(2) * 2**-1060, a subnormal: scaling the result there rounds it.
    tiny = torch.full((1, 2), 2.0**-1060, dtype=torch.float64)
    sigma = Fraction(2) * Fraction(2) ** (-2120)  # sigma squared, exactly
    for iterations in range(3):
        bound = float(spectral_norm_bound(tiny, iterations=iterations))
        assert Fraction(bound) ** 2 >= sigma
