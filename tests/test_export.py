"""torch.fx and torch.export see a constrained model as PyTorch's own parametrizations."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from torch_constraints import MaxNorm, constrain, constrain_all


def model(parametrize: bool) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    constrain_all(net, -0.1, 0.1, parametrize=parametrize)
    constrain(net, "2.weight", MaxNorm(0.15), parametrize=parametrize)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3)  # the raw values leave the sets (parametrized: the forward projects)
    return net


@pytest.mark.parametrize("parametrize", [True, False])
def test_symbolic_trace_gives_the_same_function(parametrize: bool) -> None:
    net = model(parametrize)
    traced = torch.fx.symbolic_trace(net)
    x = torch.randn(5, 3)
    assert torch.equal(traced(x), net(x))
    if parametrize:  # the parametrized layers are leaves, as PyTorch's own classes are
        targets = [node.target for node in traced.graph.nodes if node.op == "call_module"]
        assert targets == ["0", "1", "2"]


@pytest.mark.parametrize("parametrize", [True, False])
def test_torch_export_gives_the_same_function(parametrize: bool) -> None:
    net = model(parametrize)
    x = torch.randn(5, 3)
    exported = torch.export.export(net, (x,))
    assert torch.allclose(exported.module()(x), net(x), rtol=0, atol=1e-7)
