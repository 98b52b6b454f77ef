"""Constructor arguments: every real number is accepted, bools and complex numbers are not."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from torch_constraints import (
    L1Ball,
    L2Ball,
    L2Sphere,
    LinfBall,
    MaxNorm,
    MinMaxNorm,
    Simplex,
)
from torch_constraints._validation import number

np = pytest.importorskip("numpy")

REALS = [
    np.float16(0.5),
    np.float32(0.5),
    np.float64(0.5),
    np.int8(2),
    np.int64(2),
    np.uint8(2),
    Fraction(1, 2),
    torch.tensor(0.5),
    torch.tensor(2, dtype=torch.int64),
    torch.tensor(0.5, dtype=torch.float64),
]


@pytest.mark.parametrize("value", REALS, ids=repr)
def test_every_real_scalar_is_a_number(value: object) -> None:
    result = number("MaxNorm", "max_value", value)
    assert type(result) is float and result == float(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", REALS, ids=repr)
@pytest.mark.parametrize(
    ("cls", "attribute"),
    [
        (MaxNorm, "max_value"),
        (L1Ball, "radius"),
        (L2Ball, "radius"),
        (L2Sphere, "radius"),
        (LinfBall, "radius"),
        (Simplex, "scale"),
    ],
)
def test_constructors_accept_numpy_and_0d_tensor_scalars(
    cls: type, attribute: str, value: object
) -> None:
    constraint = cls(value)
    assert getattr(constraint, attribute) == float(value)  # type: ignore[arg-type]
    assert type(getattr(constraint, attribute)) is float
    assert repr(constraint) == repr(cls(float(value)))  # type: ignore[arg-type]


def test_min_max_norm_accepts_numpy_scalars() -> None:
    c = MinMaxNorm(np.float32(0.25), np.int64(2), rate=np.float32(0.5))
    assert (c.min_value, c.max_value, c.rate) == (0.25, 2.0, 0.5)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1 + 2j, r"MaxNorm: max_value must be a real number, got \(1\+2j\)$"),
        (np.complex64(1), r"MaxNorm: max_value must be a real number, got np\.complex64\(1\+0j\)$"),
        (True, r"MaxNorm: max_value must be a real number, got True \(a bool\)$"),
        (np.True_, r"MaxNorm: max_value must be a real number, got np\.True_ \(a bool\)$"),
        (
            torch.tensor(True),
            r"max_value must be a real number, got a tensor of shape \(\) and dtype torch\.bool$",
        ),
        (
            torch.tensor(1j),
            r"got a tensor of shape \(\) and dtype torch\.complex64",
        ),
        (
            torch.ones(2),
            r"got a tensor of shape \(2,\) and dtype torch\.float32",
        ),
        ("2", r"MaxNorm: max_value must be a number, got '2'$"),
    ],
    ids=repr,
)
def test_non_real_values_are_refused_naming_what_was_received(value: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        MaxNorm(value)  # type: ignore[arg-type]
