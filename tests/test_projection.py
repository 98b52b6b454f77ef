"""hard_project: every path equals the plain per-tensor reference, and nothing is kept.

``hard_project`` reads the model afresh on every call: these tests change the
model between calls in every way we know of and check the next call follows.
"""

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
    Constraint,
    MaxNorm,
    MinMaxNorm,
    NonNeg,
    PackedProjection,
    Simplex,
    UnitNorm,
    constrain,
    constrain_all,
    hard_project,
    named_constraints,
    unconstrain,
)
from torch_constraints._tree import Constrained, constrained
from torch_constraints.projection import _groups, groups

pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")

PATHS = ["default", "foreach", "loop", "packed"]


def project(model: nn.Module, path: str, packed: dict[int, PackedProjection]) -> None:
    """One projection along ``path``; a packed one keeps its PackedProjection in ``packed``."""
    if path == "packed":
        if id(model) not in packed:
            packed[id(model)] = PackedProjection(model, foreach=False)
        packed[id(model)]()
    else:
        hard_project(model, foreach={"default": None, "foreach": True, "loop": False}[path])


def projected_slots(model: nn.Module) -> list[Constrained]:
    """Constrained tensors whose raw tensor hard_project writes to."""
    return [entry for entry in constrained(model) if entry.constraints and entry.raw is not None]


def raw_of(entry: Constrained) -> torch.Tensor:
    assert entry.raw is not None
    return entry.raw


def reference(model: nn.Module) -> dict[str, torch.Tensor]:
    """Expected raw values after hard_project: each leading constraint's projection, in turn."""
    expected = {}
    for entry in projected_slots(model):
        value = raw_of(entry).detach().clone()
        for constraint in entry.constraints:
            constraint.project_(value)
        expected[entry.qualname] = value
    return expected


def raws(model: nn.Module) -> dict[str, torch.Tensor]:
    return {slot.qualname: raw_of(slot).detach().clone() for slot in projected_slots(model)}


def storages(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Every parameter's and buffer's data pointer and storage size."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {
        n: (t.data_ptr(), t.untyped_storage().nbytes())
        for n, t in tensors.items()
        if t.device.type != "meta"
    }


def scramble(model: nn.Module, scale: float = 3.0) -> None:
    """Move raw values outside their sets, as an optimizer step would."""
    with torch.no_grad():
        for i, slot in enumerate(projected_slots(model)):
            original = raw_of(slot)
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
def test_every_path_equals_the_reference(path: str) -> None:
    zoo = Zoo()
    packed: dict[int, PackedProjection] = {}
    for round_ in range(3):
        scramble(zoo, scale=3.0 + round_)
        expected = reference(zoo)
        project(zoo, path, packed)
        got = raws(zoo)
        assert got.keys() == expected.keys()
        for name in expected:
            assert torch.equal(got[name], expected[name]), name


@pytest.mark.parametrize("path", PATHS)
def test_other_parametrizations_and_forward_only_constraints_are_left_alone(path: str) -> None:
    zoo = Zoo()
    normed = zoo.normed.parametrizations.weight
    before = [t.detach().clone() for t in (normed.original0, normed.original1)]
    assert isinstance(normed[-1], Box)  # a constraint after weight_norm: forward only
    project(zoo, path, {})
    assert torch.equal(normed.original0, before[0]) and torch.equal(normed.original1, before[1])
    assert zoo.normed.weight.abs().max() <= 0.5


def test_hard_project_changes_no_storage_of_the_model() -> None:
    zoo = Zoo()
    params = dict(zoo.named_parameters())
    strides = {n: p.stride() for n, p in params.items()}
    before = storages(zoo)
    for _ in range(2):
        scramble(zoo)
        hard_project(zoo)
    assert dict(zoo.named_parameters()) == params
    assert {n: p.stride() for n, p in params.items()} == strides
    assert storages(zoo) == before


