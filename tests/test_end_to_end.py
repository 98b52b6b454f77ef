"""What users do: the post-step clipping recipe, done with this library."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from torch_constraints import constrain_all, hard_project, project_after_step


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 6, generator=generator)
    y = torch.sin(x @ torch.randn(6, 1, generator=generator))
    return x, y


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )


def raw_values(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach() for p in net.parameters()]


def train(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: int,
    after_step: Callable[[], None] = lambda: None,
) -> list[float]:
    """Fit the regression data; call ``after_step`` after each step; return the losses."""
    x, y = data()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(net(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        after_step()
    return losses


def linear_weights_within(net: nn.Module, bound: float) -> bool:
    return all(layer.weight.abs().max() <= bound for layer in net if isinstance(layer, nn.Linear))


def test_blog_scenario_weight_clipping_after_every_sgd_step() -> None:
    net = model()
    clip = 0.5
    names = constrain_all(net, -clip, clip)
    assert len(names) == 6
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
    project_after_step(optimizer, net)

    def every_raw_value_in_range() -> None:  # not just the forward view
        assert all(p.abs().max() <= clip for p in raw_values(net))

    losses = train(net, optimizer, 40, every_raw_value_in_range)
    assert losses[-1] < 0.5 * losses[0]
    # the clip range is active: some weights sit exactly on a bound
    assert any((p.abs() == torch.tensor(clip)).any() for p in raw_values(net))


def test_forward_constraint_alone_keeps_every_forward_pass_feasible() -> None:
    net = model()
    constrain_all(net, -0.2, 0.2, include=(nn.Linear,))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)

    def forward_values_in_range() -> None:
        assert linear_weights_within(net, 0.2)

    train(net, optimizer, 20, forward_values_in_range)
    hard_project(net)
    assert all(p.abs().max() <= 0.2 for p in raw_values(net))


def test_straight_through_training_learns() -> None:
    net = model()
    constrain_all(net, -0.5, 0.5, straight_through=True)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
    losses = train(net, optimizer, 40)
    assert losses[-1] < 0.5 * losses[0]
    assert linear_weights_within(net, 0.5)
