"""Simplex, L1Ball, L2Ball, LinfBall, L2Sphere: reference values and validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torch_constraints import (
    Box,
    L1Ball,
    L2Ball,
    L2Sphere,
    LinfBall,
    MaxNorm,
    Simplex,
    UnitNorm,
    constrain,
    named_constraints,
)


def test_simplex_reference_values() -> None:
    assert Simplex().project(torch.tensor([0.0, 0.0, float("-inf")])).tolist() == [0.5, 0.5, 0.0]
    # Held et al.'s example: shift by theta = 0.5, then clip at 0.
    assert Simplex().project(torch.tensor([1.0, 0.5, -2.0])).tolist() == [0.75, 0.25, 0.0]
    assert Simplex(scale=3.0).project(torch.tensor([0.0, 0.0, 0.0])).tolist() == [1.0, 1.0, 1.0]
    rows = Simplex(dim=0).project(torch.tensor([[2.0, 0.0], [0.3, 0.7]]))
    assert torch.allclose(rows, torch.tensor([[1.0, 0.0], [0.3, 0.7]]))


def test_simplex_against_a_brute_force_quadratic_program() -> None:
    # The projection minimises |y - x|^2 over the simplex; compare with a fine grid on 3 points.
    x = torch.tensor([0.3, -0.2, 0.6], dtype=torch.float64)
    steps = torch.linspace(0, 1, 401, dtype=torch.float64)
    a, b = torch.meshgrid(steps, steps, indexing="ij")
    mask = a + b <= 1
    grid = torch.stack([a[mask], b[mask], 1 - a[mask] - b[mask]], dim=1)
    best = grid[(grid - x).square().sum(dim=1).argmin()]
    assert torch.allclose(Simplex().project(x), best, atol=2.5e-3)


def test_l1_ball_reference_values() -> None:
    assert L1Ball(3.0).project(torch.tensor([3.0, -1.0, 0.5])).tolist() == [2.5, -0.5, 0.0]
    inside = torch.tensor([0.5, -0.25])
    assert torch.equal(L1Ball(1.0).project(inside), inside)


def test_l2_ball_and_sphere_reference_values() -> None:
    assert torch.allclose(L2Ball(1.0).project(torch.tensor([3.0, 4.0])), torch.tensor([0.6, 0.8]))
    assert torch.allclose(
        L2Sphere(10.0).project(torch.tensor([0.3, 0.4])), torch.tensor([6.0, 8.0])
    )
    assert L2Sphere(2.0).project(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]
    per_row = L2Ball(1.0, dim=0).project(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))
    assert torch.allclose(per_row, torch.tensor([[0.6, 0.8], [0.3, 0.4]]))


def test_linf_ball_is_a_box() -> None:
    ball = LinfBall(0.5)
    assert isinstance(ball, Box) and ball.get_config() == {"radius": 0.5}
    assert repr(ball) == "LinfBall(radius=0.5)"
    assert ball.project(torch.tensor([-2.0, 0.25, 2.0])).tolist() == [-0.5, 0.25, 0.5]


def test_defaults_act_on_the_whole_tensor_like_optax() -> None:
    layer = constrain(nn.Linear(4, 3), "weight", Simplex())
    assert torch.allclose(layer.weight.sum(), torch.tensor(1.0))
    assert layer.weight.min() >= 0


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: Simplex(0.0), "Simplex: scale must be > 0, got 0.0"),
        (lambda: L1Ball(-1.0), "L1Ball: radius must be >= 0, got -1.0"),
        (lambda: L2Ball(-2.0), "L2Ball: radius must be >= 0, got -2.0"),
        (lambda: L2Sphere(0.0), "L2Sphere: radius must be > 0, got 0.0"),
        (lambda: LinfBall(-0.1), "LinfBall: radius must be >= 0, got -0.1"),
        (lambda: L2Ball(float("inf")), "L2Ball: radius must be finite, got inf"),
    ],
)
def test_constructors_validate_their_arguments(factory: object, message: str) -> None:
    with pytest.raises(ValueError) as error:
        factory()  # type: ignore[operator]
    assert str(error.value) == message


def test_config_round_trips() -> None:
    for c in (
        Simplex(2.0, dim=1),
        L1Ball(0.5),
        L2Ball(3.0, dim=(0,)),
        L2Sphere(1.5),
        LinfBall(2.0),
    ):
        clone = type(c).from_config(c.get_config())
        assert repr(clone) == repr(c)


def test_changing_a_linf_radius_takes_effect() -> None:
    layer = constrain(nn.Linear(4, 4), "weight", LinfBall(1.0))
    (constraint,) = (c for _, c in named_constraints(layer))
    constraint.radius = 0.01
    assert bool(layer.weight.abs().max() <= 0.01)
    assert constraint.get_config() == {"radius": 0.01}
    with pytest.raises(ValueError, match="LinfBall: radius must be >= 0, got -1"):
        constraint.radius = -1


@pytest.mark.parametrize("dim", [0, 1, None, (0, 1)])
def test_aliases_of_one_set_project_alike_with_the_same_arguments(dim: object) -> None:
    x = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0)) * 2
    assert torch.equal(MaxNorm(0.7, dim=dim).project(x), L2Ball(0.7, dim=dim).project(x))
    assert torch.equal(UnitNorm(dim=dim).project(x), L2Sphere(1.0, dim=dim).project(x))
    assert torch.equal(LinfBall(0.3).project(x), Box(-0.3, 0.3).project(x))
    # ...and differ by their defaults only, as their docstrings say
    assert (MaxNorm().max_value, MaxNorm().dim) == (2.0, 0)
    assert (L2Ball().radius, L2Ball().dim) == (1.0, None)
    assert UnitNorm().dim == 0 and (L2Sphere().radius, L2Sphere().dim) == (1.0, None)
