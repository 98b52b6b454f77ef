"""Bounds are rounded toward the inside of the feasible set, in the tensor's dtype."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torch_constraints._rounding import inward_scalar, inward_tensor

HALF_AND_SINGLE = [torch.float32, torch.bfloat16, torch.float16]
finite = st.floats(min_value=-6e4, max_value=6e4, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize("dtype", HALF_AND_SINGLE, ids=str)
@given(value=finite)
def test_scalar_bounds_round_inward_to_the_nearest_representable_value(
    dtype: torch.dtype, value: float
) -> None:
    lower = inward_scalar(value, dtype, lower=True)
    upper = inward_scalar(value, dtype, lower=False)
    assert lower >= value and upper <= value
    # Representable in the dtype, and no representable value lies strictly between.
    for rounded in (lower, upper):
        assert float(torch.tensor(rounded, dtype=dtype)) == rounded
    assert (
        float(
            torch.nextafter(torch.tensor(lower, dtype=dtype), torch.tensor(-math.inf, dtype=dtype))
        )
        < value
    )
    assert (
        float(
            torch.nextafter(torch.tensor(upper, dtype=dtype), torch.tensor(math.inf, dtype=dtype))
        )
        > value
    )


def test_reference_values() -> None:
    # float32(0.05) = 0.0500000007 lies above 0.05, so an upper bound rounds down.
    assert inward_scalar(0.05, torch.float32, lower=False) == pytest.approx(0.049999997, abs=1e-9)
    assert inward_scalar(0.05, torch.float32, lower=False) < 0.05
    assert inward_scalar(-0.05, torch.float32, lower=True) > -0.05
    assert inward_scalar(0.05, torch.bfloat16, lower=False) == 0.0498046875
    assert inward_scalar(0.5, torch.bfloat16, lower=False) == 0.5  # exact values are kept
    assert inward_scalar(0.05, torch.float64, lower=False) == 0.05


def test_infinite_bounds_stay_infinite() -> None:
    assert inward_scalar(math.inf, torch.float16, lower=False) == math.inf
    assert inward_scalar(-math.inf, torch.bfloat16, lower=True) == -math.inf


def test_bounds_beyond_the_dtype_range_clip_to_its_largest_value() -> None:
    assert inward_scalar(1e6, torch.float16, lower=False) == float(torch.finfo(torch.float16).max)


@pytest.mark.parametrize("dtype", HALF_AND_SINGLE, ids=str)
def test_tensor_bounds_round_elementwise(dtype: torch.dtype) -> None:
    bound = torch.tensor([0.05, -0.05, 0.5, 1 / 3], dtype=torch.float64)
    lower = inward_tensor(bound, dtype, lower=True)
    upper = inward_tensor(bound, dtype, lower=False)
    assert lower.dtype == upper.dtype == dtype
    assert (lower.double() >= bound).all() and (upper.double() <= bound).all()
    assert lower[2] == upper[2] == 0.5
