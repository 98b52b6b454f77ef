"""get() and serialize(): constraints by name or config."""

from __future__ import annotations

import copy
import json
import math

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


# --------------------------------------------------------------------- faults and JSON
def assert_same_constraint(rebuilt: Constraint, original: Constraint) -> None:
    assert type(rebuilt) is type(original)
    assert rebuilt.straight_through == original.straight_through
    expected, got = original.get_config(), rebuilt.get_config()
    assert list(got) == list(expected)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert isinstance(got[key], torch.Tensor), key
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            assert torch.equal(got[key], value.cpu()), key
        else:
            assert type(got[key]) is type(value) and got[key] == value, key


def through_json(constraint: Constraint) -> Constraint:
    return get(json.loads(json.dumps(serialize(constraint))))


WITH_TENSORS = [
    Box(min=torch.tensor([[-1.0], [-0.5]]), max=torch.tensor([[1.0], [0.25]])),
    Box(max=torch.tensor(0.5, dtype=torch.float64)),
    Box(min=torch.tensor([-math.inf, 0.1], dtype=torch.float16), max=2.0),
    Box(min=torch.empty(0, 3)),
    Box(max=torch.tensor([1.0, 3.0], dtype=torch.bfloat16)),
    MaxNorm(1.5, dim=(0, 1)),
]


@pytest.mark.parametrize("constraint", ALL + WITH_TENSORS, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("straight_through", [False, True])
def test_a_json_round_trip_rebuilds_an_equal_constraint(
    constraint: Constraint, straight_through: bool
) -> None:
    if straight_through:  # as constrain(..., straight_through=True) sets it on its copy
        constraint = copy.deepcopy(constraint)
        constraint.straight_through = True
    assert_same_constraint(through_json(constraint), constraint)


def test_the_tensor_bounds_of_a_registered_box_round_trip() -> None:
    upper = torch.linspace(0.1, 0.6, 2, dtype=torch.float64).unsqueeze(1)
    layer = constrain(nn.Linear(3, 2), "weight", Box(-upper, upper))
    registered = layer.parametrizations.weight[0]
    assert registered.max.dtype == torch.float32  # rounded to the weight's dtype
    assert_same_constraint(through_json(registered), registered)


def test_serialize_keeps_the_common_form() -> None:
    assert serialize(MaxNorm(3.0)) == {
        "class_name": "MaxNorm",
        "config": {"max_value": 3.0, "dim": 0},
    }
    c = constrain(nn.Linear(2, 2), "weight", MaxNorm(3.0), straight_through=True)
    assert serialize(c.parametrizations.weight[0]) == {
        "class_name": "MaxNorm",
        "config": {"max_value": 3.0, "dim": 0},
        "straight_through": True,
    }
    with pytest.raises(TypeError, match=r"serialize: expected a Constraint, got 3 \(int\)"):
        serialize(3)  # type: ignore[arg-type]


def test_an_extra_config_key_is_a_value_error_naming_it_and_the_accepted_keys() -> None:
    with pytest.raises(
        ValueError,
        match=r"^the config of MaxNorm has the key 'axis', which MaxNorm does not take; "
        r"accepted keys: 'max_value', 'dim'$",
    ):
        get({"class_name": "MaxNorm", "config": {"max_value": 3.0, "axis": 0}})
    with pytest.raises(ValueError, match=r"the config of NonNeg has the key 'min'.*keys: none$"):
        get({"class_name": "NonNeg", "config": {"min": 0.0}})


def test_a_missing_required_config_key_is_a_value_error() -> None:
    class Scaled(Constraint):
        def __init__(self, factor: float) -> None:
            super().__init__()
            self.factor = factor

    with pytest.raises(
        ValueError, match=r"^the config of Scaled lacks the required key 'factor'; accepted"
    ):
        get({"class_name": "Scaled", "config": {}}, {"Scaled": Scaled})


def test_a_class_with_its_own_from_config_reads_its_config_itself() -> None:
    class Renamed(Constraint):
        def __init__(self, factor: float = 1.0) -> None:
            super().__init__()
            self.factor = factor

        @classmethod
        def from_config(cls, config: dict[str, object]) -> Renamed:
            return cls(float(config["scale"]))  # type: ignore[arg-type]

    rebuilt = get({"class_name": "Renamed", "config": {"scale": 2}}, {"Renamed": Renamed})
    assert isinstance(rebuilt, Renamed) and rebuilt.factor == 2.0


@pytest.mark.parametrize(
    ("custom", "message"),
    [
        (
            {"x": lambda: MaxNorm()},
            r"custom_objects\['x'\] must be a Constraint subclass, "
            r"got the function .*<lambda>",
        ),
        (
            {"x": MaxNorm()},
            r"custom_objects\['x'\] must be a Constraint subclass, "
            r"got MaxNorm\(max_value=2\.0, dim=0\) \(MaxNorm\)",
        ),
        (
            {"x": nn.Linear},
            r"custom_objects\['x'\] must be a Constraint subclass, "
            r"got the class Linear",
        ),
        ({1: MaxNorm}, r"custom_objects: names must be strings, got 1"),
        ([MaxNorm], r"custom_objects must be a mapping .*got \[<class"),
    ],
)
def test_custom_objects_must_be_constraint_classes(custom: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        get("x", custom_objects=custom)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("identifier", "message"),
    [
        (
            {"class_name": "MaxNorm", "config": {}, "straight_through": 1},
            r"'straight_through' must be a bool, got 1",
        ),
        (
            {"class_name": "MaxNorm", "config": {}, "extra": 1},
            r"a constraint config must be \{'class_name'",
        ),
        (
            {"class_name": "Box", "config": {"min": {"class_name": "__tensor__", "config": {}}}},
            r"the config's 'min' is not an encoded tensor",
        ),
        (
            {
                "class_name": "Box",
                "config": {
                    "min": {
                        "class_name": "__tensor__",
                        "config": {"value": [1.0], "dtype": "float32", "shape": [2]},
                    }
                },
            },
            r"the config's 'min' is not an encoded tensor: shape '\[2\]' is invalid",
        ),
    ],
)
def test_malformed_configs_are_value_errors(identifier: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get(identifier)
