"""Mixed precision: autocast runs and stays feasible; low-precision parameters are projected inside.

Bounds such as 0.05 or 1/3 have no exact bfloat16 or float16 value; rounded to
nearest, a clamped weight could lie just outside the requested range. The
library rounds bounds toward the inside, so every stored and every forward value
satisfies the requested bounds exactly (checked here in float64).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torch_constraints import Box, constrain, constrain_all, hard_project, project_after_step

LOW_PRECISION = [torch.bfloat16, torch.float16]
#: Requested per-row upper bounds of the first layer, none of them exact in any dtype.
ROW_UPPER = torch.tensor([[0.05], [1 / 3], [0.1], [0.7], [2 / 3], [0.3], [0.15], [0.01]]).double()


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.Linear(8, 3))


def constrained_mlp(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    model = mlp().to(dtype)
    constrain(model[0], "weight", Box(min=-ROW_UPPER, max=ROW_UPPER))
    constrain(model[0], "bias", min=-0.05, max=0.05)
    constrain(model[2], "weight", -1 / 3, 1 / 3)
    return model


def assert_within_requested_bounds(model: nn.Sequential, which: str) -> None:
    """Every raw or forward value, read in float64, satisfies the bounds as requested."""

    def value(layer: nn.Module, name: str) -> torch.Tensor:
        tensor = layer.parametrizations[name].original if which == "raw" else getattr(layer, name)
        return tensor.detach().double()  # type: ignore[no-any-return]

    w0, b0, w2 = value(model[0], "weight"), value(model[0], "bias"), value(model[2], "weight")
    assert (w0 <= ROW_UPPER).all() and (w0 >= -ROW_UPPER).all()
    assert (b0.abs() <= 0.05).all()
    assert (w2.abs() <= 1 / 3).all()


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["bfloat16", "float16"])
def test_low_precision_parameters_are_projected_inside_the_requested_bounds(
    dtype: torch.dtype,
) -> None:
    model = constrained_mlp(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(50.0)  # push (almost) everything outside
    assert_within_requested_bounds(model, "forward")  # the forward pass rounds inward
    hard_project(model)
    assert_within_requested_bounds(model, "raw")
    # Where rounding to nearest would land outside, the weights sit one step inside.
    raw = model[0].parametrizations.weight.original.detach()
    outside_if_nearest = 0
    for row, upper in zip(raw, ROW_UPPER.flatten().tolist(), strict=True):
        nearest = torch.tensor(upper, dtype=dtype)
        if nearest.double() > upper and row.max() > 0:
            outside_if_nearest += 1
            assert row.max() == torch.nextafter(nearest, torch.tensor(0.0, dtype=dtype))
    assert outside_if_nearest >= 2


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["bfloat16", "float16"])
def test_training_in_low_precision_stays_feasible(dtype: torch.dtype) -> None:
    model = constrained_mlp(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    project_after_step(optimizer, model)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(16, 5, generator=generator).to(dtype)
        loss = model(x).float().pow(2).mean() - model(x).float().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert_within_requested_bounds(model, "raw")
        assert_within_requested_bounds(model, "forward")


def test_autocast_bfloat16_training_runs_and_stays_feasible() -> None:
    model = constrained_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    project_after_step(optimizer, model)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(8):
        x = torch.randn(32, 5, generator=generator)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            loss = (out.float() - 1.0).pow(2).mean()
        assert out.dtype == torch.bfloat16
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        assert model[0].parametrizations.weight.original.dtype == torch.float32
        assert_within_requested_bounds(model, "raw")
        assert_within_requested_bounds(model, "forward")
    assert losses[-1] < losses[0]


def test_under_autocast_the_constraint_applies_before_the_cast() -> None:
    # A constrained model under autocast computes exactly what the unconstrained
    # model with the projected weights computes under autocast.
    model = constrained_mlp()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(50.0)
    plain = mlp()
    with torch.no_grad():
        for i in (0, 2):
            plain[i].weight.copy_(model[i].weight)
            plain[i].bias.copy_(model[i].bias)
    x = torch.randn(4, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(x), plain(x))


def test_autocast_with_torch_compile_equals_eager() -> None:
    torch._dynamo.reset()
    model = constrained_mlp()
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(x), compiled(x))
    torch._dynamo.reset()


def test_constrain_all_on_a_bfloat16_model_rounds_scalar_bounds_inward() -> None:
    model = mlp().to(torch.bfloat16)
    constrain_all(model, -0.05, 0.05)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    hard_project(model)
    for p in model.parameters():
        assert (p.double() <= 0.05).all()
        assert p.eq(torch.tensor(0.0498046875, dtype=torch.bfloat16)).all()
