"""MaxNorm, MinMaxNorm, UnitNorm: reference values and parity with Keras' formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torch_constraints import MaxNorm, MinMaxNorm, UnitNorm, constrain, hard_project

KERAS_EPSILON = 1e-7


def keras_norms(kernel: torch.Tensor, axis: tuple[int, ...]) -> torch.Tensor:
    return kernel.square().sum(dim=axis, keepdim=True).sqrt()


def keras_max_norm(kernel: torch.Tensor, max_value: float, axis: tuple[int, ...]) -> torch.Tensor:
    """keras.constraints.MaxNorm.__call__, transcribed."""
    norms = keras_norms(kernel, axis)
    return kernel * norms.clamp(0, max_value) / (KERAS_EPSILON + norms)


def keras_unit_norm(kernel: torch.Tensor, axis: tuple[int, ...]) -> torch.Tensor:
    return kernel / (KERAS_EPSILON + keras_norms(kernel, axis))


def keras_min_max_norm(
    kernel: torch.Tensor, lo: float, hi: float, rate: float, axis: tuple[int, ...]
) -> torch.Tensor:
    norms = keras_norms(kernel, axis)
    desired = rate * norms.clamp(lo, hi) + (1 - rate) * norms
    return kernel * desired / (KERAS_EPSILON + norms)


# Columns [3, 4], [0.3, 0.4], [0, 0] of a Keras (in=2, out=3) kernel.
KERNEL = torch.tensor([[3.0, 0.3, 0.0], [4.0, 0.4, 0.0]])


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        (MaxNorm(2.0, dim=1), [[1.2, 0.3, 0.0], [1.6, 0.4, 0.0]]),
        (UnitNorm(dim=1), [[0.6, 0.6, 0.0], [0.8, 0.8, 0.0]]),
        (MinMaxNorm(0.8, 2.0, rate=0.7, dim=1), [[1.74, 0.426, 0.0], [2.32, 0.568, 0.0]]),
    ],
    ids=["MaxNorm", "UnitNorm", "MinMaxNorm"],
)
def test_reference_values_one_application_as_hard_project_does(
    constraint: MaxNorm | UnitNorm | MinMaxNorm, expected: list[list[float]]
) -> None:
    kernel = KERNEL.clone()
    constraint.project_(kernel)
    assert torch.allclose(kernel, torch.tensor(expected), rtol=1e-6, atol=0)
    # The same on the PyTorch layout: Linear weight (out, in), one unit per row, dim=0.
    weight = KERNEL.T.clone()
    type(constraint).from_config({**constraint.get_config(), "dim": 0}).project_(weight)
    assert torch.equal(weight, kernel.T)


def test_max_norm_reference_columns() -> None:
    kernel = torch.tensor([[0.0, 1.0, 3.0, 3.0], [0.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 3.0]])
    result = MaxNorm(2.0, dim=1).project(kernel)
    expected = torch.tensor(
        [
            [0.0, 1.0, 2.0, 2 / math.sqrt(3)],
            [0.0, 0.0, 0.0, 2 / math.sqrt(3)],
            [0.0, 0.0, 0.0, 2 / math.sqrt(3)],
        ]
    )
    assert torch.allclose(result, expected, rtol=1e-6, atol=0)
    assert torch.equal(result[:, :2], kernel[:, :2])  # inside: unchanged, bit for bit


def test_max_norm_on_a_linear_matches_keras_max_norm_axis_0_on_its_kernel() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    with torch.no_grad():
        layer.weight.mul_(torch.linspace(1, 40, 8).unsqueeze(1))  # some rows inside, most outside
    keras = keras_max_norm(layer.weight.detach().T, 1.0, axis=(0,)).T  # Keras kernel is (in, out)
    outside = layer.weight.detach().norm(dim=1) > 1.0
    assert 0 < outside.sum() < 8
    constrain(layer, "weight", MaxNorm(1.0))
    assert torch.allclose(layer.weight[outside], keras[outside], rtol=1e-5, atol=0)
    # Keras also shrinks rows inside the ball by about 1e-7; this library leaves them alone.
    assert torch.allclose(layer.weight[~outside], keras[~outside], rtol=1e-6, atol=0)


def test_max_norm_on_a_conv_matches_keras_on_its_kernel() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3)
    with torch.no_grad():
        conv.weight.mul_(20)
    kernel = conv.weight.detach().permute(2, 3, 1, 0)  # Keras layout (kh, kw, in, out)
    keras = keras_max_norm(kernel, 2.0, axis=(0, 1, 2)).permute(3, 2, 0, 1)
    constrain(conv, "weight", MaxNorm(2.0))
    assert torch.allclose(conv.weight, keras, rtol=1e-5, atol=0)


@pytest.mark.parametrize("axis", [0, 1])
def test_unit_norm_and_min_max_norm_match_keras_outside_the_set(axis: int) -> None:
    torch.manual_seed(1)
    kernel = torch.randn(6, 5) * 4
    dim = 1 - axis  # Keras reduces over `axis`; `dim` names the slices kept
    assert torch.allclose(
        UnitNorm(dim=dim).project(kernel), keras_unit_norm(kernel, (axis,)), rtol=1e-6
    )
    ours = MinMaxNorm(0.5, 1.5, rate=0.3, dim=dim).project_(kernel.clone())
    assert torch.allclose(ours, keras_min_max_norm(kernel, 0.5, 1.5, 0.3, (axis,)), rtol=1e-6)


def test_min_max_norm_forward_is_the_full_projection_and_hard_project_the_keras_step() -> None:
    layer = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(KERNEL.T)
    constrain(layer, "weight", MinMaxNorm(0.8, 2.0, rate=0.7))
    # Registration and the forward pass apply the projection (rate 1): norms in [0.8, 2].
    norms = layer.weight.norm(dim=1)
    assert torch.allclose(norms, torch.tensor([2.0, 0.8, 0.0]))
    raw = layer.parametrizations.weight.original
    with torch.no_grad():
        raw.copy_(KERNEL.T)
    hard_project(layer)  # one Keras step, applied once
    assert torch.allclose(raw, torch.tensor([[1.74, 2.32], [0.426, 0.568], [0.0, 0.0]]))
    assert torch.allclose(layer.weight.norm(dim=1), torch.tensor([2.0, 0.8, 0.0]))


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: MaxNorm(-1.0), "MaxNorm: max_value must be >= 0, got -1.0"),
        (lambda: MaxNorm(float("nan")), "MaxNorm: max_value must be finite, got nan"),
        (
            lambda: MinMaxNorm(2.0, 1.0),
            "MinMaxNorm: min_value must be <= max_value, got min_value=2.0, max_value=1.0",
        ),
        (lambda: MinMaxNorm(-0.5, 1.0), "MinMaxNorm: min_value must be >= 0, got -0.5"),
        (lambda: MinMaxNorm(rate=1.5), "MinMaxNorm: rate must be <= 1, got 1.5"),
        (lambda: MinMaxNorm(rate=-0.1), "MinMaxNorm: rate must be >= 0, got -0.1"),
        (lambda: UnitNorm(dim=(0, 0)), "UnitNorm: dim must not repeat a dimension, got (0, 0)"),
    ],
)
def test_constructors_validate_their_arguments(factory: object, message: str) -> None:
    with pytest.raises(ValueError) as error:
        factory()  # type: ignore[operator]
    assert str(error.value) == message


def test_constructor_type_errors() -> None:
    with pytest.raises(TypeError, match=r"MaxNorm: max_value must be a number, got '2'"):
        MaxNorm("2")  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"UnitNorm: dim must be an int, a tuple of ints or None, got 0\.5"
    ):
        UnitNorm(dim=0.5)  # type: ignore[arg-type]


def test_dim_out_of_range_is_refused_at_registration() -> None:
    layer = nn.Linear(3, 2)
    with pytest.raises(
        ValueError,
        match=r"Linear\.bias: MaxNorm dim=1 is out of range for a tensor with 1 dimension",
    ):
        constrain(layer, "bias", MaxNorm(1.0, dim=1))
    constrain(layer, "bias", MaxNorm(1.0, dim=-1))  # each element its own slice


def test_config_round_trips() -> None:
    for c in (MaxNorm(3.0, dim=(0, 1)), MinMaxNorm(0.1, 0.9, 0.5, None), UnitNorm(dim=2)):
        clone = type(c).from_config(c.get_config())
        assert repr(clone) == repr(c) and clone.get_config() == c.get_config()
    assert repr(MaxNorm()) == "MaxNorm(max_value=2.0, dim=0)"


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


@pytest.mark.parametrize("count", [2, 3, 7])
def test_project_many_writes_each_parameter_in_place_with_autograd_on(count: int) -> None:
    # Three or more same-shaped tensors are stacked, fewer projected one by one: both
    # write the projection into the Parameter itself, with no autograd history.
    generator = torch.Generator().manual_seed(count)
    constraint = MaxNorm(1.0)
    constraint.bind(torch.empty(4, 3))
    params = [nn.Parameter(torch.randn(4, 3, generator=generator) * 2) for _ in range(count)]
    params[0].data.mul_(0.01)  # one tensor inside: unchanged
    expected = [constraint.project(p.detach()) for p in params]
    objects, versions = [id(p) for p in params], [p._version for p in params]
    assert torch.is_grad_enabled()
    constraint.project_many_(params)
    for p, want, obj, version in zip(params, expected, objects, versions, strict=True):
        assert id(p) == obj and p.is_leaf and p.grad_fn is None and p.requires_grad
        assert torch.equal(p.detach(), want)
        assert p._version > version or torch.equal(want, p.detach())
    assert (torch.linalg.vector_norm(torch.stack(expected), dim=-1) <= 1.0).all()
