"""The shared parametrized classes: one per module class, safe under PyTorch's own edits."""

from __future__ import annotations

import gc
import pickle
import weakref
from collections.abc import Iterator

import pytest
import torch
from helpers import Double, Shift
from torch import nn
from torch.nn.modules import module as torch_module
from torch.nn.utils import parametrize

from torch_constraints import Box, NonNeg, _classes, constrain, constrain_all, unconstrain
from torch_constraints._classes import _evaluate, is_shared, shared_class


class TwoTensors(nn.Module):
    """A module class of our own, with a plain attribute next to its parameters."""

    def __init__(self, scale: float | None = None) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.full((3,), 5.0))
        if scale is None:
            self.b = nn.Parameter(torch.full((3,), -5.0))
        else:
            self.b = scale  # type: ignore[assignment]  # a plain attribute, on purpose

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.a + self.b


def test_modules_of_one_class_with_the_same_constrained_names_share_one_class() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 3), nn.Conv1d(1, 1, 2))
    constrain_all(model, -1, 1, include={"weight"})
    constrain(model[2], "bias", -0.5, 0.5)
    assert type(model[0]) is type(model[1]) is shared_class(nn.Linear, {"weight"})
    assert type(model[2]) is shared_class(nn.Linear, {"weight", "bias"})
    assert type(model[3]) is shared_class(nn.Conv1d, {"weight"})
    assert type(model[0]).__name__ == type(model[2]).__name__ == "ParametrizedLinear"
    assert parametrize.type_before_parametrizations(model[0]) is nn.Linear
    assert type(model[0]).__module__ == parametrize.__name__  # torch.fx: a leaf, as PyTorch's
    assert isinstance(model[0], nn.Linear)
    assert "ParametrizedLinear(" in repr(model[0])


def test_removing_one_constraint_moves_the_module_to_the_class_of_its_names() -> None:
    layer = constrain(nn.Linear(2, 2), "weight", -1, 1)
    constrain(layer, "bias", -1, 1)
    unconstrain(layer, "weight")
    assert type(layer) is shared_class(nn.Linear, {"bias"})
    assert isinstance(vars(layer)["_parameters"]["weight"], nn.Parameter)


def test_unconstrain_restores_the_original_class() -> None:
    layer = constrain(nn.Linear(2, 2), "weight", -1, 1)
    constrain(layer, "bias", -1, 1)
    unconstrain(layer)
    assert type(layer) is nn.Linear
    assert isinstance(layer.weight, nn.Parameter)


def test_cached_parametrizations_are_cached_per_module() -> None:
    # PyTorch's own property caches under the id of the module it was made for; a
    # shared class must key the cache on the module that reads it.
    first = constrain(nn.Linear(2, 2), "weight", -1, 1)
    second = constrain(nn.Linear(2, 2), "weight", -1, 1)
    with torch.no_grad():
        first.parametrizations.weight.original.fill_(0.25)
        second.parametrizations.weight.original.fill_(-0.75)
    with parametrize.cached():
        a, b = first.weight, second.weight
        assert first.weight is a  # cached
        assert torch.equal(a, torch.full((2, 2), 0.25))
        assert torch.equal(b, torch.full((2, 2), -0.75))


def test_a_foreign_parametrization_on_one_module_leaves_the_others_alone() -> None:
    first = constrain(nn.Linear(2, 2), "weight", -1, 1)
    second = constrain(nn.Linear(2, 2), "weight", -1, 1)
    parametrize.register_parametrization(first, "bias", Double())
    assert torch.equal(first.bias, 2 * first.parametrizations.bias.original)
    assert isinstance(second.bias, nn.Parameter)  # not parametrized there
    assert second(torch.ones(1, 2)).shape == (1, 2)
    parametrize.register_parametrization(second, "bias", Double())
    assert torch.equal(second.bias, 2 * second.parametrizations.bias.original)


def test_pytorch_remove_parametrizations_on_one_module_leaves_the_others_alone() -> None:
    first = constrain(nn.Linear(2, 2), "weight", -1, 1)
    constrain(first, "bias", -1, 1)
    second = constrain(nn.Linear(2, 2), "weight", -0.5, 0.5)
    constrain(second, "bias", -1, 1)
    parametrize.remove_parametrizations(first, "weight")
    assert isinstance(first.weight, nn.Parameter)
    x = torch.ones(1, 2)
    assert torch.equal(first(x), nn.functional.linear(x, first.weight, first.bias))
    assert parametrize.is_parametrized(first, "bias")
    assert second.weight.abs().max() <= 0.5  # still through its constraint
    assert parametrize.is_parametrized(second, "weight")
    parametrize.remove_parametrizations(first, "bias")
    assert type(first) is nn.Linear
    assert second.weight.abs().max() <= 0.5
    # the module can be constrained again
    constrain(first, "weight", -0.1, 0.1)
    assert first.weight.abs().max() <= 0.1


