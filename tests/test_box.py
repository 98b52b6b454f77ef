"""Box and NonNeg: validation, projection, config, dtype handling."""

from __future__ import annotations

import math
import pickle
from fractions import Fraction

import pytest
import torch
from helpers import raw
from torch import nn

from torch_constraints import Box, NonNeg, constrain, hard_project, named_constraints


def test_projection_reference_values() -> None:
    x = torch.tensor([-3.0, -1.0, 0.25, 1.0, 2.0])
    assert Box(-1, 1).project(x).tolist() == [-1.0, -1.0, 0.25, 1.0, 1.0]
    assert Box(min=0).project(x).tolist() == [0.0, 0.0, 0.25, 1.0, 2.0]
    assert Box(max=0.5).project(x).tolist() == [-3.0, -1.0, 0.25, 0.5, 0.5]
    assert NonNeg().project(x).tolist() == [0.0, 0.0, 0.25, 1.0, 2.0]


def test_infinite_bounds_are_one_sided() -> None:
    x = torch.tensor([-5.0, 5.0])
    assert Box(-math.inf, 1.0).project(x).tolist() == [-5.0, 1.0]
    assert Box(-math.inf, math.inf).project(x).tolist() == [-5.0, 5.0]


@pytest.mark.parametrize("foreach", [None, True, False])
def test_hard_project_leaves_an_unbounded_box_alone(foreach: bool | None) -> None:
    layer = constrain(nn.Linear(3, 2), "weight", Box(-math.inf, math.inf))
    before = layer.parametrizations.weight.original.detach().clone()
    hard_project(layer, foreach=foreach)
    assert torch.equal(layer.parametrizations.weight.original.detach(), before)


def test_project_in_place_writes_into_the_tensor() -> None:
    x = torch.tensor([-3.0, 0.5, 3.0])
    out = Box(-1, 1).project_(x)
    assert out is x and x.tolist() == [-1.0, 0.5, 1.0]


def test_tensor_bounds_per_output_channel() -> None:
    hi = torch.tensor([[0.1], [1.0]])
    x = torch.full((2, 3), 5.0)
    # A float32 tensor bound is taken as it is: its values are the requested range.
    assert torch.equal(Box(-hi, hi).project(x), hi.expand(2, 3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "at least one bound"),
        ({"min": 2.0, "max": 1.0}, "min must be <= max, got min=2.0, max=1.0"),
        ({"min": float("nan")}, "min must not be NaN"),
        ({"max": float("nan")}, "max must not be NaN"),
        ({"min": math.inf}, "min must not be inf"),
        ({"max": -math.inf}, "max must not be -inf"),
        ({"min": torch.tensor([0.0, 3.0]), "max": 1.0}, "min=3.0 > max=1.0 at (1,)"),
        ({"min": torch.tensor([0.0, float("nan")])}, "1 NaN element"),
        ({"min": torch.zeros(2), "max": torch.ones(3)}, "do not broadcast together"),
    ],
)
def test_invalid_bounds_raise_value_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Box(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["1", True, 1j, torch.tensor([True]), torch.tensor([1j])])
def test_bounds_of_the_wrong_type_raise_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="min must be"):
        Box(min=bad)  # type: ignore[arg-type]


def test_config_round_trip_and_repr() -> None:
    box = Box(-0.5, 2)
    assert box.get_config() == {"min": -0.5, "max": 2.0}
    assert repr(Box.from_config(box.get_config())) == repr(box) == "Box(min=-0.5, max=2.0)"
    assert NonNeg().get_config() == {}
    assert repr(NonNeg()) == "NonNeg()"


def test_config_round_trip_with_tensor_bounds() -> None:
    box = Box(max=torch.tensor([[0.5], [1.0]]))
    clone = Box.from_config(box.get_config())
    assert isinstance(clone.max, torch.Tensor) and torch.equal(clone.max, box.max)
    assert "tensor(shape=(2, 1))" in repr(box)


def test_constraints_pickle_on_their_own() -> None:
    for c in (Box(-1, 2), NonNeg(), Box(max=torch.tensor([1.0, 2.0]))):
        restored = pickle.loads(pickle.dumps(c))
        assert type(restored) is type(c) and repr(restored) == repr(c)


def test_projected_values_never_leave_the_requested_range(dtype: torch.dtype) -> None:
    x = torch.linspace(-1, 1, 4001, dtype=dtype)
    y = Box(-0.05, 0.05).project(x)
    assert y.dtype == dtype
    assert (y.double() <= 0.05).all() and (y.double() >= -0.05).all()
    # and nothing is lost: values inside stay as they are
    inside = (x.double() > -0.049) & (x.double() < 0.049)
    assert torch.equal(y[inside], x[inside])


def test_tensor_bounds_follow_module_to_with_inward_rounding() -> None:
    layer = constrain(nn.Linear(3, 2), "weight", -0.05, torch.tensor([[0.05], [0.3]]))
    box = layer.parametrizations.weight[0]
    assert box.max.dtype == torch.float32
    layer.to(torch.bfloat16)
    assert box.max.dtype == torch.bfloat16
    assert (box.max.double() <= torch.tensor([[0.05], [0.3]], dtype=torch.float64)).all()
    assert (layer.weight.double() <= 0.3).all()
    layer.to(torch.float64)
    assert box.max.dtype == torch.float64 and layer.weight.dtype == torch.float64


