"""project_after_step."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from torch_constraints import (
    MaxNorm,
    constrain,
    constrain_all,
    named_constraints,
    project_after_step,
)


def setup() -> tuple[nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    constrain_all(layer, -0.01, 0.01)
    return layer, torch.optim.SGD(layer.parameters(), lr=1.0)


def step(layer: nn.Linear, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    layer(torch.ones(4, 3)).sum().backward()
    optimizer.step()


def raw_max(layer: nn.Linear) -> float:
    return float(layer.parametrizations.weight.original.detach().abs().max())


def test_projects_after_every_step_until_removed() -> None:
    layer, optimizer = setup()
    handle = project_after_step(optimizer, layer)
    for _ in range(3):
        step(layer, optimizer)
        assert raw_max(layer) <= 0.01
    handle.remove()
    step(layer, optimizer)
    assert raw_max(layer) > 0.5


def test_bad_arguments() -> None:
    layer, optimizer = setup()
    with pytest.raises(TypeError, match=r"expected a torch\.optim\.Optimizer, or a wrapper"):
        project_after_step(layer, layer)
    with pytest.raises(TypeError, match=r"expected an nn\.Module or a PackedProjection, got SGD"):
        project_after_step(optimizer, optimizer)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Linear has no tensor constrained by torch_constraints"):
        project_after_step(optimizer, nn.Linear(2, 2))


def test_a_model_with_nothing_constrained_is_refused_and_says_what_to_do() -> None:
    layer = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"no tensor constrained.*constrain\(\)"):
        project_after_step(optimizer, layer)


class Scaled(nn.Module):
    """Another library's parametrization (braindecode's max-norm is one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5


def test_constraints_stacked_on_another_parametrization_are_explained() -> None:
    layer = nn.Linear(2, 2)
    parametrize.register_parametrization(layer, "weight", Scaled())
    constrain(layer, "weight", MaxNorm(0.25))  # acts on Scaled's output: forward only
    assert [name for name, _ in named_constraints(layer)] == ["weight"]
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    with pytest.raises(
        ValueError,
        match=r"weight \(Linear\) carries MaxNorm.*stacked after another library's "
        r"parametrization.*no stored tensor",
    ):
        project_after_step(optimizer, layer)
    assert torch.linalg.vector_norm(layer.weight, dim=1).max() <= 0.25 * (1 + 1e-6)
