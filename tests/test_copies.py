"""Copies of constrained models: deepcopy, pickle, torch.save, .to(), to_empty, functional_call."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from helpers import raw
from torch import nn
from torch.func import functional_call

from torch_constraints import (
    Box,
    NonNeg,
    PackedProjection,
    constrain,
    constrain_all,
    hard_project,
    named_constraints,
    project_after_step,
)
from torch_constraints._rounding import inward_scalar

#: Per-element bounds, requested in float64 (none is a float32 value).
UPPER = torch.linspace(0.1, 0.8, 8, dtype=torch.float64)


def model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(4.0)
    constrain_all(net, -0.5, 0.5, include={"weight"})
    constrain(net[0], "bias", Box(min=-UPPER, max=UPPER))
    return net


def raw_tensors(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in net.state_dict(keep_vars=True).items()}


def assert_same_model(a: nn.Module, b: nn.Module) -> None:
    sa, sb = raw_tensors(a), raw_tensors(b)
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [(n, repr(c)) for n, c in named_constraints(a)] == [
        (n, repr(c)) for n, c in named_constraints(b)
    ]
    x = torch.randn(3, 4)
    assert torch.equal(a(x), b(x))


def train(net: nn.Module, steps: int = 3) -> None:
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    handle = project_after_step(optimizer, net)
    for _ in range(steps):
        optimizer.zero_grad()
        net(torch.randn(5, 4) * 3).pow(2).sum().backward()
        optimizer.step()
    handle.remove()


def assert_feasible(net: nn.Sequential) -> None:
    bound = inward_scalar(0.5, torch.float32, lower=False)
    assert raw(net[0]).abs().max() <= bound and raw(net[2]).abs().max() <= bound
    assert (raw(net[0], "bias").double().abs() <= UPPER).all()


# --------------------------------------------------------------------- deepcopy
def test_deepcopy_is_an_independent_constrained_model() -> None:
    net = model()
    packed = PackedProjection(net)  # the copy must get storages of its own
    packed()
    twin = copy.deepcopy(net)
    assert_same_model(net, twin)
    assert type(twin[0]) is type(net[0])
    assert raw(twin[0]) is not raw(net[0])
    assert raw(twin[0]).untyped_storage().data_ptr() != raw(net[0]).untyped_storage().data_ptr()
    twin_constraint = twin[0].parametrizations.weight[0]
    assert twin_constraint is not net[0].parametrizations.weight[0]
    before = raw_tensors(net)
    train(twin)
    assert_feasible(twin)
    assert all(torch.equal(v, before[k]) for k, v in raw_tensors(net).items())


# --------------------------------------------------------------------- pickle / torch.save
@pytest.mark.parametrize("route", ["pickle", "torch.save"])
def test_a_whole_constrained_model_pickles(route: str) -> None:
    net = model()
    train(net)  # packed, with a cached plan and skip records
    if route == "pickle":
        loaded = pickle.loads(pickle.dumps(net))
    else:
        buffer = io.BytesIO()
        torch.save(net, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
    assert_same_model(net, loaded)
    assert type(loaded[0]) is type(net[0])
    train(loaded)  # and it keeps training, projected
    assert_feasible(loaded)


def test_a_pickled_model_is_still_refused_by_weights_only_load() -> None:
    buffer = io.BytesIO()
    torch.save(model(), buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(buffer)  # PyTorch's default for whole modules: save state_dict() instead


@pytest.mark.parametrize(
    "constraint",
    [Box(-1, 2), Box(min=torch.zeros(3), max=torch.ones(3)), NonNeg(), Box(max=0.5)],
    ids=["scalar", "tensor", "nonneg", "one-sided"],
)
def test_constraint_objects_pickle_on_their_own(constraint: Box) -> None:
    constraint.straight_through = True
    loaded = pickle.loads(pickle.dumps(constraint))
    assert type(loaded) is type(constraint) and repr(loaded) == repr(constraint)
    assert loaded.straight_through
    x = torch.linspace(-3, 3, 3)
    assert torch.equal(loaded.project(x), constraint.project(x))


# --------------------------------------------------------------------- .to()
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_to_dtype_keeps_the_model_constrained(dtype: torch.dtype) -> None:
    net = model()
    hard_project(net)
    net.to(dtype)
    assert raw(net[0]).dtype == dtype and raw(net[0], "bias").dtype == dtype
    upper = UPPER
    bound = net[0].parametrizations.bias[0].max
    assert bound.dtype == dtype and (bound.double() <= upper).all()  # re-rounded inward
    assert (net[0].bias.double().abs() <= upper).all()  # the forward value
    hard_project(net)  # .to() rounds raw values to nearest; the next projection fixes them
    assert (raw(net[0]).double().abs() <= 0.5).all()
    assert (raw(net[0], "bias").double().abs() <= upper).all()
    assert net(torch.randn(2, 4, dtype=dtype)).dtype == dtype


def test_to_device_moves_raw_tensors_and_bounds(device: str) -> None:
    net = model().to(device)
    assert raw(net[0]).device.type == device
    assert net[0].parametrizations.bias[0].max.device.type == device
    train_on = net(torch.randn(2, 4, device=device))
    assert train_on.device.type == device
    hard_project(net)
    assert (raw(net[0], "bias").double().abs().cpu() <= UPPER).all()


# --------------------------------------------------------------------- meta device
def test_meta_build_then_to_empty_and_init_of_the_raw_tensors() -> None:
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    constrain_all(net, -0.5, 0.5, include={"weight"})
    assert raw(net[0]).is_meta
    net.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():  # initialize the raw tensors, not module.weight (a computed value)
        for name, tensor in net.named_parameters():
            nn.init.uniform_(tensor, -2.0, 2.0) if name.endswith("original") else tensor.zero_()
    hard_project(net)
    bound = inward_scalar(0.5, torch.float32, lower=False)
    assert raw(net[0]).abs().max() == bound and raw(net[2]).abs().max() == bound
    assert torch.isfinite(net(torch.randn(3, 4))).all()


def meta_model() -> nn.Sequential:
    """The constrained model of these tests, built on the meta device (tensor bounds too)."""
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        constrain_all(net, -0.5, 0.5, include={"weight"})
        constrain(net[0], "bias", Box(min=-torch.ones(8), max=torch.ones(8)))
    return net


def test_tensor_bounds_after_to_empty_come_back_from_a_checkpoint() -> None:
    # Tensor bounds are buffers: to_empty() leaves them uninitialized, like all buffers.
    source = model(seed=1)
    net = meta_model()
    net.to_empty(device="cpu")
    net.load_state_dict(source.state_dict())
    assert_same_model(source, net)


def test_meta_build_then_load_with_assign() -> None:
    source = model(seed=2)
    net = meta_model()
    net.load_state_dict(source.state_dict(), assign=True)
    assert not raw(net[0]).is_meta
    assert_same_model(source, net)
    train(net)
    assert_feasible(net)


# --------------------------------------------------------------------- functional_call
def test_functional_call_with_raw_names_applies_the_constraints() -> None:
    net = model()
    params = {k: torch.full_like(v, 3.0) for k, v in net.named_parameters()}
    assert "0.parametrizations.weight.original" in params
    before = raw_tensors(net)
    x = torch.randn(2, 4)
    out = functional_call(net, params, (x,))
    reference = copy.deepcopy(net)
    with torch.no_grad():
        for name, tensor in reference.named_parameters():
            tensor.copy_(params[name])
    assert torch.equal(out, reference(x))
    assert all(torch.equal(v, before[k]) for k, v in raw_tensors(net).items())


def test_torch_func_grad_through_functional_call_pins_the_boundary_gradient() -> None:
    net = model()
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    key = "2.parametrizations.weight.original"
    params[key] = torch.tensor([[0.5, 0.7, -0.5, 0.1, 0.0, -0.9, 0.5, 0.2]] * 2)

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(net, p, (torch.ones(1, 4),)).sum()

    grads = torch.func.grad(loss)(params)
    hidden = net[1](net[0](torch.ones(1, 4))).detach()
    inside = params[key].abs() <= 0.5  # bounds included
    expected = torch.where(inside, hidden.expand(2, 8), torch.zeros(()))
    assert torch.equal(grads[key], expected)