def test_a_range_holding_no_value_of_the_dtype_is_refused_at_registration() -> None:
    module = nn.Module()
    module.register_parameter("w", nn.Parameter(torch.zeros(2, dtype=torch.bfloat16)))
    # 1.62890625 lies strictly between the bfloat16 values 1.625 and 1.6328125.
    with pytest.raises(
        ValueError, match=r"Module\.w: no torch\.bfloat16 value lies in \[min, max\]"
    ):
        constrain(module, "w", 1.62890625, 1.62890625)
    constrain(module, "w", 1.62890625, 1.64)  # 1.6328125 is a bfloat16 value inside
    assert module.w.tolist() == [1.6328125, 1.6328125]


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        (
            (70000.0, None),
            "Linear.weight: min=70000.0 is above the largest finite torch.float16 value "
            "(65504): the constrained elements would all become inf",
        ),
        (
            (None, -70000.0),
            "Linear.weight: max=-70000.0 is below the lowest finite torch.float16 value "
            "(-65504): the constrained elements would all become -inf",
        ),
        (
            (Box(min=torch.tensor([[0.0, 7e4]])),),
            "Linear.weight: min=tensor of shape (1, 2) is above the largest finite "
            "torch.float16 value (65504)",
        ),
    ],
    ids=["min", "max", "tensor"],
)
def test_a_one_sided_bound_outside_the_dtype_is_refused(
    bounds: tuple[object, ...], message: str
) -> None:
    layer = nn.Linear(2, 1).half()
    before = layer.weight.detach().clone()
    with pytest.raises(ValueError) as error:
        constrain(layer, "weight", *bounds)  # type: ignore[arg-type]
    assert str(error.value).startswith(message)
    assert torch.equal(layer.weight, before) and not hasattr(layer, "parametrizations")
    constrain(layer, "weight", 65504.0, None)  # the largest finite value itself is fine
    assert (layer.weight == 65504).all()


# --------------------------------------------------------------------- number types
numpy = pytest.importorskip("numpy")
np = numpy


@pytest.mark.parametrize("value", [np.float32(1.5), np.int64(1), np.float16(1.5), Fraction(3, 2)])
def test_box_takes_numpy_scalars_as_number_bounds(value: object) -> None:
    box = Box(-value, value)  # type: ignore[operator]
    assert (box.min, box.max) == (-float(value), float(value))  # type: ignore[arg-type]
    assert type(box.min) is float and type(box.max) is float


def test_box_keeps_a_0d_tensor_as_a_tensor_bound() -> None:
    box = Box(max=torch.tensor(0.5))
    assert isinstance(box.max, torch.Tensor) and "max" in dict(box.named_buffers())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1 + 2j, r"max must be a real number, a real tensor or None, got \(1\+2j\)$"),
        (np.complex128(1), r"max must be a real number, a real tensor or None, got np\.complex"),
        (True, r"max must be a real number, a real tensor or None, got True \(a bool\)$"),
        (np.False_, r"max must be a real number, a real tensor or None, got np\.False_ \(a bool\)"),
        (torch.tensor([1j]), r"max must be a real tensor, got dtype torch\.complex64"),
        (torch.tensor([True]), r"max must be a real tensor, got dtype torch\.bool"),
    ],
    ids=repr,
)
def test_box_refuses_complex_and_bool_bounds(value: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        Box(max=value)  # type: ignore[arg-type]


# --------------------------------------------------------------------- live bounds
@pytest.mark.parametrize("parametrized", [True, False])
def test_a_live_bound_beyond_the_dtype_is_refused_at_use_naming_the_tensor(
    parametrized: bool,
) -> None:
    layer = constrain(nn.Linear(2, 3).half(), "weight", -1.0, 1.0, parametrize=parametrized)
    (box,) = [c for _, c in named_constraints(layer)]
    raw_weight = raw(layer, "weight") if parametrized else layer.weight
    before = raw_weight.detach().clone()
    box.min = 70000.0  # a float64 number, fine as a number: float16 cannot hold it
    box.max = None
    message = r"Linear\.weight: min=70000\.0 is above the largest finite torch\.float16"
    if parametrized:
        with pytest.raises(ValueError, match=message):
            _ = layer.weight
    with pytest.raises(ValueError, match=message):
        hard_project(layer)
    assert torch.equal(raw_weight.detach(), before)
    box.min = -0.5
    hard_project(layer)
    assert raw_weight.detach().ge(-0.5).all()


def test_a_live_bound_is_checked_when_assigned() -> None:
    box = Box(-1.0, 1.0)
    with pytest.raises(ValueError, match="max must not be NaN"):
        box.max = float("nan")
    with pytest.raises(TypeError, match="max must be a number, a tensor or None, got '1'"):
        box.max = "1"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="at least one bound"):
        box.min, box.max = None, None
    assert (box.min, box.max) == (None, 1.0)
    box.min, box.max = 2.0, 3.0  # crossing in between is fine: checked at use
    with pytest.raises(ValueError, match=r"min must be <= max, got min=2\.0, max=1\.0"):
        box.max = 1.0
        box.project(torch.zeros(2))