def test_names_parametrized_on_another_module_of_the_class_read_the_plain_attribute() -> None:
    # Calling PyTorch directly on one module adds a property to the shared class:
    # the other modules of that class read and write their plain attributes through it.
    first = constrain(TwoTensors(), "a", -1, 1)
    with_attribute = constrain(TwoTensors(scale=3.0), "a", -1, 1)
    plain = constrain(TwoTensors(), "a", -1, 1)
    assert type(first) is type(with_attribute) is type(plain)
    parametrize.register_parametrization(first, "b", Double())
    assert isinstance(vars(type(plain)).get("b"), property)
    assert torch.equal(first.parametrizations.b.original, torch.full((3,), -2.5))
    assert torch.equal(first.b, torch.full((3,), -5.0))
    assert with_attribute.b == 3.0
    with_attribute.b = 4.0  # type: ignore[assignment]
    assert with_attribute.b == 4.0
    del with_attribute.b
    assert not hasattr(with_attribute, "b")
    with pytest.raises(AttributeError):
        del first.b  # the parametrized tensor itself cannot be deleted
    assert isinstance(plain.b, nn.Parameter) and plain.b.eq(-5).all()
    plain.b = nn.Parameter(torch.zeros(3))
    assert plain.b.eq(0).all()
    assert torch.equal(plain(torch.ones(3)), plain.a)
    compiled = torch.compile(plain, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(torch.ones(3)), plain.a)  # Dynamo follows the same path


def test_assignment_through_the_shared_property_projects() -> None:
    layer = constrain(nn.Linear(2, 2), "weight", -1, 1)
    weight = layer.parametrizations.weight.original
    layer.weight = torch.full((2, 2), 3.0)
    assert layer.parametrizations.weight.original is weight
    assert weight.eq(1).all()


def test_a_class_of_our_own_is_shared_too_and_pickles() -> None:
    first = constrain(TwoTensors(), "a", -1, 1)
    constrain(first, "b", -2, 2)
    second = constrain(TwoTensors(), "b", -2, 2)
    constrain(second, "a", -1, 1)
    assert type(first) is type(second)
    copy = pickle.loads(pickle.dumps(first))
    assert type(copy) is type(first)
    assert torch.equal(copy.a, first.a) and torch.equal(copy.b, first.b)


def test_modules_parametrized_by_other_libraries_only_are_left_alone() -> None:
    layer = nn.Linear(2, 2)
    parametrize.register_parametrization(layer, "weight", Double())
    assert not is_shared(type(layer))
    with pytest.raises(RuntimeError, match="state_dict"):
        pickle.dumps(layer)  # PyTorch's own refusal, unchanged
    constrain(layer, "bias", Box(-1, 1))  # once we constrain it, it is shared
    assert is_shared(type(layer))
    assert torch.equal(layer.weight, 2 * layer.parametrizations.weight.original)
    copy = pickle.loads(pickle.dumps(layer))
    assert torch.equal(copy.weight, layer.weight) and torch.equal(copy.bias, layer.bias)


def test_a_tensor_unparametrized_by_pytorch_directly_can_be_reassigned_as_a_parameter() -> None:
    """A shared class keeps its property after PyTorch removes one of several names."""
    layer = constrain(nn.Linear(3, 2), "weight", -1, 1)
    constrain(layer, "bias", -1, 1)
    parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
    replacement = nn.Parameter(torch.full((2, 3), 7.0))
    layer.weight = replacement
    assert layer.weight is replacement
    assert any(p is replacement for p in layer.parameters())
    assert layer(torch.ones(1, 3)).shape == (1, 2)


def test_module_classes_made_on_the_fly_are_not_kept_alive() -> None:
    bases = weakref.WeakSet()  # type: ignore[var-annotated]
    for i in range(200):
        cls = type(f"OnTheFly{i}", (nn.Linear,), {})
        bases.add(cls)
        constrain(cls(2, 2), "weight", -1, 1)
    del cls
    collect()
    assert len(bases) == 0
    assert not [key for key in _classes._classes if key[0].__name__.startswith("OnTheFly")]


def collect() -> None:
    # The first pass runs the weak references' callbacks, which drop the entries'
    # strong references to the base classes; the next ones collect those.
    for _ in range(3):
        gc.collect()


class Kept(nn.Linear):
    """A module class whose shared class nothing else in the tests uses."""


def test_a_class_in_use_is_shared_and_a_collected_one_is_rebuilt_the_same() -> None:
    cls = Kept
    first = constrain(cls(2, 2), "weight", -1, 1)
    collect()
    second = constrain(cls(2, 2), "weight", -1, 1)
    assert type(first) is type(second) is shared_class(cls, {"weight"})
    shared = weakref.ref(type(first))
    del first, second
    collect()
    assert shared() is None  # nothing uses it: collected
    restored = pickle.loads(pickle.dumps(constrain(cls(2, 2), "weight", -1, 1)))
    assert type(restored) is shared_class(cls, {"weight"})
    assert type(restored).__name__ == "ParametrizedKept"
    assert torch.equal(restored.weight, restored.parametrizations.weight.original.clamp(-1, 1))


# --------------------------------------------------------------------- the read shortcut
# ``module.weight`` calls each parametrization's ``forward`` directly unless a hook, a
# compiled call or a tracer could see the difference; the value must equal ``chain()``.
def layer() -> nn.Linear:
    torch.manual_seed(0)
    return constrain(nn.Linear(4, 3), "weight", -0.2, 0.2)


def test_the_value_is_the_chain_value_for_stacked_parametrizations() -> None:
    stacked = layer()
    torch.nn.utils.parametrize.register_parametrization(stacked, "weight", Shift())
    constrain(stacked, "weight", NonNeg())
    chain = stacked.parametrizations.weight
    assert torch.equal(_evaluate(chain), chain())
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
