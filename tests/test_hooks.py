"""project_after_step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torch_constraints import constrain_all, project_after_step


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
