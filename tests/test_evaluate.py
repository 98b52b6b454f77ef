"""Reading a constrained tensor takes a fast path that must equal ``chain()`` exactly.

``module.weight`` on a module this library constrains calls each
parametrization's ``forward`` directly, unless a hook, a compiled call or a
tracer could see the difference; then it goes through ``nn.Module.__call__``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from helpers import Double, Shift
from torch import nn
from torch.nn.modules import module as torch_module

from torch_constraints import NonNeg, constrain
from torch_constraints._evaluate import evaluate


def layer() -> nn.Linear:
    torch.manual_seed(0)
    return constrain(nn.Linear(4, 3), "weight", -0.2, 0.2)


def test_the_value_is_the_chain_value_for_stacked_parametrizations() -> None:
    stacked = layer()
    torch.nn.utils.parametrize.register_parametrization(stacked, "weight", Shift())
    constrain(stacked, "weight", NonNeg())
    chain = stacked.parametrizations.weight
    assert torch.equal(evaluate(chain), chain())
    assert torch.equal(stacked.weight, (chain.original.clamp(-0.2, 0.2) + 1).clamp(min=0))


def test_a_forward_hook_on_a_constraint_still_runs() -> None:
    constrained = layer()
    constraint = constrained.parametrizations.weight[0]
    constraint.register_forward_hook(lambda module, args, out: out * 0)
    assert torch.equal(constrained.weight, torch.zeros(3, 4))


def test_a_forward_pre_hook_on_the_chain_still_runs() -> None:
    constrained = layer()
    calls = []
    constrained.parametrizations.weight.register_forward_pre_hook(lambda m, args: calls.append(m))
    constrained.weight  # noqa: B018 - the access is the test
    assert calls == [constrained.parametrizations.weight]


@pytest.fixture
def global_forward_hook() -> Iterator[list[nn.Module]]:
    seen: list[nn.Module] = []
    handle = torch_module.register_module_forward_hook(lambda m, args, out: seen.append(m))
    yield seen
    handle.remove()


def test_global_forward_hooks_see_every_parametrization(
    global_forward_hook: list[nn.Module],
) -> None:
    constrained = layer()
    torch.nn.utils.parametrize.register_parametrization(constrained, "weight", Double())
    chain = constrained.parametrizations.weight
    global_forward_hook.clear()  # registration evaluated the chain too
    constrained.weight  # noqa: B018 - the access is the test
    assert global_forward_hook == [chain[0], chain[1], chain]


def test_gradients_flow_through_the_fast_path() -> None:
    fast, slow = layer(), layer()
    with torch.no_grad():
        fast.parametrizations.weight.original.mul_(10)
        slow.parametrizations.weight.original.mul_(10)
    fast(torch.ones(2, 4)).sum().backward()
    slow_weight = slow.parametrizations.weight()  # through nn.Module.__call__
    torch.nn.functional.linear(torch.ones(2, 4), slow_weight, slow.bias).sum().backward()
    assert torch.equal(
        fast.parametrizations.weight.original.grad, slow.parametrizations.weight.original.grad
    )
