"""Checkpoints: plain → constrained loading, exact round trips, the format, plain export."""

from __future__ import annotations

import copy
import doctest
import io
import math
import pickle
import re
from collections.abc import Callable

import pytest
import torch
from helpers import Double, Shift, raw
from torch import nn
from torch.nn.utils import parametrize

import torch_constraints.checkpoint
from torch_constraints import (
    CHECKPOINT_FORMAT,
    Box,
    PackedProjection,
    checkpoint,
    constrain,
    constrain_all,
    hard_project,
    plain_state_dict,
    unconstrain,
)
from torch_constraints._rounding import inward_scalar


def net(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.LayerNorm(3))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)  # many values outside the bounds below
    return model.to(dtype)


def constrained(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    model = net(seed, dtype)
    constrain_all(model, -0.5, 0.5, include=(nn.Linear,))
    return model


def clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state.items()}


def through_bytes(obj: object) -> object:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer)


# --------------------------------------------------------------------- plain → constrained
def test_a_plain_checkpoint_loads_into_the_constrained_model_and_is_projected() -> None:
    plain = net(seed=1)
    state = plain.state_dict()
    before = clone_state(state)
    model = constrained(seed=0)
    weight = raw(model[0])
    result = model.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert raw(model[0]) is weight  # loaded in place
    for i in (0, 2):
        for name in ("weight", "bias"):
            expected = getattr(plain[i], name).detach().clamp(-0.5, 0.5)
            assert torch.equal(raw(model[i], name).detach(), expected)
            assert torch.equal(getattr(model[i], name), expected)
    assert torch.equal(model[3].weight, plain[3].weight)  # unconstrained tensors: as they were
    # the caller's state_dict is untouched: same keys, same values
    assert list(state) == list(before)
    assert all(torch.equal(state[k], before[k]) for k in state)


def test_plain_values_are_projected_in_the_dtype_they_are_stored_in() -> None:
    # float32(0.05) > 0.05: projecting the float64 checkpoint value and then
    # rounding it to float32 would store a value outside the set.
    model = nn.Linear(3, 2)
    constrain(model, "weight", -0.05, 0.05)
    state = {"weight": torch.ones(2, 3, dtype=torch.float64), "bias": torch.zeros(2)}
    model.load_state_dict(state)
    stored = raw(model).detach()
    assert stored.dtype == torch.float32
    assert (stored.double() <= 0.05).all()
    assert torch.equal(stored, torch.full((2, 3), inward_scalar(0.05, torch.float32, lower=False)))


def test_a_plain_checkpoint_keeps_the_models_tensor_bounds() -> None:
    model = nn.Linear(3, 4)
    upper = torch.tensor([[0.1], [0.2], [0.3], [0.4]])
    constrain(model, "weight", Box(min=-upper, max=upper))
    value = torch.full((4, 3), 9.0)
    model.load_state_dict({"weight": value, "bias": torch.zeros(4)}, strict=True)
    assert torch.equal(raw(model).detach(), upper.expand(4, 3))
    assert torch.equal(model.parametrizations.weight[0].max, upper)


def test_a_constraint_stacked_on_another_parametrization_loads_through_both() -> None:
    layer = nn.Linear(3, 2)
    parametrize.register_parametrization(layer, "weight", Double())
    constrain(layer, "weight", -1, 1)
    value = torch.tensor([[3.0, 0.5, -2.0], [0.25, -0.5, 1.5]])
    layer.load_state_dict({"weight": value, "bias": torch.zeros(2)})
    assert torch.equal(layer.weight, value.clamp(-1, 1))
    assert torch.equal(raw(layer).detach(), value.clamp(-1, 1) / 2)


def test_a_parametrization_without_right_inverse_is_reported() -> None:
    layer = nn.Linear(3, 2)
    parametrize.register_parametrization(layer, "weight", Shift())
    constrain(layer, "weight", -1, 1)
    with pytest.raises(RuntimeError, match=r"weight: cannot store .*Shift has no right_inverse"):
        layer.load_state_dict({"weight": torch.zeros(2, 3), "bias": torch.zeros(2)})


def test_a_plain_value_of_the_wrong_shape_is_reported_with_both_shapes() -> None:
    model = constrained()
    state = net().state_dict()
    state["0.weight"] = torch.zeros(5, 4)
    before = raw(model[0]).detach().clone()
    message = re.escape("size mismatch for 0.weight: copying a param with shape (5, 4)")
    with pytest.raises(RuntimeError, match=message + r".*current model is \(6, 4\)"):
        model.load_state_dict(state)
    assert torch.equal(raw(model[0]).detach(), before)


