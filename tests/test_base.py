"""The Constraint base class: a custom constraint is one small class."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from torch_constraints import (
    Box,
    Constraint,
    MaxNorm,
    constrain,
    constrain_all,
    hard_project,
    named_constraints,
)


class Symmetric(Constraint):
    """Symmetric matrices: P(x) = (x + x^T) / 2."""

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return (x + x.mT) / 2


class Scaled(Constraint):
    """Multiples of a fixed tensor direction, to exercise config with arguments."""

    def __init__(self, limit: float = 1.0, *, dim: int | None = None) -> None:
        super().__init__()
        if limit <= 0:
            raise ValueError(f"limit must be > 0, got {limit}")
        self.limit = limit
        self.dim = dim

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-self.limit, self.limit)


class Forgetful(Constraint):
    def __init__(self, limit: float) -> None:
        super().__init__()
        self.bound = limit

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_a_custom_constraint_works_everywhere() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    names = constrain_all(model, Symmetric(), include={"weight"})
    assert names == ["0.weight", "1.weight"]
    for layer in model:
        assert torch.equal(layer.weight, layer.weight.T)
    raw = model[0].parametrizations.weight.original
    with torch.no_grad():
        raw.add_(torch.randn(3, 3))  # move the raw weight off the set
    assert not torch.equal(raw, raw.T)
    assert torch.allclose(model[0].weight, model[0].weight.T)
    hard_project(model)
    assert torch.equal(raw, raw.T)
    assert repr(dict(named_constraints(model))["0.weight"]) == "Symmetric()"


def test_the_default_config_reads_constructor_arguments() -> None:
    c = Scaled(2.0, dim=1)
    assert c.get_config() == {"limit": 2.0, "dim": 1}
    assert repr(c) == "Scaled(limit=2.0, dim=1)"
    assert repr(Scaled.from_config(c.get_config())) == repr(c)


def test_a_constructor_that_hides_its_arguments_gets_a_clear_message() -> None:
    with pytest.raises(
        NotImplementedError, match=r"store the constructor argument 'limit' as self\.limit"
    ):
        Forgetful(1.0).get_config()


def test_project_must_be_implemented() -> None:
    with pytest.raises(NotImplementedError, match="Constraint must implement project"):
        Constraint().project(torch.zeros(1))


def test_custom_constraints_copy_and_pickle() -> None:
    layer = constrain(nn.Linear(2, 2), "weight", Scaled(0.5))
    constraint = layer.parametrizations.weight[0]
    for clone in (copy.deepcopy(constraint), pickle.loads(pickle.dumps(constraint))):
        assert repr(clone) == repr(constraint)
        assert torch.equal(clone.project(torch.full((2,), 3.0)), torch.full((2,), 0.5))


def test_the_default_in_place_projection_writes_the_projection() -> None:
    x = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    assert Symmetric().project_(x) is x
    assert x.tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_in_place_projections_work_on_parameters_outside_no_grad() -> None:
    from torch_constraints import Box, L1Ball, MaxNorm, MinMaxNorm, Simplex, UnitNorm

    for c in (
        Box(-1, 1),
        MaxNorm(1.0),
        MinMaxNorm(0.5, 1.0, rate=0.5),
        UnitNorm(),
        Simplex(),
        L1Ball(),
    ):
        p = nn.Parameter(torch.full((2, 3), 4.0))
        assert c.project_(p) is p, type(c).__name__
        assert not torch.equal(p.detach(), torch.full((2, 3), 4.0)), type(c).__name__


# --------------------------------------------------------------------- subclassing
class RoundedBox(Box):
    """Clamp, then round to multiples of 0.25: overrides project alone."""

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(super().project(x) * 4) / 4


@pytest.mark.parametrize("parametrize", [True, False])
def test_a_subclass_overriding_project_alone_gets_its_own_fast_paths(parametrize: bool) -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    constrain_all(model, RoundedBox(-1.0, 1.0), include={"weight"}, parametrize=parametrize)
    constrain(model, "0.bias", -1.0, 1.0)  # a plain Box: never grouped with the subclass
    slots = [m.parametrizations.weight.original if parametrize else m.weight for m in model]
    with torch.no_grad():
        for raw in slots:
            raw.fill_(0.3)
    hard_project(model)  # Box's multi-tensor clamp would leave 0.3
    assert all(torch.equal(raw.detach(), torch.full((2, 2), 0.25)) for raw in slots)
    assert not RoundedBox.elementwise
    c = RoundedBox(-1.0, 1.0)
    assert torch.equal(c.project_(torch.full((3,), 0.3)), torch.full((3,), 0.25))
    if parametrize:
        with torch.no_grad():
            slots[0].fill_(0.3)
        assert torch.equal(model[0].weight.detach(), torch.full((2, 2), 0.25))


def test_a_norm_subclass_overriding_project_gets_the_generic_in_place_path() -> None:
    class HalfMaxNorm(MaxNorm):
        def project(self, x: torch.Tensor) -> torch.Tensor:
            return super().project(x) / 2

    x = torch.full((2, 3), 5.0)
    assert torch.equal(HalfMaxNorm(1.0).project_(x.clone()), HalfMaxNorm(1.0).project(x))
    assert HalfMaxNorm.project_ is Constraint.project_
    assert MaxNorm.project_ is not Constraint.project_
