"""Accelerate: ``project_after_step`` on the optimizer ``accelerator.prepare`` returns.

No callback is needed: :func:`~torch_constraints.project_after_step` unwraps
``AcceleratedOptimizer`` (``.optimizer``) and hooks the optimizer that updates the
weights, so it runs after every real step, and only then under
``accelerator.accumulate``. Real ``accelerate`` on the CPU, a few steps of a model of
about a hundred parameters, compared with the plain loop.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import CountingBox, assert_same, projections
from torch import nn

from torch_constraints import (
    constrain_all,
    hard_project,
    plain_state_dict,
    project_after_step,
)

accelerate = pytest.importorskip("accelerate")

LR = 0.05
BOUND = 0.2


def make_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


def batches(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2 * n, 4, generator=generator)
    y = 3 * torch.randn(2 * n, 1, generator=generator)
    return [(x[i : i + 2], y[i : i + 2]) for i in range(0, 2 * n, 2)]


def accelerator(accumulate: int = 1) -> Any:
    accelerate.state.AcceleratorState._reset_state(reset_partial_state=True)
    accelerate.state.GradientState._reset_state()
    return accelerate.Accelerator(cpu=True, gradient_accumulation_steps=accumulate)


def hand_loop(net: nn.Module, optimizer: torch.optim.Optimizer, data: list[Any]) -> None:
    for x, y in data:
        optimizer.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        optimizer.step()
        hard_project(net)


def accelerated_loop(acc: Any, net: nn.Module, optimizer: Any, data: list[Any]) -> None:
    for x, y in data:
        with acc.accumulate(net):
            acc.backward(nn.functional.mse_loss(net(x), y))
            optimizer.step()
            optimizer.zero_grad()


@pytest.mark.parametrize("parametrize", [False, True], ids=["plain", "parametrized"])
@pytest.mark.parametrize("order", ["constrain-then-prepare", "prepare-then-constrain"])
def test_project_after_step_on_the_prepared_optimizer(parametrize: bool, order: str) -> None:
    acc = accelerator()
    net = make_net()
    reference = copy.deepcopy(net)
    constrain_all(reference, -BOUND, BOUND, parametrize=parametrize)
    if order == "constrain-then-prepare":
        constrain_all(net, -BOUND, BOUND, parametrize=parametrize)
        model, optimizer = acc.prepare(net, torch.optim.Adam(net.parameters(), lr=LR))
    else:
        model, optimizer = acc.prepare(net, torch.optim.Adam(net.parameters(), lr=LR))
        constrain_all(model, -BOUND, BOUND, parametrize=parametrize)
    assert type(optimizer).__name__ == "AcceleratedOptimizer"
    # The previous release raised AttributeError: 'AcceleratedOptimizer' object has
    # no attribute '_optimizer_step_post_hooks'.
    handle = project_after_step(optimizer, model)
    accelerated_loop(acc, model, optimizer, batches())
    hand_loop(reference, torch.optim.Adam(reference.parameters(), lr=LR), batches())
    assert_same(model, reference)
    assert all(bool(p.abs().max() <= BOUND) for p in model.parameters())
    handle.remove()


def test_gradient_accumulation_projects_after_real_steps_only() -> None:
    acc = accelerator(accumulate=2)
    net = make_net()
    constrain_all(net, CountingBox(-BOUND, BOUND), parametrize=False)
    model, optimizer = acc.prepare(net, torch.optim.SGD(net.parameters(), lr=LR))
    project_after_step(optimizer, model)
    before = projections(model)
    accelerated_loop(acc, model, optimizer, batches(4))
    assert projections(model) - before == 2  # optimizer.step() 4 times, 2 real steps


@pytest.mark.parametrize("parametrize", [False, True], ids=["plain", "parametrized"])
def test_save_state_and_load_state_resume_exactly(parametrize: bool, tmp_path: Path) -> None:
    def setup(seed: int = 0) -> tuple[Any, nn.Module, Any]:
        acc = accelerator()
        net = make_net(seed)
        constrain_all(net, -BOUND, BOUND, parametrize=parametrize)
        model, optimizer = acc.prepare(net, torch.optim.Adam(net.parameters(), lr=LR))
        project_after_step(optimizer, model)
        return acc, model, optimizer

    acc, straight, optimizer = setup()
    accelerated_loop(acc, straight, optimizer, batches(4))

    acc, first, optimizer = setup()
    accelerated_loop(acc, first, optimizer, batches(4)[:2])
    acc.save_state(str(tmp_path / "state"))
    acc, resumed, optimizer = setup(seed=5)
    acc.load_state(str(tmp_path / "state"))
    accelerated_loop(acc, resumed, optimizer, batches(4)[2:])
    assert_same(resumed, straight)

    plain = make_net(seed=7)  # the export loads into the model without constraints
    plain.load_state_dict(plain_state_dict(resumed) if parametrize else resumed.state_dict())
    x = batches()[0][0]
    assert torch.equal(plain(x), resumed(x))