# --------------------------------------------------------------------- strict
def test_strict_still_reports_keys_that_are_really_missing_or_unexpected() -> None:
    state = net().state_dict()
    del state["2.weight"]
    state["2.extra"] = torch.zeros(1)
    model = constrained()
    with pytest.raises(RuntimeError) as info:
        model.load_state_dict(state)
    message = str(info.value)
    assert 'Missing key(s) in state_dict: "2.parametrizations.weight.original"' in message
    assert 'Unexpected key(s) in state_dict: "2.extra"' in message
    result = constrained().load_state_dict(state, strict=False)
    assert result.missing_keys == ["2.parametrizations.weight.original"]
    assert result.unexpected_keys == ["2.extra"]


def test_both_forms_of_one_tensor_leave_the_plain_key_unexpected() -> None:
    state = constrained(seed=1).state_dict()
    state["0.weight"] = torch.zeros(6, 4)
    result = constrained().load_state_dict(state, strict=False)
    assert result.unexpected_keys == ["0.weight"]
    with pytest.raises(RuntimeError, match=r'Unexpected key.*"0\.weight"'):
        constrained().load_state_dict(state)


def test_a_constrained_checkpoint_without_its_bounds_reports_them_missing() -> None:
    model = constrain(nn.Linear(3, 2), "weight", Box(min=-torch.ones(2, 1), max=torch.ones(2, 1)))
    state = model.state_dict()
    del state["parametrizations.weight.0.max"]
    with pytest.raises(RuntimeError, match=r'Missing key.*"parametrizations\.weight\.0\.max"'):
        model.load_state_dict(state)


# --------------------------------------------------------------------- constrained → constrained
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_a_constrained_round_trip_is_exact(dtype: torch.dtype) -> None:
    source = net(seed=1, dtype=dtype)
    upper = torch.linspace(0.1, 0.6, 6).unsqueeze(1)
    constrain(source[0], "weight", Box(min=-upper, max=upper))
    constrain(source[2], "weight", -0.3, 0.3, straight_through=True)
    constrain(source[3], "bias", min=0.0)
    with torch.no_grad():  # straight-through raw values may lie outside the set: keep them
        raw(source[2]).fill_(7.0)
    state = through_bytes(source.state_dict())
    assert isinstance(state, dict)
    target = net(seed=2, dtype=dtype)
    constrain(target[0], "weight", Box(min=-torch.ones(6, 1), max=torch.ones(6, 1)))
    constrain(target[2], "weight", -0.3, 0.3, straight_through=True)
    constrain(target[3], "bias", min=0.0)
    target.load_state_dict(state)
    for (key, a), (key_b, b) in zip(
        source.state_dict().items(), target.state_dict().items(), strict=True
    ):
        assert key == key_b
        assert a.dtype == b.dtype and torch.equal(a, b), key
    assert raw(target[2]).eq(7.0).all()
    bound = target[0].parametrizations.weight[0].max
    assert bound is not None and torch.equal(bound, source[0].parametrizations.weight[0].max)
    assert bound.dtype == dtype and not bound.eq(1).any()


def test_assign_rebinds_parameters_and_hard_project_follows_them() -> None:
    model = constrained()
    hard_project(model)  # builds and caches a plan on the old parameters
    old = raw(model[0])
    source = constrained(seed=3)
    model.load_state_dict(source.state_dict(), assign=True)
    new = raw(model[0])
    assert new is not old and torch.equal(new, raw(source[0]))
    assert isinstance(new, nn.Parameter) and new.requires_grad
    with torch.no_grad():
        new.fill_(4.0)
        old.fill_(4.0)
    hard_project(model)
    assert new.eq(inward_scalar(0.5, torch.float32, lower=False)).all()
    assert old.eq(4.0).all()  # the old parameter is no longer part of the model


def test_assign_with_a_plain_checkpoint_stores_projected_values() -> None:
    model = constrained()
    state = net(seed=4).state_dict()
    model.load_state_dict(state, assign=True)
    assert torch.equal(raw(model[0]).detach(), state["0.weight"].clamp(-0.5, 0.5))
    assert not raw(model[0]).detach().equal(state["0.weight"])  # the caller's tensor is not touched
    assert isinstance(raw(model[0]), nn.Parameter)


