"""torch.compile: fullgraph forward and backward as in eager, every mode, no recompiles per layer.

Most tests use the ``aot_eager`` backend (Dynamo and AOTAutograd, where
parametrizations break, with eager kernels: results are bit for bit those of
eager) or a counting backend; one test runs Inductor end to end.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch._dynamo
from torch import nn

from torch_constraints import Box, constrain, constrain_all, hard_project, project_after_step

pytestmark = pytest.mark.slow

MODES = ["plain", "straight_through", "tensor_bounds", "recorded"]


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class GraphCounter:
    """A backend that counts the graphs Dynamo hands it and runs them as they are."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, inputs: list[Any]) -> Callable[..., Any]:
        self.graphs += 1
        return gm.forward


def net(mode: str, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    if mode == "tensor_bounds":
        upper = torch.linspace(0.1, 0.8, 8).unsqueeze(1)
        constrain(model[0], "weight", Box(min=-upper, max=upper))
        constrain(model[2], "weight", -0.3, 0.3)
    else:
        constrain_all(
            model,
            -0.3,
            0.3,
            straight_through=mode == "straight_through",
            parametrize=mode != "recorded",  # the plain model's graph, projected after steps
        )
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)  # raw values outside the bounds: clipped, or moved straight through
    return model


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("mode", MODES)
def test_fullgraph_forward_and_backward_equal_eager(mode: str) -> None:
    eager = net(mode)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    x = torch.randn(16, 4)
    out_eager, out_compiled = eager(x), compiled(x)
    assert torch.equal(out_eager, out_compiled)
    out_eager.pow(2).sum().backward()
    out_compiled.pow(2).sum().backward()
    g_eager, g_compiled = grads(eager), grads(compiled_model)
    assert len(g_eager) == len(g_compiled) == 4
    assert all(torch.equal(a, b) for a, b in zip(g_eager, g_compiled, strict=True))
    weight = eager[0].weight if mode == "recorded" else eager[0].parametrizations.weight.original
    assert weight.grad is not None
    clipped = weight.grad == 0
    # each mode's gradient is exercised: clipped where the forward pass clamps
    assert clipped.any() == (mode in ("plain", "tensor_bounds"))


@pytest.mark.parametrize("mode", MODES)
def test_training_with_project_after_step_equals_eager_without_recompiling(mode: str) -> None:
    counter = GraphCounter()

    def run(compile_it: bool) -> tuple[list[float], nn.Module]:
        model = net(mode)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        project_after_step(optimizer, model)
        step_model = torch.compile(model, fullgraph=True, backend=counter) if compile_it else model
        generator = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(5):
            x = torch.randn(16, 4, generator=generator)
            loss = step_model(x).pow(2).mean() - step_model(x).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses, model

    eager_losses, eager = run(False)
    compiled_losses, compiled = run(True)
    assert eager_losses == compiled_losses
    for a, b in zip(eager.parameters(), compiled.parameters(), strict=True):
        assert torch.equal(a, b)
    assert counter.graphs == 1  # projecting after each step does not recompile


def blocks(count: int, constrained: bool) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(count)])
    if constrained:
        constrain_all(model, -0.5, 0.5)
    return model


def count_regional_graphs(model: nn.Sequential) -> int:
    counter = GraphCounter()
    compiled = [torch.compile(block, backend=counter) for block in model]
    x = torch.randn(2, 8)
    for block in compiled:
        x = block(x)
    x.sum().backward()
    x = torch.randn(2, 8)
    for block in compiled:
        x = block(x)
    return counter.graphs


def test_compiling_each_block_does_not_recompile_per_layer() -> None:
    # More blocks than torch._dynamo.config.recompile_limit (8): a recompile per
    # block would also fall back to eager after the eighth.
    count = 12
    plain = count_regional_graphs(blocks(count, constrained=False))
    torch._dynamo.reset()
    constrained = count_regional_graphs(blocks(count, constrained=True))
    assert constrained == plain
    assert constrained <= 2  # the first input does not require grad, the others do


def test_a_deep_constrained_model_is_one_graph() -> None:
    counter = GraphCounter()
    model = blocks(24, constrained=True)
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    compiled(torch.randn(2, 8)).sum().backward()
    compiled(torch.randn(2, 8)).sum().backward()
    assert counter.graphs == 1


def test_inductor_end_to_end() -> None:
    eager = net("plain")
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = torch.randn(16, 4)
    out_eager, out_compiled = eager(x), compiled(x)
    # Inductor fuses and reorders float arithmetic: equal up to rounding.
    torch.testing.assert_close(out_compiled, out_eager, rtol=1e-5, atol=1e-6)
    out_eager.pow(2).sum().backward()
    out_compiled.pow(2).sum().backward()
    for a, b in zip(grads(eager), grads(compiled_model), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        assert torch.equal(a == 0, b == 0)  # the clipped entries are exactly the same
    weight = compiled_model[0].weight
    assert weight.abs().max() <= 0.3


def test_hard_project_is_eager_only_and_breaks_the_graph_around_itself() -> None:
    model = net("plain")
    with torch.no_grad():
        model[0].parametrizations.weight.original.fill_(2.0)

    def project_then_run(x: torch.Tensor) -> torch.Tensor:
        hard_project(model)
        return model(x)

    x = torch.randn(3, 4)
    out = torch.compile(project_then_run, backend="aot_eager")(x)
    assert (
        model[0]
        .parametrizations.weight.original.eq(
            model[0].parametrizations.weight[0].project(torch.tensor(2.0))
        )
        .all()
    )
    assert torch.equal(out, model(x))
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported, match=r"(?i)disable"):
        torch.compile(project_then_run, fullgraph=True, backend="aot_eager")(x)