def test_optimizer_keeps_training() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    constrain_all(model, -0.3, 0.3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
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


# --------------------------------------------------------------------------- nothing is kept
def test_rebinding_data_is_followed() -> None:
    layer = constrain(nn.Linear(4, 4), "weight", -1, 1)
    hard_project(layer)
    raw(layer).data = torch.full((4, 4), 5.0)
    hard_project(layer)
    assert raw(layer).max() == 1


def test_module_to_is_followed() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    constrain_all(model, -1, 1)
    hard_project(model)
    model.to(torch.float64)
    scramble(model)
    hard_project(model)
    assert all(p.dtype == torch.float64 and p.abs().max() <= 1 for p in model.parameters())


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


@pytest.mark.parametrize("parametrized", [True, False])
def test_changed_attributes_apply_to_that_tensor_alone(parametrized: bool) -> None:
    # The finding: both layers shared one group, projected with its first member's bounds.
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    constrain_all(model, -0.1, 0.1, include={"weight"}, parametrize=parametrized)
    constraints = dict(named_constraints(model))
    constraints["1.weight"].min, constraints["1.weight"].max = -0.01, 0.01
    scramble(model)
    hard_project(model)
    values = raws(model)
    assert values["0.weight"].abs().max().item() == pytest.approx(0.1)
    assert values["1.weight"].abs().max().item() == pytest.approx(0.01)
    assert values["2.weight"].abs().max().item() == pytest.approx(0.1)
    if parametrized:
        with torch.no_grad():
            raw(model[1]).fill_(1.0)
        assert model[1].weight.max().item() == pytest.approx(0.01)  # the forward pass too


def test_a_changed_norm_radius_applies_at_the_next_projection() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    constrain_all(model, MaxNorm(1.0), include={"weight"})
    dict(named_constraints(model))["0.weight"].max_value = 0.25
    scramble(model)
    hard_project(model)
    assert torch.allclose(raw(model[0]).norm(dim=1), torch.full((4,), 0.25))
    assert torch.allclose(raw(model[1]).norm(dim=1), torch.full((4,), 1.0))


def test_tied_parameters_stay_tied_and_storage_sharing_survives() -> None:
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight  # the same Parameter in two modules
    c = nn.Linear(4, 4)
    model = nn.ModuleList([a, b, c])
    constrain(a, "weight", -0.5, 0.5, parametrize=False)
    constrain(b, "weight", -0.5, 0.5, parametrize=False)  # the same set: one tensor
    constrain(c, "weight", -2, 2)
    scramble(model)
    raw(c).data = raw(a).data  # another Parameter on the same storage
    hard_project(model)
    assert a.weight is b.weight
    assert a.weight.data_ptr() == raw(c).data_ptr()
    assert a.weight.abs().max() <= 0.5


def test_a_tied_tensor_under_one_constraint_is_projected_once() -> None:
    # MinMaxNorm with rate < 1 moves a norm part of the way per projection.
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    model = nn.ModuleList([a, b])
    constrain_all(model, MinMaxNorm(1.0, 2.0, rate=0.5), include={"weight"}, parametrize=False)
    with torch.no_grad():
        a.weight.fill_(2.0)  # each row's norm is 4
    expected = torch.full((4, 4), 2.0)
    MinMaxNorm(1.0, 2.0, rate=0.5).project_(expected)
    hard_project(model)
    assert torch.equal(a.weight.detach(), expected)


def test_a_model_without_constraints_is_a_no_op() -> None:
    model = nn.Linear(2, 2)
    before = model.weight.detach().clone()
    hard_project(model)
    assert torch.equal(model.weight, before)


def test_meta_tensors_are_skipped() -> None:
    layer = constrain(nn.Linear(4, 4, device="meta"), "weight", -1, 1)
    hard_project(layer)
    assert raw(layer).device.type == "meta"


def test_hard_project_refuses_what_is_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"hard_project: expected an nn\.Module, got str"):
        hard_project("model")  # type: ignore[arg-type]


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
    parametrized=st.booleans(),
)
def test_grouped_and_packed_paths_equal_the_loop_on_random_models(
    tensor_shapes: list[tuple[int, ...]],
    bounds: list[tuple[float | None, float | None]],
    dtype: torch.dtype,
    parametrized: bool,
) -> None:
    model = nn.Module()
    for i, (shape, (lo, hi)) in enumerate(zip(tensor_shapes, bounds, strict=False)):
        model.register_parameter(f"p{i}", nn.Parameter(torch.zeros(shape, dtype=dtype)))
        constrain(model, f"p{i}", lo, hi, parametrize=parametrized)
    twins = [copy.deepcopy(model) for _ in range(2)]
    packed = PackedProjection(twins[1])
    for _ in range(2):
        for m in (model, *twins):
            scramble(m)
        hard_project(model, foreach=False)
        hard_project(twins[0])
        packed()
        want = raws(model)
        for twin in twins:
            for name, got in raws(twin).items():
                assert torch.equal(got, want[name]), name