def test_loading_into_packed_parameters_keeps_them_packed_and_in_place() -> None:
    model = constrained()
    PackedProjection(model)()
    params = list(model.parameters())
    storages = {p.untyped_storage().data_ptr() for p in params if p.dim() > 0}
    model.load_state_dict(net(seed=5).state_dict())
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    assert {p.untyped_storage().data_ptr() for p in params if p.dim() > 0} == storages
    hard_project(model)
    assert all(raw(model[i]).abs().max() <= 0.5 for i in (0, 2))


def test_a_wrapper_prefix_is_handled() -> None:
    inner = constrained()
    outer = nn.ModuleDict({"model": inner})
    state = {f"model.{k}": v for k, v in net(seed=6).state_dict().items()}
    outer.load_state_dict(state)
    assert torch.equal(inner[0].weight, state["model.0.weight"].clamp(-0.5, 0.5))


# --------------------------------------------------------------------- format
def test_the_format_is_written_for_every_constrained_module() -> None:
    model = constrained()
    metadata = model.state_dict()._metadata  # type: ignore[attr-defined]
    assert metadata["0"]["torch_constraints"] == CHECKPOINT_FORMAT == 1
    assert metadata["2"]["torch_constraints"] == CHECKPOINT_FORMAT
    assert "torch_constraints" not in metadata["3"]  # not constrained
    assert "torch_constraints" not in metadata[""]


def test_a_newer_format_is_refused_with_a_message_to_upgrade() -> None:
    state = constrained().state_dict()
    state._metadata["2"]["torch_constraints"] = CHECKPOINT_FORMAT + 1  # type: ignore[attr-defined]
    model = constrained(seed=1)
    with pytest.raises(ValueError, match=r"^2: the checkpoint was written in .* format 2"):
        model.load_state_dict(state)
    with pytest.raises(ValueError, match="upgrade torch-constraints"):
        model.load_state_dict(state, strict=False)


def test_a_checkpoint_without_metadata_loads() -> None:
    source = constrained(seed=1)
    state = dict(source.state_dict())  # a plain dict has no _metadata
    model = constrained()
    model.load_state_dict(state)
    assert torch.equal(raw(model[0]), raw(source[0]))


def test_unconstrain_removes_the_hooks() -> None:
    layer = constrain(nn.Linear(2, 2), "weight", -1, 1)
    constrain(layer, "bias", -1, 1)
    fresh = nn.Linear(2, 2)
    unconstrain(layer, "weight")
    assert len(layer._load_state_dict_pre_hooks) == 1
    unconstrain(layer)
    assert len(layer._load_state_dict_pre_hooks) == len(fresh._load_state_dict_pre_hooks)
    assert len(layer._state_dict_hooks) == len(fresh._state_dict_hooks)
    assert "torch_constraints" not in layer.state_dict()._metadata[""]  # type: ignore[attr-defined]


def test_constraining_twice_registers_the_hooks_once() -> None:
    layer = constrain(nn.Linear(2, 2), "weight", -1, 1)
    constrain(layer, "bias", -1, 1)
    assert len(layer._load_state_dict_pre_hooks) == 1
    assert len(layer._state_dict_hooks) == 1


def test_a_deep_copy_loads_into_itself_only() -> None:
    model = constrained()
    twin = copy.deepcopy(model)
    state = net(seed=7).state_dict()
    twin.load_state_dict(state)
    assert torch.equal(twin[0].weight, state["0.weight"].clamp(-0.5, 0.5))
    assert not torch.equal(model[0].weight, twin[0].weight)


# --------------------------------------------------------------------- plain export
def test_plain_state_dict_loads_strictly_into_the_unconstrained_model() -> None:
    model = constrained()
    upper = torch.linspace(0.1, 0.6, 6).unsqueeze(1)
    unconstrain(model[0], "weight")
    constrain(model[0], "weight", Box(min=-upper, max=upper))
    exported = plain_state_dict(model)
    target = net(seed=9)
    assert set(exported) == set(target.state_dict())
    target.load_state_dict(exported, strict=True)
    for i in (0, 2):
        for name in ("weight", "bias"):
            assert torch.equal(getattr(target[i], name), getattr(model[i], name))
    assert torch.equal(target[3].weight, model[3].weight)
    assert (target[0].weight.abs() <= upper).all()
    metadata = exported._metadata  # type: ignore[attr-defined]
    assert set(metadata) == set(target.state_dict()._metadata)  # type: ignore[attr-defined]
    assert all("torch_constraints" not in entry for entry in metadata.values())


