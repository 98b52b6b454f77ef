"""get() and serialize(): constraints by name or config."""

from __future__ import annotations

import pytest
import torch
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
    get,
    serialize,
)

ALL = [
    Box(-1, 2),
    NonNeg(),
    MaxNorm(3.0, dim=1),
    MinMaxNorm(0.1, 0.5, 0.2),
    UnitNorm(dim=None),
    Simplex(2.0),
    L1Ball(0.5, dim=0),
    L2Ball(),
    L2Sphere(3.0),
    LinfBall(0.25),
]


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("max_norm", MaxNorm),
        ("MaxNorm", MaxNorm),
        ("non_neg", NonNeg),
        ("NonNeg", NonNeg),
        ("unit_norm", UnitNorm),
        ("min_max_norm", MinMaxNorm),
        ("simplex", Simplex),
        ("l1_ball", L1Ball),
        ("l2_ball", L2Ball),
        ("linf_ball", LinfBall),
        ("l2_sphere", L2Sphere),
    ],
)
def test_keras_style_names(name: str, cls: type[Constraint]) -> None:
    c = get(name)
    assert type(c) is cls and repr(c) == repr(cls())


@pytest.mark.parametrize("constraint", ALL, ids=lambda c: type(c).__name__)
def test_serialize_round_trip(constraint: Constraint) -> None:
    config = serialize(constraint)
    assert config["class_name"] == type(constraint).__name__
    assert repr(get(config)) == repr(constraint)


def test_a_constraint_is_returned_as_it_is() -> None:
    c = MaxNorm(1.0)
    assert get(c) is c


def test_custom_objects() -> None:
    class Halved(Constraint):
        def project(self, x: torch.Tensor) -> torch.Tensor:
            return x / 2

    assert type(get("Halved", custom_objects={"Halved": Halved})) is Halved
    assert type(get({"class_name": "Halved", "config": {}}, {"Halved": Halved})) is Halved


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown constraint 'max_nrom'; known names: .*max_norm"):
        get("max_nrom")
    with pytest.raises(
        ValueError, match=r"a constraint config must be \{'class_name': \.\.\., 'config'"
    ):
        get({"name": "max_norm"})
    with pytest.raises(TypeError, match=r"cannot interpret 3 as a constraint"):
        get(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot interpret None"):
        get(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Box needs at least one bound"):
        get("box")


def test_constrain_accepts_names() -> None:
    layer = constrain(nn.Linear(3, 2), "weight", "non_neg")
    assert layer.weight.min() == 0
    with pytest.raises(ValueError, match=r"Linear\.weight: unknown constraint 'nonneg'"):
        constrain(nn.Linear(3, 2), "weight", "nonneg")
