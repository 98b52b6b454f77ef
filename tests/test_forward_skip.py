"""Right after hard_project, box-like constraints skip their forward work, but never wrongly.

The forward pass of a Box returns the raw tensor as it is (a view) while the
raw tensor is provably unchanged since it was projected: same version counter,
same storage, and no optimizer step since. Each test breaks one of these and
checks that the forward pass still sees feasible values.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torch_constraints import (
    Box,
    NonNeg,
    constrain,
    constrain_all,
    hard_project,
    project_after_step,
)


def model_outside_the_box() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    constrain_all(model, -0.1, 0.1)
    model(torch.randn(2, 4))  # a forward pass: from now on projections are recorded
    return model


def original(model: nn.Sequential, i: int = 0) -> torch.Tensor:
    return model[i].parametrizations.weight.original  # type: ignore[no-any-return]


def skips(model: nn.Sequential, i: int = 0) -> bool:
    return model[i].weight._base is original(model, i)  # type: ignore[no-any-return]


def assert_feasible(model: nn.Sequential) -> None:
    for layer in (model[0], model[2]):
        assert layer.weight.abs().max() <= 0.1 and layer.bias.abs().max() <= 0.1


def test_forward_returns_the_raw_tensor_right_after_a_projection() -> None:
    model = model_outside_the_box()
    assert not skips(model)
    hard_project(model)
    assert skips(model)
    assert torch.equal(model[0].weight, original(model))


def test_gradients_are_the_same_with_and_without_the_skip() -> None:
    model = model_outside_the_box()
    hard_project(model)
    twin = copy.deepcopy(model)  # copies never inherit the skip
    assert skips(model) and not skips(twin)
    x = torch.randn(16, 4)
    for m in (model, twin):
        m(x).square().sum().backward()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None and torch.equal(p.grad, q.grad)


def test_an_in_place_write_after_the_projection_is_seen() -> None:
    model = model_outside_the_box()
    hard_project(model)
    with torch.no_grad():
        original(model).add_(1.0)
    assert not skips(model)
    assert_feasible(model)


def test_an_optimizer_step_after_the_projection_is_seen() -> None:
    model = model_outside_the_box()
    hard_project(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=10.0)
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    assert_feasible(model)


def test_a_fused_optimizer_that_does_not_bump_versions_is_seen() -> None:
    model = model_outside_the_box()
    try:
        optimizer = torch.optim.Adam(model.parameters(), lr=1.0, fused=True)
    except RuntimeError as error:  # pragma: no cover - depends on the build
        pytest.skip(f"no fused Adam here: {error}")
    hard_project(model)
    version = original(model)._version
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    moved = original(model).abs().max() > 0.1
    assert moved and original(model)._version == version  # the hazard is real
    assert_feasible(model)


def test_moving_the_module_is_seen() -> None:
    model = model_outside_the_box()
    hard_project(model)
    model.to(torch.float64)
    assert model[0].weight.dtype == torch.float64 and not skips(model)
    assert_feasible(model)


def test_loading_a_state_dict_is_seen() -> None:
    model = model_outside_the_box()
    hard_project(model)
    state = {k: v * 50 for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    assert original(model).abs().max() > 0.1
    assert_feasible(model)


def test_project_after_step_keeps_the_skip_across_training_steps() -> None:
    model = model_outside_the_box()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    project_after_step(optimizer, model)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 4)).square().sum().backward()
        optimizer.step()
        assert skips(model) and skips(model, 2)
        assert_feasible(model)


def test_functional_call_with_other_tensors_projects_them() -> None:
    model = model_outside_the_box()
    hard_project(model)
    weights = {"0.parametrizations.weight.original": torch.full((8, 4), 3.0)}
    out = torch.func.functional_call(model, weights, (torch.ones(1, 4),))
    expected = (
        torch.tanh(torch.ones(1, 4) @ torch.full((4, 8), 0.1) + model[0].bias) @ model[2].weight.T
    )
    assert torch.allclose(out, expected + model[2].bias)


def test_stacked_and_non_box_constraints_never_skip() -> None:
    layer = constrain(nn.Linear(4, 4), "weight", NonNeg())
    constrain(layer, "weight", Box(max=0.5))
    layer(torch.ones(1, 4))
    hard_project(layer)
    assert layer.weight._base is None


def _torch_optimizers() -> list[type[torch.optim.Optimizer]]:
    classes = []
    for name in dir(torch.optim):
        cls = getattr(torch.optim, name)
        if (
            isinstance(cls, type)
            and issubclass(cls, torch.optim.Optimizer)
            and cls is not torch.optim.Optimizer
        ):
            classes.append(cls)
    return classes


@pytest.mark.parametrize("cls", _torch_optimizers(), ids=lambda c: c.__name__)
@pytest.mark.parametrize("foreach", [False, True])
def test_uncounted_pytorch_optimizers_move_version_counters(
    cls: type[torch.optim.Optimizer], foreach: bool
) -> None:
    """The skip relies on this: a step that is not counted must move the versions."""
    from torch_constraints._tracking import may_write_silently

    if cls in (torch.optim.SparseAdam, torch.optim.LBFGS):
        pytest.skip("needs sparse gradients or a closure")
    param = nn.Parameter(torch.randn(4, 4))
    param.grad = torch.randn(4, 4)
    try:
        optimizer = cls([param], lr=0.1, foreach=foreach)
    except TypeError:
        optimizer = cls([param], lr=0.1)
    version = param._version
    optimizer.step()
    assert may_write_silently(optimizer) or param._version > version


def test_fused_and_foreign_optimizers_are_counted() -> None:
    from torch_constraints._tracking import may_write_silently

    param = nn.Parameter(torch.randn(2))
    assert may_write_silently(torch.optim.Adam([param], fused=True))
    assert not may_write_silently(torch.optim.Adam([param]))

    class Custom(torch.optim.SGD):
        pass

    assert may_write_silently(Custom([param], lr=0.1))