def test_plain_state_dict_values_never_alias_packed_parameters() -> None:
    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(4)])
    constrain_all(model, -0.05, 0.05)
    PackedProjection(model)()
    exported = plain_state_dict(model[0])
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert all(v.untyped_storage().data_ptr() not in storages for v in exported.values())
    assert torch.equal(exported["weight"], model[0].weight)
    # so a sub-module's export is written compactly (a view would save the whole pack)
    assert len(through_bytes_size(exported)) < 2 * 65 * 64 * 4


def through_bytes_size(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_plain_state_dict_keeps_other_parametrizations_and_applies_the_whole_chain() -> None:
    layer = nn.Linear(3, 2)
    parametrize.register_parametrization(layer, "weight", Double())
    constrain(layer, "weight", -1, 1)
    other = nn.Linear(3, 2)
    parametrize.register_parametrization(other, "weight", Double())
    constrain(other, "bias", -0.1, 0.1)
    exported = plain_state_dict(nn.ModuleList([layer, other]))
    assert torch.equal(exported["0.weight"], layer.weight)
    assert "1.parametrizations.weight.original" in exported
    assert torch.equal(exported["1.bias"], other.bias)
    assert "1.parametrizations" in exported._metadata  # type: ignore[attr-defined]
    assert "0.parametrizations" not in exported._metadata  # type: ignore[attr-defined]


def test_plain_state_dict_takes_a_prefix_and_rejects_non_modules() -> None:
    exported = plain_state_dict(constrained(), prefix="net.")
    assert "net.0.weight" in exported and "net" in exported._metadata  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match=r"plain_state_dict: expected an nn\.Module, got dict"):
        plain_state_dict({})  # type: ignore[arg-type]


def test_the_examples_run() -> None:
    result = doctest.testmod(torch_constraints.checkpoint, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------- atomic refusals
def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} was written"


def rooted(seed: int = 0, **kwargs: object) -> nn.Sequential:
    """``constrained()``, with the root hook that registration is to attach."""
    model = net(seed)
    constrain_all(model, -0.5, 0.5, include=(nn.Linear,), **kwargs)  # type: ignore[arg-type]
    checkpoint.attach_root(model)
    return model


def bounded(seed: int = 0) -> nn.Sequential:
    """Linear layers whose weights have tensor bounds (one per output unit)."""
    model = net(seed)
    for index, rows in ((0, 6), (2, 3)):
        upper = torch.linspace(0.1, 0.6, rows).unsqueeze(1)
        constrain(model, f"{index}.weight", Box(-upper, upper))
    checkpoint.attach_root(model)
    return model


def a_new_state(model_factory: Callable[[int], nn.Module]) -> dict[str, torch.Tensor]:
    state = model_factory(5).state_dict()
    for value in state.values():
        value.add_(0.25)  # every tensor differs from the target's (and bounds stay ordered)
    return state


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (
            2,
            r"^2: the checkpoint was written in torch-constraints checkpoint format 2, but "
            r"this release reads formats up to 1; upgrade torch-constraints",
        ),
        (
            "1",
            r"^2: the torch-constraints checkpoint format must be an int in \{1\}, got '1' \(str\)",
        ),
        (1.0, r"format must be an int in \{1\}, got 1\.0 \(float\)"),
        (0, r"format must be an int in \{1\}, got 0 \(int\)"),
        (-1, r"format must be an int in \{1\}, got -1 \(int\)"),
        (True, r"format must be an int in \{1\}, got True \(bool\)"),
    ],
)
@pytest.mark.parametrize("strict", [True, False])
def test_a_refused_format_writes_nothing(version: object, message: str, strict: bool) -> None:
    state = a_new_state(rooted)
    state._metadata["2"]["torch_constraints"] = version  # type: ignore[attr-defined]
    model = rooted()
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        model.load_state_dict(state, strict=strict)
    assert_unchanged(model, before)


