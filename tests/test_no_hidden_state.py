"""Nothing depends on what ran before: saves, aliases, ties, storages, the forward pass.

A forward value, a gradient or a saved file is a function of the model as it is
now: no earlier projection, packing, write through ``.data`` or attribute change can
leave something behind that changes it. By behaviour: every save path keeps every
tensor; aliases keep tracking the model; ties survive; no inference tensors are made;
memory is given back; the forward pass is computed afresh; attributes are live.
"""

from __future__ import annotations

import io

import pytest
import torch
from helpers import raw
from torch import nn

from torch_constraints import (
    MaxNorm,
    PackedProjection,
    constrain,
    constrain_all,
    hard_project,
    named_constraints,
    unconstrain,
)


def critic(parametrize: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    constrain_all(model, -0.05, 0.05, parametrize=parametrize)
    return model


def storage_of(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def distinct_storages(model: nn.Module) -> bool:
    params = list(model.parameters())
    return len({storage_of(p) for p in params}) == len(params)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.randn(16, 8)).square().mean().backward()
    optimizer.step()


# ----------------------------------------------------------------- 1. nothing lost on save
@pytest.mark.parametrize("parametrize", [True, False])
def test_accelerate_save_model_keeps_every_tensor(tmp_path: object, parametrize: bool) -> None:
    accelerate = pytest.importorskip("accelerate")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = critic(parametrize)
    hard_project(model)
    accelerator = accelerate.Accelerator(cpu=True)
    prepared = accelerator.prepare(model)
    accelerator.save_model(prepared, str(tmp_path))
    saved = safetensors_torch.load_file(f"{tmp_path}/model.safetensors")
    assert sorted(saved) == sorted(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(saved[key], value), key


def test_a_packed_model_saves_every_tensor_with_safetensors() -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = critic()
    packed = PackedProjection(model)
    packed()
    assert len({storage_of(p) for p in model.parameters()}) == 1  # packed indeed
    saved = safetensors_torch.load(safetensors_torch.save(model.state_dict()))
    assert sorted(saved) == sorted(model.state_dict())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------------- 2. aliases keep tracking
@pytest.mark.parametrize("parametrize", [True, False])
def test_aliases_taken_before_the_first_projection_keep_tracking_the_model(
    parametrize: bool,
) -> None:
    model = critic(parametrize)
    aliases = [p.detach() for p in model.parameters()]
    state = model.state_dict()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(3):
        train_step(model, optimizer)
        hard_project(model)
    for alias, param in zip(aliases, model.parameters(), strict=True):
        assert torch.equal(alias, param.detach())
        assert storage_of(alias) == storage_of(param)
    assert all(torch.equal(v, dict(model.state_dict())[k]) for k, v in state.items())
    with torch.no_grad():
        aliases[0].fill_(0.01)  # and writes through them still reach the model
    assert (next(model.parameters()) == 0.01).all()


# ----------------------------------------------------------------- 3. ties kept
def test_a_tie_made_by_the_user_survives_projection() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    constrain_all(model, -0.1, 0.1, include={"weight"})
    hard_project(model)
    a, b = raw(model[0]), raw(model[1])
    b.data = a.data  # tie them
    for _ in range(2):
        hard_project(model)
        assert a.data_ptr() == b.data_ptr() and a.stride() == b.stride()


def test_a_tie_made_after_packing_survives_repacking_and_unpacking() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    constrain_all(model, -0.1, 0.1, include={"weight"})
    packed = PackedProjection(model)
    a, b = raw(model[0]), raw(model[1])
    b.data = a.data
    packed()  # notices b moved, repacks
    assert storage_of(a) == storage_of(b) and a.data_ptr() == b.data_ptr()
    packed.unpack()
    assert a.data_ptr() == b.data_ptr()


# ----------------------------------------------------------------- 4. no inference tensors
@pytest.mark.parametrize("packed", [False, True])
def test_a_first_projection_under_inference_mode_leaves_training_possible(packed: bool) -> None:
    model = critic()
    with torch.inference_mode():
        if packed:
            PackedProjection(model)()
        else:
            hard_project(model)
    assert not any(p.is_inference() for p in model.parameters())
    model(torch.randn(4, 8)).sum().backward()  # raised "Inference tensors cannot be saved"
    assert all(p.grad is not None for p in model.parameters())


# ----------------------------------------------------------------- 5. memory given back
def test_unconstrain_frees_the_pack_buffer() -> None:
    model = critic()
    packed = PackedProjection(model)
    packed()
    unconstrain(model)
    for p in model.parameters():
        assert p.untyped_storage().nbytes() == p.numel() * p.element_size()
    assert distinct_storages(model)


def test_the_default_projection_never_shares_storages() -> None:
    model = critic()
    optimizer = torch.optim.Adam(model.parameters())
    pointers = [p.data_ptr() for p in model.parameters()]
    for _ in range(3):
        train_step(model, optimizer)
        hard_project(model)
    assert [p.data_ptr() for p in model.parameters()] == pointers
    assert distinct_storages(model)


# ----------------------------------------------------------------- 6. the forward pass
def read_then_project(module: nn.Module, x: torch.Tensor) -> None:
    """A forward pass, then a projection: what trusted "already projected" records."""
    module(x)
    hard_project(module)


def test_a_write_through_data_after_projection_cannot_leak_into_the_forward_pass() -> None:
    layer = constrain(nn.Linear(4, 4), "weight", -0.1, 0.1)
    read_then_project(layer, torch.randn(2, 4))
    raw(layer).data.normal_(0.0, 2.0)  # DCGAN's init, which moves no version counter
    assert layer.weight.abs().max() <= 0.1
    box = layer.parametrizations.weight[0]
    assert torch.equal(layer.weight, box.project(raw(layer).detach()))  # computed afresh


def test_rebinding_data_twice_cannot_fool_the_forward_pass() -> None:
    layer = constrain(nn.Linear(4, 4), "weight", -0.1, 0.1)
    for value in (1.1, 5.0):
        read_then_project(layer, torch.randn(2, 4))
        raw(layer).data = torch.full((4, 4), value)  # the allocator may reuse the address
        assert layer.weight.max().item() == pytest.approx(0.1)


@pytest.mark.parametrize("after_projection", [False, True])
def test_the_forward_value_never_aliases_the_raw_tensor(after_projection: bool) -> None:
    layer = constrain(nn.Linear(4, 4), "weight", -1.0, 1.0)
    if after_projection:
        read_then_project(layer, torch.randn(2, 4))
    before = raw(layer).detach().clone()
    weight = layer.weight
    weight.mul_(0.5)  # a fresh tensor: allowed, and the raw tensor is untouched
    with torch.no_grad():
        layer.weight.zero_()
    assert torch.equal(raw(layer).detach(), before)


@pytest.mark.parametrize("after_projection", [False, True])
def test_embedding_max_norm_renormalizes_the_same_tensor_before_and_after(
    after_projection: bool,
) -> None:
    embedding = constrain(nn.Embedding(5, 3, max_norm=0.5), "weight", -2.0, 2.0)
    with torch.no_grad():
        raw(embedding).fill_(1.0)
    if after_projection:
        read_then_project(embedding, torch.tensor([0, 1]))
    before = raw(embedding).detach().clone()
    out = embedding(torch.tensor([0, 1]))
    assert torch.allclose(out.norm(dim=1), torch.full((2,), 0.5))
    assert torch.equal(raw(embedding).detach(), before)  # the raw weight is never renormalized


@pytest.mark.parametrize("seed", range(10))
def test_the_gradient_after_projection_is_the_projections_gradient(seed: int) -> None:
    torch.manual_seed(seed)
    layer = constrain(nn.Linear(6, 4).double(), "weight", MaxNorm(0.5))
    with torch.no_grad():
        raw(layer).mul_(10)
    read_then_project(layer, torch.randn(1, 6, dtype=torch.float64))  # rows land on the sphere
    upstream = torch.randn(4, 6, dtype=torch.float64)
    (got,) = torch.autograd.grad(layer.weight, raw(layer), upstream)
    fresh = raw(layer).detach().clone().requires_grad_()
    constraint = next(c for _, c in named_constraints(layer))
    (want,) = torch.autograd.grad(constraint.project(fresh), fresh, upstream)
    assert torch.equal(got, want)


# ----------------------------------------------------------------- 7. live attributes
def test_annealing_the_clip_range_takes_effect_at_once() -> None:
    model = critic()
    constraint = dict(named_constraints(model))["2.weight"]
    for bound in (0.04, 0.02, 0.01):
        constraint.min, constraint.max = -bound, bound
        assert model[2].weight.abs().max().item() <= bound  # the forward pass at once
        hard_project(model)
        assert raw(model[2]).abs().max().item() <= bound
        assert raw(model[0]).abs().max().item() == pytest.approx(0.05)  # the others keep theirs
