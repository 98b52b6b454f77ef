"""constrain, constrain_all, unconstrain, named_constraints and PyTorch's own removal."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import torch
from helpers import Double, Shift, raw
from torch import nn
from torch.nn.utils import parametrize

from torch_constraints import (
    Box,
    Constraint,
    MaxNorm,
    MinMaxNorm,
    NonNeg,
    constrain,
    constrain_all,
    hard_project,
    named_constraints,
    unconstrain,
)


def linear(seed: int = 0, scale: float = 3.0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.mul_(scale / layer.weight.abs().max())
    return layer


# --------------------------------------------------------------------------- constrain
def test_forward_sees_values_inside_the_bounds() -> None:
    layer = constrain(linear(), "weight", -1, 1)
    assert layer.weight.min() >= -1 and layer.weight.max() <= 1
    assert (layer.weight.abs() == 1).any()  # values were clipped, not rescaled


def test_parameter_object_is_kept_and_an_earlier_optimizer_still_updates_it() -> None:
    layer = linear()
    weight = layer.weight
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    constrain(layer, "weight", -1, 1)
    assert raw(layer) is weight
    before = weight.detach().clone()
    layer(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    assert not torch.equal(weight.detach(), before)


def test_raw_value_is_made_feasible_at_registration() -> None:
    layer = linear()
    expected = layer.weight.detach().clamp(-1, 1)
    constrain(layer, "weight", -1, 1)
    assert torch.equal(raw(layer).detach(), expected)


def test_assignment_stores_the_projection_in_the_same_parameter() -> None:
    layer = constrain(linear(), "weight", -1, 1)
    weight = raw(layer)
    layer.weight = torch.full((3, 4), 7.0)
    assert raw(layer) is weight
    assert torch.equal(weight.detach(), torch.ones(3, 4))


def test_one_sided_bounds() -> None:
    layer = constrain(linear(), "weight", min=0)
    assert layer.weight.min() == 0 and layer.weight.max() > 1
    layer = constrain(linear(), "weight", max=0.5)
    assert layer.weight.max() == 0.5 and layer.weight.min() < -1


def test_tensor_bounds_per_output_channel_follow_the_module() -> None:
    hi = torch.tensor([[0.1], [0.2], [0.3]])
    layer = constrain(linear(), "weight", -hi, hi)
    assert (layer.weight.abs() <= hi).all()
    layer.to(torch.float64)
    assert layer.weight.dtype == torch.float64
    assert (layer.weight.abs() <= hi.double()).all()
    assert (layer.weight.abs().amax(dim=1) == hi.double().squeeze(1)).all()


def test_a_constraint_object_may_replace_the_bounds() -> None:
    layer = constrain(linear(), "weight", NonNeg())
    assert layer.weight.min() == 0
    layer = constrain(linear(), "weight", Box(-0.5, 0.5))
    assert layer.weight.abs().max() == 0.5


def test_the_constraint_object_is_copied() -> None:
    box = Box(-1, 1)
    a, b = constrain(linear(), "weight", box), constrain(linear(1), "weight", box)
    registered = [a.parametrizations.weight[0], b.parametrizations.weight[0]]
    assert registered[0] is not box and registered[1] is not registered[0]
    assert repr(registered[0]) == repr(box)


def test_dotted_names_reach_into_submodules() -> None:
    model = nn.Sequential(linear(), nn.Sequential(linear(1)))
    assert constrain(model, "1.0.weight", -0.5, 0.5) is model
    assert model[1][0].weight.abs().max() == 0.5


def test_buffers_can_be_constrained_and_projected() -> None:
    norm = nn.BatchNorm1d(3)
    with torch.no_grad():
        norm.running_var.copy_(torch.tensor([-1.0, 0.5, 2.0]))
    constrain(norm, "running_var", min=0.1, parametrize=False)
    assert norm.running_var.tolist() == pytest.approx([0.1, 0.5, 2.0])
    assert "running_var" in norm.state_dict()
    with torch.no_grad():
        norm.running_var.fill_(-3.0)
    hard_project(norm)
    assert norm.running_var.tolist() == pytest.approx([0.1] * 3)


def test_a_buffer_of_a_plain_module_can_be_parametrized() -> None:
    holder = nn.Module()
    holder.register_buffer("scale", torch.tensor([-1.0, 0.5, 2.0]))
    constrain(holder, "scale", min=0.1)
    assert holder.scale.tolist() == pytest.approx([0.1, 0.5, 2.0])
    assert "parametrizations.scale.original" in holder.state_dict()
    with torch.no_grad():
        raw(holder, "scale").fill_(-3.0)
    hard_project(holder)
    assert raw(holder, "scale").tolist() == pytest.approx([0.1] * 3)


@pytest.mark.parametrize("name", ["running_mean", "running_var"])
def test_parametrizing_a_running_statistic_is_refused_and_changes_nothing(name: str) -> None:
    # BatchNorm updates its running statistics in place: through a parametrization it
    # would update a temporary copy, and the statistic would silently stop changing.
    norm = nn.BatchNorm1d(3)
    before = norm.state_dict()
    with pytest.raises(ValueError, match=f"BatchNorm1d.{name}: .*in place.*parametrize=False"):
        constrain(norm, name, 0, 10)
    assert type(norm) is nn.BatchNorm1d and norm.state_dict().keys() == before.keys()


def test_running_statistics_keep_updating_and_stay_in_the_set_with_parametrize_false() -> None:
    torch.manual_seed(0)
    constrained = constrain(nn.BatchNorm1d(3), "running_var", 0, 2.0, parametrize=False)
    plain = nn.BatchNorm1d(3)
    for _ in range(5):
        batch = torch.randn(64, 3) * 2 + 1
        constrained(batch)
        plain(batch)
        hard_project(constrained)
    expected = plain.running_var.clamp(0, 2.0)
    assert not torch.equal(constrained.running_var, torch.ones(3))  # it moved
    assert bool((constrained.running_var <= 2.0).all())
    assert float(plain.running_var.max()) > 2.0  # the set was binding
    assert torch.allclose(constrained.running_var, expected, atol=0.5)


@pytest.mark.parametrize(
    ("module", "name"),
    [
        (nn.Conv2d(2, 3, 3), "weight"),
        (nn.Embedding(5, 4), "weight"),
        (nn.LayerNorm(4), "bias"),
        (nn.GRU(3, 4), "weight_hh_l0"),
        (nn.MultiheadAttention(4, 2), "in_proj_weight"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else v,
)
def test_works_on_any_module_type(module: nn.Module, name: str) -> None:
    with torch.no_grad():
        getattr(module, name).normal_(0, 2)
    constrain(module, name, -0.5, 0.5)
    assert getattr(module, name).abs().max() <= 0.5
    module.zero_grad()
    hard_project(module)
    assert raw(module, name).abs().max() <= 0.5


def test_straight_through_keeps_values_and_passes_gradients() -> None:
    plain = constrain(linear(), "weight", -1, 1)
    through = constrain(linear(), "weight", -1, 1, straight_through=True)
    assert through.parametrizations.weight[0].straight_through
    assert "straight_through=True" in repr(through.parametrizations.weight[0])
    # Push some raw weights outside the range (as an optimizer step does).
    for layer in (plain, through):
        with torch.no_grad():
            raw(layer).mul_(3)
    assert torch.equal(plain.weight, through.weight)
    x = torch.randn(8, 4)
    for layer in (plain, through):
        layer(x).square().sum().backward()
    outside = raw(plain).detach().abs() > 1
    assert outside.any()
    assert (raw(plain).grad[outside] == 0).all()
    assert (raw(through).grad[outside] != 0).all()
    assert torch.equal(raw(plain).grad[~outside], raw(through).grad[~outside])


# --------------------------------------------------------------------------- stacking
def test_constraints_of_different_classes_stack_in_registration_order() -> None:
    layer = constrain(linear(), "weight", NonNeg())
    constrain(layer, "weight", Box(max=0.5))
    assert [type(c) for _, c in named_constraints(layer)] == [NonNeg, Box]
    assert layer.weight.min() == 0 and layer.weight.max() == 0.5
    assert raw(layer).min() == 0 and raw(layer).max() == 0.5  # raw projected through both


def test_constraining_again_with_the_same_class_is_an_error_that_changes_nothing() -> None:
    layer = constrain(linear(), "weight", -1, 1)
    state = copy.deepcopy(layer.state_dict())
    with pytest.raises(
        ValueError, match=r"Linear\.weight is already constrained by Box\(min=-1\.0"
    ):
        constrain(layer, "weight", -2, 2)
    assert len(layer.parametrizations.weight) == 1
    assert all(torch.equal(state[k], v) for k, v in layer.state_dict().items())


# --------------------------------------------------------------------------- bad input
def _assert_unchanged(layer: nn.Linear, before: dict[str, torch.Tensor]) -> None:
    assert not parametrize.is_parametrized(layer)
    after = layer.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((2, 1), {}, ValueError, "Linear.weight: min must be <= max, got min=2.0, max=1.0"),
        ((float("nan"), 1), {}, ValueError, "Linear.weight: min must not be NaN, got nan"),
        ((None, None), {}, ValueError, "Linear.weight: Box needs at least one bound"),
        ((torch.tensor([0.0, 2.0]), 1.0), {}, ValueError, "min=2.0 > max=1.0 at (1,)"),
        (
            (torch.zeros(5), None),
            {},
            ValueError,
            "min of shape (5,) does not broadcast to the tensor's shape (3, 4)",
        ),
        (
            (torch.zeros(3, 1, device="meta"), None),
            {},
            ValueError,
            "min is on meta but the tensor is on cpu",
        ),
        (
            ([0.0], 1.0),
            {},
            TypeError,
            "Linear.weight: min must be a number, a tensor or None, got [0.0]",
        ),
        ((Box(0, 1), 2.0), {}, TypeError, "pass either a constraint or bounds"),
        (
            (0, 1),
            {"name": "weigth"},
            ValueError,
            "Linear has no parameter or buffer named 'weigth'; it has: weight, bias",
        ),
        ((0, 1), {"name": "fc.weight"}, ValueError, "Linear has no submodule 'fc'"),
    ],
)
def test_bad_input_raises_a_clear_error_and_changes_nothing(
    args: tuple[object, ...], kwargs: dict[str, str], error: type[Exception], message: str
) -> None:
    layer = linear()
    before = copy.deepcopy(layer.state_dict())
    with pytest.raises(error, match=re.escape(message)):
        constrain(layer, kwargs.get("name", "weight"), *args)  # type: ignore[arg-type]
    _assert_unchanged(layer, before)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_non_floating_tensors_are_rejected(dtype: torch.dtype) -> None:
    module = nn.Module()
    module.register_buffer("counts", torch.zeros(3, dtype=dtype))
    with pytest.raises(
        TypeError,
        match=f"Module.counts: only floating-point tensors can be constrained, got dtype {dtype}",
    ):
        constrain(module, "counts", 0, 1)
    assert not parametrize.is_parametrized(module)


def test_arguments_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match=r"expected an nn\.Module, got Tensor"):
        constrain(torch.zeros(2), "weight", 0, 1)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="expected a tensor name"):
        constrain(linear(), 0, 0, 1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- removal
@pytest.mark.parametrize("leave", [True, False])
def test_pytorch_remove_parametrizations_works(leave: bool) -> None:
    layer = linear()
    weight = layer.weight
    constrain(layer, "weight", -1, 1)
    with torch.no_grad():
        weight.mul_(2)  # raw now differs from the forward value
    forward_value, raw_value = layer.weight.detach().clone(), weight.detach().clone()
    parametrize.remove_parametrizations(layer, "weight", leave_parametrized=leave)
    assert type(layer) is nn.Linear and layer.weight is weight
    assert torch.equal(layer.weight.detach(), forward_value if leave else raw_value)


@pytest.mark.parametrize("leave", [True, False])
def test_unconstrain_one_tensor(leave: bool) -> None:
    layer = constrain(linear(), "weight", -1, 1)
    constrain(layer, "bias", -0.1, 0.1)
    weight = raw(layer)
    with torch.no_grad():
        weight.mul_(2)
    forward_value, raw_value = layer.weight.detach().clone(), weight.detach().clone()
    assert unconstrain(layer, "weight", leave_constrained=leave) is layer
    assert layer.weight is weight
    assert torch.equal(weight.detach(), forward_value if leave else raw_value)
    assert [n for n, _ in named_constraints(layer)] == ["bias"]


def test_unconstrain_the_whole_tree_restores_plain_modules() -> None:
    model = nn.Sequential(linear(), nn.ReLU(), linear(1))
    params = list(model.parameters())
    constrain_all(model, -0.5, 0.5)
    hard_project(model)  # packs the tensors: removal must give them their storage back
    unconstrain(model)
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]
    assert list(model.parameters()) == params
    for p in params:
        assert p.untyped_storage().nbytes() == p.numel() * p.element_size()
    assert list(named_constraints(model)) == []


def test_unconstrain_keeps_other_parametrizations() -> None:
    layer = linear()
    constrain(layer, "weight", -1, 1)
    parametrize.register_parametrization(layer, "weight", Double())
    value = layer.weight.detach().clone()
    unconstrain(layer, "weight")
    assert [type(p) for p in layer.parametrizations.weight] == [Double]
    assert torch.equal(layer.weight, value)


def test_unconstrain_after_a_foreign_parametrization_uses_its_right_inverse() -> None:
    layer = linear()
    parametrize.register_parametrization(layer, "weight", Double())
    constrain(layer, "weight", -1, 1)
    value = layer.weight.detach().clone()
    assert value.abs().max() == 1
    unconstrain(layer, "weight", leave_constrained=True)
    assert [type(p) for p in layer.parametrizations.weight] == [Double]
    assert torch.allclose(layer.weight, value)


def test_unconstrain_that_cannot_keep_values_changes_nothing() -> None:
    layer = linear()
    parametrize.register_parametrization(layer, "weight", Shift())
    constrain(layer, "weight", -1, 1)
    with pytest.raises(ValueError, match="pass leave_constrained=False"):
        unconstrain(layer, "weight", leave_constrained=True)
    assert [type(p) for p in layer.parametrizations.weight] == [Shift, Box]
    unconstrain(layer, "weight", leave_constrained=False)
    assert [type(p) for p in layer.parametrizations.weight] == [Shift]


def test_unconstrain_a_tensor_that_is_not_constrained() -> None:
    with pytest.raises(ValueError, match=r"Linear\.weight is not constrained by torch_constraints"):
        unconstrain(linear(), "weight")


# --------------------------------------------------------------------------- constrain_all
def critic() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 1)
    )


def test_constrain_all_defaults_to_every_floating_point_parameter() -> None:
    model = critic()
    model.register_buffer("steps", torch.zeros((), dtype=torch.int64))
    model.register_parameter(
        "count", nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)
    )
    names = constrain_all(model, -0.01, 0.01)
    assert names == [n for n, p in critic().named_parameters()]
    assert all(p.abs().max() <= 0.01 for n, p in model.named_parameters() if p.is_floating_point())


@pytest.mark.parametrize(
    ("include", "expected"),
    [
        ((nn.Linear,), ["2.weight", "2.bias", "4.weight", "4.bias"]),
        (nn.Conv1d, ["0.weight", "0.bias"]),
        ({"weight"}, ["0.weight", "2.weight", "3.weight", "4.weight"]),
        ("bias", ["0.bias", "2.bias", "3.bias", "4.bias"]),
        (["4.weight", "0.bias"], ["0.bias", "4.weight"]),
        (lambda q, m, n: n == "weight" and isinstance(m, nn.Linear), ["2.weight", "4.weight"]),
    ],
    ids=["classes", "one class", "names", "one name", "qualified names", "predicate"],
)
def test_constrain_all_include(include: object, expected: list[str]) -> None:
    model = critic()
    assert constrain_all(model, -1, 1, include=include) == expected  # type: ignore[arg-type]
    assert [n for n, _ in named_constraints(model)] == expected


def test_constrain_all_with_a_constraint_gives_each_tensor_its_own_copy() -> None:
    model = critic()
    template = NonNeg()
    constrain_all(model, template, include={"weight"})
    found = [c for _, c in named_constraints(model)]
    assert len({id(c) for c in found}) == 4 and template not in found


def test_constrain_all_is_atomic() -> None:
    model = critic()
    before = copy.deepcopy(model.state_dict())
    # The bound fits the Linear(3, 1) weight (1, 3) but not the others.
    with pytest.raises(
        ValueError, match=r"2\.weight \(Linear\): max of shape \(1, 3\) does not broadcast"
    ):
        constrain_all(model, max=torch.ones(1, 3), include={"4.weight", "2.weight"})
    assert list(named_constraints(model)) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_constrain_all_twice_is_an_error_that_changes_nothing() -> None:
    model = critic()
    constrain_all(model, -1, 1, include={"weight"})
    with pytest.raises(ValueError, match="already constrained"):
        constrain_all(model, -1, 1)
    assert len(list(named_constraints(model))) == 4


def test_constrain_all_errors() -> None:
    with pytest.raises(
        ValueError, match=r"no floating-point parameter of Sequential matches include=\{'nope'\}"
    ):
        constrain_all(critic(), -1, 1, include={"nope"})
    with pytest.raises(
        TypeError, match="include must be module classes, tensor names, or a predicate"
    ):
        constrain_all(critic(), -1, 1, include=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Sequential: min must be <= max"):
        constrain_all(critic(), 1, -1)


def test_constrain_all_stacks_on_tensors_parametrized_elsewhere() -> None:
    model = nn.Sequential(nn.utils.parametrizations.weight_norm(linear()))
    names = constrain_all(model, -0.5, 0.5, include={"weight"})
    assert names == ["0.weight"]
    assert model[0].weight.abs().max() <= 0.5


# --------------------------------------------------------------------------- named_constraints
def test_named_constraints_lists_stacks_in_order() -> None:
    model = nn.Sequential(linear(), linear(1))
    constrain(model, "1.weight", NonNeg())
    constrain(model, "1.weight", Box(max=0.1))
    constrain(model, "0.bias", -1, 1)
    assert [(n, type(c).__name__) for n, c in named_constraints(model)] == [
        ("0.bias", "Box"),
        ("1.weight", "NonNeg"),
        ("1.weight", "Box"),
    ]


# --------------------------------------------------------------------------- copies and state
def test_state_dict_round_trip_into_a_freshly_constrained_model_is_exact() -> None:
    hi = torch.tensor([[0.5], [1.0], [2.0]])
    source = constrain(linear(), "weight", -hi, hi)
    with torch.no_grad():
        raw(source).mul_(0.3)
    target = constrain(linear(5), "weight", -hi, hi)
    target.load_state_dict(source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)
    assert torch.equal(target.weight, source.weight)


def test_deepcopy_of_a_constrained_model() -> None:
    model = nn.Sequential(linear(), nn.ReLU(), nn.Linear(3, 2))
    constrain_all(model, -0.5, 0.5)
    hard_project(model)
    clone = copy.deepcopy(model)
    assert [n for n, _ in named_constraints(clone)] == [n for n, _ in named_constraints(model)]
    x = torch.randn(2, 4)
    assert torch.equal(model(x), clone(x))
    assert raw(clone[0]) is not raw(model[0])
    assert torch.equal(raw(clone[0]), raw(model[0]))


# --------------------------------------------------------------------- refusals (issue 11)
class SymmetricForTest(Constraint):
    """Symmetric matrices: only square weights can take it."""

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return (x + x.mT) / 2


@pytest.mark.parametrize("parametrize", [True, False])
def test_constrain_all_is_atomic_when_the_constraint_fails_on_a_tensor(parametrize: bool) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"^1\.weight \(Linear\): SymmetricForTest\(\) cannot"):
        constrain_all(model, SymmetricForTest(), include={"weight"}, parametrize=parametrize)
    assert not hasattr(model[0], "parametrizations")
    assert list(named_constraints(model)) == []
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "name", ["0.parametrizations.weight.original", "0.parametrizations.weight.0.min"]
)
def test_internal_names_are_refused_naming_the_public_one(name: str) -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    constrain(model, "0.weight", Box(min=-torch.ones(2, 1), max=torch.ones(2, 1)))
    with pytest.raises(ValueError, match=r"constrain the tensor by its public name, '0\.weight'"):
        constrain(model, name, -0.1, 0.1)
    with pytest.raises(ValueError, match="part of a parametrization"):
        constrain(model[0].parametrizations.weight, "original", -0.1, 0.1)
    assert len(model[0].parametrizations.weight) == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: hard_project("m"), r"hard_project: expected an nn\.Module, got str"),
        (lambda: unconstrain("m"), r"unconstrain: expected an nn\.Module, got str"),
        (lambda: named_constraints(3), r"named_constraints: expected an nn\.Module, got int"),
        (lambda: constrain([], "w", 0, 1), r"constrain: expected an nn\.Module, got list"),
        (
            lambda: constrain_all(nn.Linear(2, 2), 0, 1, include=nn.Linear(2, 2)),
            r"include takes module classes, such as nn\.Linear, not module instances",
        ),
        (
            lambda: constrain_all(torch.jit.script(nn.Linear(2, 2)), 0, 1),
            r"constrain_all: TorchScript modules cannot carry constraints",
        ),
        (
            lambda: constrain(nn.Linear(2, 2), "weight", 0, 1, straight_through="no"),
            r"straight_through must be True or False, got 'no'",
        ),
        (
            lambda: constrain(nn.Linear(2, 2), "weight", 0, 1, parametrize=1),
            r"parametrize must be True or False, got 1",
        ),
    ],
    ids=["hard_project", "unconstrain", "named", "constrain", "instance", "script", "st", "mode"],
)
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_bad_arguments_get_a_type_error_naming_them(call: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        call()


def test_a_sparse_parameter_is_refused_clearly() -> None:
    module = nn.Module()
    module.w = nn.Parameter(torch.eye(3).to_sparse())
    with pytest.raises(TypeError, match=r"Module\.w: only dense \(strided\) tensors"):
        constrain(module, "w", -1, 1)


@pytest.mark.parametrize("step", ["constrain", "unconstrain", "assign"])
def test_registration_removal_and_assignment_keep_the_raw_storage(step: str) -> None:
    """Aliases of the raw tensor taken before follow it (PyTorch's set_ would not)."""
    layer = nn.Linear(4, 4)
    if step != "constrain":
        constrain(layer, "weight", -0.1, 0.1)
    weight = layer.weight if step == "constrain" else raw(layer)
    alias, pointer = weight.detach(), weight.data_ptr()
    if step == "constrain":
        constrain(layer, "weight", -0.1, 0.1)
    elif step == "assign":
        assigned = torch.full((4, 4), 3.0)
        layer.weight = assigned
        assert assigned.data_ptr() != pointer  # the value is copied, not aliased
    else:
        unconstrain(layer, "weight", leave_constrained=True)
    assert weight.data_ptr() == pointer and alias.data_ptr() == pointer
    assert bool(alias.abs().max() <= 0.1)


def test_a_missing_submodule_error_lists_the_submodules_that_exist() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(
        ValueError, match=r"no submodule 'fc'.*of the root \(Sequential\) are: 0, 1"
    ):
        constrain(model, "fc.weight", -1, 1)
    with pytest.raises(ValueError, match=r"no submodule '1\.fc'.*of 1 \(Sequential\) are: 0$"):
        constrain(model, "1.fc.weight", -1, 1)


# --------------------------------------------------------------------------- project_now
@pytest.mark.parametrize("parametrized", [True, False])
def test_project_now_false_leaves_the_stored_values_until_the_first_projection(
    parametrized: bool,
) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    with torch.no_grad():
        layer.weight.mul_(10)
    weight = layer.weight
    before = weight.detach().clone()
    pointer = weight.data_ptr()
    constrain(layer, "weight", MaxNorm(0.25, dim=0), parametrize=parametrized, project_now=False)
    assert raw(layer, "weight") is weight and weight.data_ptr() == pointer
    assert torch.equal(weight.detach(), before)  # the stored values, as they were
    if parametrized:  # the forward pass sees the projection at once
        assert torch.linalg.vector_norm(layer.weight, dim=1).max() <= 0.25 * (1 + 1e-6)
    hard_project(layer)
    assert torch.linalg.vector_norm(weight.detach(), dim=1).max() <= 0.25 * (1 + 1e-6)


def test_project_now_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="project_now must be True or False, got 0"):
        constrain(nn.Linear(2, 2), "weight", -1, 1, project_now=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("parametrized", [True, False])
def test_registration_applies_min_max_norm_in_full_whatever_its_rate(parametrized: bool) -> None:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.8, 0.0], [0.0, 7.8]]))
    constrain(layer, "weight", MinMaxNorm(0.5, 1.0, rate=0.5), parametrize=parametrized)
    norms = torch.linalg.vector_norm(raw(layer, "weight").detach(), dim=1)
    assert torch.allclose(norms, torch.ones(2))


def test_stacked_constraints_apply_in_registration_order() -> None:
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, -4.0, 0.0], [0.1, 0.2, -0.3]]))
    constrain(layer, "weight", NonNeg())
    constrain(layer, "weight", MaxNorm(1.0))
    expected = MaxNorm(1.0).project(
        NonNeg().project(torch.tensor([[3.0, -4.0, 0.0], [0.1, 0.2, -0.3]]))
    )
    assert torch.equal(layer.weight, expected)
    assert torch.equal(layer.parametrizations.weight.original, expected)
    # Each set in turn is not the projection onto the intersection in general:
    # here it is (the sets commute), and the result is in both.
    assert (expected >= 0).all() and (expected.norm(dim=1) <= 1 + 1e-6).all()