@pytest.mark.parametrize("version", ["absent", None, 1])
def test_the_known_format_or_none_loads(version: object) -> None:
    source = rooted(seed=5)
    state = source.state_dict()
    if version == "absent":
        del state._metadata["2"]["torch_constraints"]  # type: ignore[attr-defined]
    else:
        state._metadata["2"]["torch_constraints"] = version  # type: ignore[attr-defined]
    model = rooted()
    model.load_state_dict(state)
    assert_unchanged(model, snapshot(source))


@pytest.mark.parametrize(
    ("key", "value", "error", "message"),
    [
        (
            "2.parametrizations.weight.0.min",
            torch.full((3, 1), 0.75),
            ValueError,
            r"^2\.parametrizations\.weight\.0: min must be <= max everywhere, got min=0\.75 "
            r"> max=0\.34999\d+ at \(0, 0\)",
        ),
        (
            "2.parametrizations.weight.0.max",
            torch.full((3, 1), -0.7),
            ValueError,
            r"min must be <= max everywhere",
        ),
        (
            "2.parametrizations.weight.0.max",
            torch.tensor([[0.1], [math.nan], [0.2]]),
            ValueError,
            r"^2\.parametrizations\.weight\.0\.max: max must not contain NaN",
        ),
        (
            "2.parametrizations.weight.0.min",
            torch.full((3, 1), math.inf),
            ValueError,
            r"^2\.parametrizations\.weight\.0\.min: min must not contain inf",
        ),
        (
            "2.parametrizations.weight.0.max",
            torch.ones(4, 1),
            ValueError,
            r"^2\.parametrizations\.weight\.0\.max: the checkpoint's bound has shape \(4, 1\), "
            r"the constraint's has shape \(3, 1\)",
        ),
        (
            "2.parametrizations.weight.0.max",
            torch.ones(3, 1, dtype=torch.complex64),
            TypeError,
            r"^2\.parametrizations\.weight\.0\.max: max must be a real tensor, got dtype",
        ),
    ],
)
@pytest.mark.parametrize("strict", [True, False])
def test_tampered_tensor_bounds_are_refused_and_nothing_is_written(
    key: str, value: torch.Tensor, error: type[Exception], message: str, strict: bool
) -> None:
    state = a_new_state(bounded)
    state[key] = value
    model = bounded()
    before = snapshot(model)
    with pytest.raises(error, match=message):
        model.load_state_dict(state, strict=strict)
    assert_unchanged(model, before)


def test_valid_tensor_bounds_from_a_checkpoint_load() -> None:
    state = a_new_state(bounded)
    model = bounded()
    model.load_state_dict(state)
    assert torch.equal(
        model[2].parametrizations.weight[0].max, state["2.parametrizations.weight.0.max"]
    )


def test_loading_into_the_constrained_layer_itself_is_atomic_without_a_root_hook() -> None:
    # constrain(layer, ...) makes the layer both the owner and the root: its own hook
    # runs before anything of it is written.
    layer = constrain(nn.Linear(3, 2), "weight", Box(-torch.ones(2, 1), torch.ones(2, 1)))
    state = layer.state_dict()
    state["bias"] = torch.full((2,), 9.0)
    state["parametrizations.weight.0.min"] = torch.full((2, 1), 2.0)
    before = snapshot(layer)
    with pytest.raises(ValueError, match=r"^parametrizations\.weight\.0: min must be <= max"):
        layer.load_state_dict(state)
    assert_unchanged(layer, before)


def test_a_box_loaded_alone_refuses_invalid_bounds() -> None:
    box = Box(-torch.ones(2), torch.ones(2))
    before = snapshot(box)
    with pytest.raises(ValueError, match=r"^Box: min must be <= max everywhere"):
        box.load_state_dict({"min": torch.full((2,), 3.0), "max": torch.ones(2)})
    assert_unchanged(box, before)


def test_a_wrapper_that_starts_the_load_still_gets_every_bound_checked_first() -> None:
    inner = bounded()
    outer = nn.ModuleDict({"model": inner})
    state = {f"model.{k}": v for k, v in a_new_state(bounded).items()}
    state["model.2.parametrizations.weight.0.min"] = torch.full((3, 1), 0.7)
    before = snapshot(outer)
    with pytest.raises(ValueError, match=r"^model\.2\.parametrizations\.weight\.0: min must be"):
        outer.load_state_dict(state)
    assert_unchanged(outer, before)


