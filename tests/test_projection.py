"""hard_project: every path equals the plain per-tensor reference; the cache notices changes."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from helpers import raw
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

from torch_constraints import (
    Box,
    MaxNorm,
    MinMaxNorm,
    NonNeg,
    Simplex,
    UnitNorm,
    constrain,
    constrain_all,
    hard_project,
    unconstrain,
)
from torch_constraints.projection import _plans
from torch_constraints.registration import Slot, constrained_slots

pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")

PATHS = [
    pytest.param({}, id="default"),
    pytest.param({"pack": True, "foreach": False}, id="packed+loop"),
    pytest.param({"pack": False, "foreach": True}, id="foreach"),
    pytest.param({"pack": False, "foreach": False}, id="loop"),
]


def projected_slots(model: nn.Module) -> list[Slot]:
    """Slots whose raw tensor hard_project writes to."""
    return [slot for slot in constrained_slots(model) if slot.leading_constraints()]


def reference(model: nn.Module) -> dict[str, torch.Tensor]:
    """Expected raw values after hard_project: each leading constraint's projection, in turn."""
    expected = {}
    for slot in projected_slots(model):
        value = slot.chain.original.detach().clone()
        for constraint in slot.leading_constraints():
            constraint.project_(value)
        expected[slot.qualname] = value
    return expected


def raws(model: nn.Module) -> dict[str, torch.Tensor]:
    return {slot.qualname: slot.chain.original.detach().clone() for slot in projected_slots(model)}


def is_packed(tensor: torch.Tensor) -> bool:
    return tensor.untyped_storage().nbytes() > tensor.nbytes


def scramble(model: nn.Module, scale: float = 3.0) -> None:
    """Move raw values outside their sets, as an optimizer step would."""
    with torch.no_grad():
        for i, slot in enumerate(projected_slots(model)):
            original = slot.chain.original
            generator = torch.Generator().manual_seed(i)
            noise = torch.randn(original.shape, generator=generator, dtype=torch.float64) * scale
            original.copy_(noise.to(original.dtype))