def test_every_path_agrees() -> None:
    results = []
    for path in PATHS:
        zoo = Zoo()
        scramble(zoo)
        project(zoo, path, {})
        results.append(raws(zoo))
    for other in results[1:]:
        assert all(torch.equal(other[n], results[0][n]) for n in results[0])


def test_a_module_shared_under_two_names_is_projected_once() -> None:
    # MinMaxNorm with rate < 1 moves a norm part of the way per projection.
    shared = constrain(nn.Linear(4, 4), "weight", MinMaxNorm(1.0, 2.0, rate=0.5))
    model = nn.ModuleDict({"a": shared, "b": shared})
    with torch.no_grad():
        raw(shared).fill_(2.0)  # each row's norm is 4
    expected = torch.full((4, 4), 2.0)
    MinMaxNorm(1.0, 2.0, rate=0.5).project_(expected)
    hard_project(model)
    assert torch.equal(raw(shared).detach(), expected)


# --------------------------------------------------------------------------- the walk
def walk_by_public_api(model: nn.Module) -> list[tuple[str, int, int | None, list[int]]]:
    """What the walk should find, read through named_modules and the chains themselves."""
    found = []
    for prefix, module in model.named_modules():
        if isinstance(module, (parametrize.ParametrizationList, Constraint)):
            continue

        def join(name: str, prefix: str = prefix) -> str:
            return f"{prefix}.{name}" if prefix else name

        for name, chain in vars(module).get("_torch_constraints", {}).items():
            tensor = getattr(module, name)
            found.append((join(name), id(module), id(tensor), [id(c) for c in chain]))
        if not parametrize.is_parametrized(module):
            continue
        for name, chain in module.parametrizations.items():
            if not any(isinstance(entry, Constraint) for entry in chain):
                continue
            leading = list(itertools.takewhile(lambda e: isinstance(e, Constraint), chain))
            original = chain.original if chain.is_tensor and leading else None
            raw_id = None if original is None else id(original)
            found.append((join(name), id(module), raw_id, [id(c) for c in leading]))
    return found


def walk(model: nn.Module) -> list[tuple[str, int, int | None, list[int]]]:
    return [
        (
            e.qualname,
            id(e.owner),
            None if e.raw is None else id(e.raw),
            list(map(id, e.constraints)),
        )
        for e in constrained(model)
    ]