def test_loading_into_an_ancestor_of_the_root_refuses_at_the_module_it_concerns() -> None:
    # What attach_root cannot cover: the ancestor's tensors before the constrained
    # module are written; the refusal still comes, before that module is written.
    def second_only(seed: int) -> nn.Module:
        model = net(seed)
        constrain(model[2], "weight", -0.5, 0.5)  # the root given is model[2]
        return model

    model = second_only(0)
    state = a_new_state(second_only)
    state._metadata["2"]["torch_constraints"] = 2  # type: ignore[attr-defined]
    before = snapshot(model)
    with pytest.raises(ValueError, match="upgrade torch-constraints"):
        model.load_state_dict(state)
    assert torch.equal(model[0].weight, state["0.weight"])  # written: documented limitation
    assert torch.equal(raw(model[2]), before["2.parametrizations.weight.original"])


def test_the_root_hook_is_registered_once_and_survives_copies() -> None:
    model = rooted()
    checkpoint.attach_root(model)
    hooks = [getattr(h, "hook", h) for h in model._load_state_dict_pre_hooks.values()]
    assert hooks == [checkpoint._load_pre_hook]
    state = a_new_state(rooted)
    state._metadata["0"]["torch_constraints"] = 2  # type: ignore[attr-defined]
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        before = snapshot(twin)
        with pytest.raises(ValueError, match="upgrade"):
            twin.load_state_dict(state)
        assert_unchanged(twin, before)


def test_the_root_hook_checks_what_is_constrained_when_the_checkpoint_loads() -> None:
    model = rooted()
    unconstrain(model)
    state = net(seed=3).state_dict()
    state._metadata["0"]["torch_constraints"] = 2  # type: ignore[attr-defined]
    model.load_state_dict(state)  # nothing constrained any more: nothing to refuse
    assert torch.equal(model[0].weight, state["0.weight"])


def our_hooks(module: nn.Module) -> tuple[int, int]:
    """How many of this library's load pre-hooks and state_dict post-hooks ``module`` has."""
    pre = [getattr(h, "hook", h) for h in module._load_state_dict_pre_hooks.values()]
    post = [getattr(h, "hook", h) for h in module._state_dict_hooks.values()]
    return pre.count(checkpoint._load_pre_hook), post.count(checkpoint._state_dict_post_hook)


def test_an_owner_that_is_also_the_root_has_one_load_hook() -> None:
    layer = constrain(nn.Linear(2, 2), "weight", -1, 1)
    checkpoint.attach_root(layer)
    assert our_hooks(layer) == (1, 1)


def test_detach_removes_only_the_hooks_no_longer_needed() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    constrain_all(model, -1, 1, include={"weight"})
    checkpoint.attach_root(model)
    checkpoint.detach(model)  # its tree is still constrained: the root check stays
    assert our_hooks(model) == (1, 0)
    unconstrain(model, "0.weight")
    assert our_hooks(model[0]) == (0, 0) and our_hooks(model[1]) == (1, 1)
    checkpoint.detach(model[1])  # still owns a constrained tensor: keeps both
    assert our_hooks(model[1]) == (1, 1)
    unconstrain(model)
    checkpoint.detach(model)  # what unconstrain is to call on the root
    assert our_hooks(model) == (0, 0)


def test_a_wrapper_that_starts_the_load_still_refuses_a_bad_format() -> None:
    # Documented limit: PyTorch passes the metadata of other modules only to the module
    # the load starts at, so the format of model.2 is checked when model.2 is reached.
    inner = rooted()
    outer = nn.ModuleDict({"model": inner})
    state = outer.state_dict()
    state._metadata["model.2"]["torch_constraints"] = "1"  # type: ignore[attr-defined]
    before = snapshot(inner[2])
    with pytest.raises(ValueError, match=r"^model\.2: the torch-constraints checkpoint format"):
        outer.load_state_dict(state)
    assert_unchanged(inner[2], before)


def test_plain_state_dict_of_a_parametrize_false_model_is_its_state_dict() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    constrain_all(model, -0.05, 0.05, parametrize=False)
    sd = plain_state_dict(model)
    assert list(sd) == list(model.state_dict())
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    plain = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    plain.load_state_dict(sd)
    assert all(p.abs().max() <= 0.05 for p in plain.parameters())
    mixed = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    constrain(mixed, "0.weight", -0.05, 0.05, parametrize=False)
    constrain(mixed, "1.weight", -0.05, 0.05)
    assert sorted(plain_state_dict(mixed)) == sorted(plain.state_dict())