class Zoo(nn.Module):
    """Constrained tensors of every kind the fast paths must handle."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 16)
        self.half = nn.Linear(16, 4).to(torch.bfloat16)
        self.double = nn.Linear(4, 4).to(torch.float64)
        self.conv = nn.Conv2d(3, 5, 3).to(memory_format=torch.channels_last)
        self.empty = nn.Linear(0, 3)
        self.transposed = nn.Parameter(torch.randn(6, 5).t())  # dense, not contiguous
        self.strided = nn.Parameter(torch.randn(6, 5))
        self.register_buffer("stat", torch.randn(7))
        self.stacked = nn.Linear(5, 5)
        self.normed = nn.utils.parametrizations.weight_norm(nn.Linear(3, 3))
        self.same_as_a = nn.Linear(8, 16)
        constrain_all(self, -0.5, 0.5, include=(nn.Linear,))
        self.normed_stack = nn.ModuleList(nn.Linear(6, 4) for _ in range(3))
        self.unit_stack = nn.ModuleList(nn.Linear(6, 4).double() for _ in range(2))
        self.keras_step = nn.Linear(6, 4)
        self.simplex_rows = nn.Linear(5, 3)
        constrain(self, "conv.weight", NonNeg())
        constrain(self, "conv.bias", -torch.arange(5.0) / 10, torch.arange(5.0) / 10)
        constrain(self, "transposed", max=0.25)
        constrain(self, "strided", min=-0.25)
        # Registration stores a fresh dense tensor; rebind to a non-dense one.
        self.parametrizations.strided.original.data = torch.randn(6, 10)[:, ::2]
        constrain(self, "stat", -1, 1)
        constrain(self, "stacked.weight", NonNeg())  # stacks on the Box from constrain_all
        constrain_all(self.normed_stack, MaxNorm(0.4), include={"weight"})
        constrain_all(self.unit_stack, UnitNorm(dim=1), include={"weight"})
        constrain(self, "keras_step.weight", MinMaxNorm(0.2, 0.6, rate=0.5))
        constrain(self, "simplex_rows.weight", Simplex(dim=0))


def test_zoo_covers_the_cases() -> None:
    zoo = Zoo()
    transposed, strided = (
        zoo.parametrizations.transposed.original,
        zoo.parametrizations.strided.original,
    )
    assert not transposed.is_contiguous() and transposed.stride() == (1, 5)
    assert not strided.is_contiguous() and strided.untyped_storage().nbytes() > strided.nbytes
    assert raw(zoo.conv).is_contiguous(memory_format=torch.channels_last)
    assert raw(zoo.empty).numel() == 0
    assert len(zoo.stacked.parametrizations.weight) == 2


@pytest.mark.parametrize("path", PATHS)
def test_every_path_equals_the_reference(path: dict[str, bool]) -> None:
    zoo = Zoo()
    for round_ in range(3):  # first call builds the plan; later calls reuse it
        scramble(zoo, scale=3.0 + round_)
        expected = reference(zoo)
        hard_project(zoo, **path)
        got = raws(zoo)
        assert got.keys() == expected.keys()
        for name in expected:
            assert torch.equal(got[name], expected[name]), name


@pytest.mark.parametrize("path", PATHS)
def test_other_parametrizations_and_forward_only_constraints_are_left_alone(
    path: dict[str, bool],
) -> None:
    zoo = Zoo()
    normed = zoo.normed.parametrizations.weight
    before = [t.detach().clone() for t in (normed.original0, normed.original1)]
    assert isinstance(normed[-1], Box)  # a constraint after weight_norm: forward only
    hard_project(zoo, **path)
    assert torch.equal(normed.original0, before[0]) and torch.equal(normed.original1, before[1])
    assert zoo.normed.weight.abs().max() <= 0.5


def test_packing_keeps_parameter_identity_strides_and_values() -> None:
    zoo = Zoo()
    params = dict(zoo.named_parameters())
    strides = {n: p.stride() for n, p in params.items()}
    values = reference(zoo)
    hard_project(zoo)
    assert dict(zoo.named_parameters()) == params
    assert {n: p.stride() for n, p in params.items()} == strides
    assert all(torch.equal(raws(zoo)[n], values[n]) for n in values)
    plan = _plans[zoo]
    packed = {id(t) for p in plan.packs for t in p.tensors}
    assert id(raw(zoo.a)) in packed and id(raw(zoo.conv)) in packed
    assert id(zoo.parametrizations.transposed.original) in packed
    assert id(zoo.parametrizations.strided.original) not in packed
    # All float32 tensors with only Box(-0.5, 0.5), whatever their shapes, form one run.
    float32_pack = next(p for p in plan.packs if p.dtype == torch.float32)
    box = ("box", -0.5, 0.5)
    runs = [r for r in float32_pack.runs if [c.fusion_key() for c in r.constraints] == [box]]
    assert len(runs) == 1
    sizes = [raw(m, n).numel() for m in (zoo.a, zoo.b, zoo.same_as_a) for n in ("weight", "bias")]
    assert runs[0].view.numel() >= sum(sizes)
    # Same-shaped tensors under one norm constraint form one stacked run.
    norm_runs = [r for r in float32_pack.runs if isinstance(r.constraints[0], MaxNorm)]
    assert [tuple(r.view.shape) for r in norm_runs] == [(3, 4, 6)]
    float64_pack = next(p for p in plan.packs if p.dtype == torch.float64)
    unit_runs = [r for r in float64_pack.runs if isinstance(r.constraints[0], UnitNorm)]
    assert [tuple(r.view.shape) for r in unit_runs] == [(2, 4, 6)]


def test_optimizer_keeps_training_packed_parameters() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    constrain_all(model, -0.3, 0.3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    hard_project(model)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        optimizer.step()
        hard_project(model)
        losses.append(loss.item())
        assert all(p.abs().max() <= 0.3 for p in model.parameters())
    assert losses[-1] < losses[0]


# --------------------------------------------------------------------------- the cache
def test_rebinding_data_is_noticed() -> None:
    layer = constrain(nn.Linear(4, 4), "weight", -1, 1)
    hard_project(layer)
    raw(layer).data = torch.full((4, 4), 5.0)
    hard_project(layer)
    assert raw(layer).max() == 1


def test_a_rebound_pack_member_is_projected_once_and_repacked() -> None:
    # MinMaxNorm with rate < 1 moves a norm part of the way per call: projecting a
    # tensor twice in one call would show.
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    constrain_all(model, MinMaxNorm(1.0, 2.0, rate=0.5), include={"weight"})
    hard_project(model)
    assert is_packed(raw(model[0]))
    raw(model[0]).data = torch.full((4, 4), 2.0)  # each row's norm is 4
    reference = torch.full((4, 4), 2.0)
    MinMaxNorm(1.0, 2.0, rate=0.5).project_(reference)  # norm 3: half way to 2
    hard_project(model)
    assert torch.equal(raw(model[0]), reference)
    assert is_packed(raw(model[0]))  # again, for the next call
    hard_project(model)
    MinMaxNorm(1.0, 2.0, rate=0.5).project_(reference)
    assert torch.equal(raw(model[0]), reference)


def test_a_pack_buffer_that_lost_its_storage_is_noticed_before_projecting() -> None:
    layer = constrain(nn.Linear(4, 4), "weight", -1, 1)
    hard_project(layer)
    (buffer,) = _plans[layer].packs[0].buffers
    raw(layer).data = torch.full((4, 4), 5.0)
    buffer.untyped_storage().resize_(0)  # as code freeing memory in place would
    hard_project(layer)  # must not write into the freed storage
    assert torch.equal(raw(layer), torch.ones(4, 4))


def test_module_to_is_noticed() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    constrain_all(model, -1, 1)
    hard_project(model)
    model.to(torch.float64)
    scramble(model)
    hard_project(model)
    assert all(p.dtype == torch.float64 and p.abs().max() <= 1 for p in model.parameters())


def test_module_to_rebuilds_the_plan_before_projecting() -> None:
    # The buffers left behind by .to() are not worth a kernel, let alone a write.
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    constrain_all(model, -1, 1)
    hard_project(model)
    (old,) = _plans[model].packs[0].buffers
    model.to(torch.float64)
    old.fill_(5.0)
    hard_project(model)
    assert (old == 5.0).all()


def test_constraints_added_later_are_projected() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    constrain(model, "0.weight", -1, 1)
    hard_project(model)
    constrain(model, "1.weight", -0.1, 0.1)
    scramble(model)
    hard_project(model)
    assert raw(model[1]).abs().max().item() == pytest.approx(0.1)


def test_modules_added_later_are_projected() -> None:
    model = nn.Sequential(constrain(nn.Linear(4, 4), "weight", -1, 1))
    hard_project(model)
    model.append(constrain(nn.Linear(4, 4), "weight", -0.1, 0.1))
    scramble(model)
    hard_project(model)
    assert raw(model[1]).abs().max().item() == pytest.approx(0.1)


@pytest.mark.parametrize("remove", ["pytorch", "unconstrain"])
def test_removed_constraints_are_no_longer_projected(remove: str) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    constrain_all(model, -1, 1, include={"weight"})
    hard_project(model)
    if remove == "pytorch":
        parametrize.remove_parametrizations(model[0], "weight", leave_parametrized=False)
    else:
        unconstrain(model, "0.weight", leave_constrained=False)
    with torch.no_grad():
        model[0].weight.fill_(5.0)
    hard_project(model)
    assert (model[0].weight == 5.0).all()


def test_projecting_a_subtree_and_the_whole_model_do_not_repack_each_other() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    constrain_all(model, -1, 1)
    hard_project(model)
    buffers = [b.data_ptr() for p in _plans[model].packs for b in p.buffers]
    for _ in range(2):
        scramble(model)
        hard_project(model[0])
        assert raw(model[0]).abs().max() == 1
        hard_project(model)
        assert raw(model[1]).abs().max() == 1
    assert [b.data_ptr() for p in _plans[model].packs for b in p.buffers] == buffers


def test_pack_false_gives_tensors_their_own_storage_back() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    constrain_all(model, -1, 1)
    hard_project(model)
    assert is_packed(raw(model[0]))
    hard_project(model, pack=False)
    for p in model.parameters():
        assert p.untyped_storage().nbytes() == p.nbytes


def test_tied_parameters_stay_tied() -> None:
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight  # the same Parameter in two modules
    c = nn.Linear(4, 4)
    model = nn.ModuleList([a, b, c])
    constrain(a, "weight", -1, 1)
    constrain(b, "weight", -0.5, 0.5)
    constrain(c, "weight", -2, 2)
    scramble(model)
    raw(c).data = raw(a).data  # another Parameter on the same storage
    hard_project(model)
    assert raw(a) is raw(b)
    assert raw(a).data_ptr() == raw(c).data_ptr()
    assert raw(a).abs().max() <= 0.5


def test_a_model_without_constraints_is_a_no_op() -> None:
    model = nn.Linear(2, 2)
    before = model.weight.detach().clone()
    hard_project(model)
    assert torch.equal(model.weight, before)


def test_meta_tensors_are_skipped() -> None:
    layer = constrain(nn.Linear(4, 4, device="meta"), "weight", -1, 1)
    hard_project(layer)
    assert raw(layer).device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_parameters_on_two_devices() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4).cuda())
    constrain_all(model, -1, 1)
    scramble(model)
    expected = reference(model)
    hard_project(model)
    for name, value in raws(model).items():
        assert torch.equal(value, expected[name])


# --------------------------------------------------------------------------- properties
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)


@given(
    tensor_shapes=st.lists(shapes, min_size=1, max_size=6),
    bounds=st.lists(
        st.sampled_from([(-1.0, 1.0), (0.0, None), (None, 0.25), (-0.05, 0.05)]),
        min_size=6,
        max_size=6,
    ),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_packed_path_equals_the_loop_on_random_models(
    tensor_shapes: list[tuple[int, ...]],
    bounds: list[tuple[float | None, float | None]],
    dtype: torch.dtype,
) -> None:
    model = nn.Module()
    for i, (shape, (lo, hi)) in enumerate(zip(tensor_shapes, bounds, strict=False)):
        model.register_parameter(f"p{i}", nn.Parameter(torch.zeros(shape, dtype=dtype)))
        constrain(model, f"p{i}", lo, hi)
    twin = copy.deepcopy(model)
    for _ in range(2):
        scramble(model)
        scramble(twin)
        hard_project(model)
        hard_project(twin, pack=False, foreach=False)
        for (name, got), (_, want) in zip(raws(model).items(), raws(twin).items(), strict=True):
            assert torch.equal(got, want), name


def test_every_combination_of_flags_agrees() -> None:
    results = []
    for pack, foreach in itertools.product([True, False], [True, False, None]):
        zoo = Zoo()
        scramble(zoo)
        hard_project(zoo, pack=pack, foreach=foreach)
        results.append(raws(zoo))
    for other in results[1:]:
        assert all(torch.equal(other[n], results[0][n]) for n in results[0])


def test_adding_a_constraint_keeps_the_existing_packs() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    constrain_all(model, -1, 1, include=lambda q, m, n: not q.startswith("2."))
    hard_project(model)
    first = [b.data_ptr() for p in _plans[model].packs for b in p.buffers]
    constrain(model, "2.weight", -0.1, 0.1)
    scramble(model)
    expected = reference(model)
    hard_project(model)
    assert [b.data_ptr() for b in _plans[model].packs[0].buffers] == first  # not copied again
    assert len(_plans[model].packs) == 2
    assert all(torch.equal(raws(model)[n], expected[n]) for n in expected)


def test_removing_a_constraint_unpacks_its_pack_members() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    constrain_all(model, -1, 1)
    hard_project(model)
    parametrize.remove_parametrizations(model[0], "weight", leave_parametrized=False)
    hard_project(model)
    weight = model[0].weight
    assert weight.untyped_storage().nbytes() == weight.nbytes  # no longer a view of the pack
    assert len(_plans[model].packs) == 1