class _Scale(nn.Module):
    """Another library's parametrization."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


@given(
    layout=st.lists(
        st.tuples(
            st.sampled_from(
                ["param", "record", "buffer", "other", "stacked", "tensor-bound", "container"]
            ),
            st.sampled_from([(-1.0, 1.0), (0.0, None), (-0.5, 0.5)]),
            st.sampled_from([torch.float32, torch.float64]),
            st.sampled_from(["new", "tie", "share"]),
        ),
        min_size=0,
        max_size=12,
    )
)
def test_the_walk_finds_what_the_public_api_shows_and_groups_each_tensor_once(
    layout: list[tuple[str, tuple[float, float | None], torch.dtype, str]],
) -> None:
    model = nn.ModuleList()
    previous_kind, previous_bounds = "", (0.0, None)
    for kind, (lo, hi), dtype, link in layout:
        layer = nn.Linear(2, 3, dtype=dtype)
        if link == "tie" and kind == "record" == previous_kind:
            tied = model[-1].weight
            if isinstance(tied, nn.Parameter) and tied.dtype == dtype:
                layer.weight = tied  # one tensor, the same constraint under both names
                lo, hi = previous_bounds
        if link == "share" and len(model):
            model.append(model[-1])
            continue
        previous_kind, previous_bounds = kind, (lo, hi)
        if kind == "buffer":
            weight = layer.weight.detach()
            del layer.weight
            layer.register_buffer("weight", weight)
        if kind == "other":
            parametrize.register_parametrization(layer, "weight", _Scale())
            constrain(layer, "weight", lo, hi)  # acts on _Scale's output: not projected
        elif kind == "stacked":
            constrain(layer, "weight", lo, hi)
            constrain(layer, "weight", NonNeg())
        elif kind == "tensor-bound":
            constrain(layer, "weight", torch.full((3, 1), -0.25), 0.25)
        elif kind == "record":
            constrain(layer, "weight", lo, hi, parametrize=False)
            constrain(layer, "bias", Box(lo, hi), parametrize=False)
        else:
            constrain(layer, "weight", lo, hi)
        if kind == "container":  # a module with both chains and children
            container = nn.Sequential(layer)
            container.register_parameter("scale", nn.Parameter(torch.ones(3, dtype=dtype)))
            constrain(container, "scale", lo, hi)
            model.append(container)
            continue
        model.append(layer)
    assert walk(model) == walk_by_public_api(model)
    assert by_ids(groups(constrained(model))) == by_ids(_groups(constrained(model)))
    grouped = [id(t) for _, tensors in groups(constrained(model)) for t in tensors]
    projected = {raw_id for _, _, raw_id, chain in walk_by_public_api(model) if chain and raw_id}
    assert set(grouped) == projected
    untied = [raw_id for _, _, raw_id, chain in walk_by_public_api(model) if chain and raw_id]
    if len(set(untied)) == len(untied):
        assert len(grouped) == len(projected)  # each tensor once


def by_ids(grouped: list[tuple[tuple[Constraint, ...], list[torch.Tensor]]]) -> list[object]:
    return [(list(map(id, chain)), list(map(id, tensors))) for chain, tensors in grouped]


@pytest.mark.parametrize("distinct", [1, 3, 12])
@pytest.mark.parametrize("parametrized", [True, False])
def test_tensors_are_grouped_by_their_bounds(distinct: int, parametrized: bool) -> None:
    model = nn.ModuleList(nn.Linear(2, 2) for _ in range(24))
    for i, layer in enumerate(model):
        constrain(layer, "weight", -1.0 - i % distinct, 1.0, parametrize=parametrized)
    found = constrained(model)
    assert len(groups(found)) == distinct
    assert by_ids(groups(found)) == by_ids(_groups(found))  # the usual case's shortcut


class _Failing(Box):
    def project_many_(self, xs: object, *, foreach: bool | None = None) -> None:
        assert not torch.is_grad_enabled()
        raise RuntimeError("failed")


@pytest.mark.parametrize("grad", [True, False])
def test_hard_project_runs_without_autograd_and_restores_the_grad_mode(grad: bool) -> None:
    layer = constrain(nn.Linear(3, 2), "weight", -1, 1)
    failing = constrain(nn.Linear(3, 2), "weight", _Failing(-1, 1))
    with torch.set_grad_enabled(grad):
        hard_project(layer)
        assert torch.is_grad_enabled() is grad
        with pytest.raises(RuntimeError, match="failed"):
            hard_project(failing)
        assert torch.is_grad_enabled() is grad
