"""Every private PyTorch name the library touches still exists and behaves as assumed.

A PyTorch release that renames or changes one of them must fail here, loudly, rather
than slow the library down or change what it does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from torch_constraints import _compat


def test_the_module_dicts_are_the_ones_behind_the_public_accessors() -> None:
    model = nn.Sequential(nn.BatchNorm1d(3))
    norm = model[0]
    assert _compat.parameters_of(norm) == dict(norm.named_parameters(recurse=False))
    assert _compat.buffers_of(norm) == dict(norm.named_buffers(recurse=False))
    assert _compat.children_of(model) == dict(model.named_children())
    del norm.weight
    norm.register_parameter("weight", None)  # None entries are kept in the dicts
    assert "weight" in _compat.parameters_of(norm)


def test_the_hook_dicts_hold_the_registered_hooks() -> None:
    layer = nn.Linear(2, 2)

    def pre(*args: object) -> None:
        return None

    def post(*args: object) -> None:
        return None

    pre_handle = layer.register_load_state_dict_pre_hook(pre)
    post_handle = layer.register_state_dict_post_hook(post)
    assert [getattr(h, "hook", h) for h in _compat.load_pre_hooks_of(layer).values()] == [pre]
    assert list(_compat.state_dict_hooks_of(layer).values()) == [post]
    pre_handle.remove()
    post_handle.remove()
    assert not _compat.load_pre_hooks_of(layer) and not _compat.state_dict_hooks_of(layer)


def test_state_dict_metadata_is_read_by_load_state_dict() -> None:
    layer = nn.Linear(2, 2)
    state = layer.state_dict()
    assert _compat.metadata_of(state)[""]["version"] is not None
    seen = []
    layer.register_load_state_dict_pre_hook(lambda m, sd, prefix, meta, *a: seen.append(meta))
    _compat.set_metadata(state, {"": {"marker": 1}})
    layer.load_state_dict(state)
    assert seen[0]["marker"] == 1
    assert _compat.metadata_of({}) == {}


def test_the_parametrization_cache_is_on_inside_cached_only() -> None:
    layer = nn.Linear(2, 2)
    parametrize.register_parametrization(layer, "weight", nn.Identity())
    assert _compat.parametrize_cache() is None
    with parametrize.cached():
        cache = _compat.parametrize_cache()
        assert cache is not None
        _ = layer.weight  # PyTorch's own property fills the same dict
        assert (id(layer), "weight") in cache
    assert _compat.parametrize_cache() is None
    assert not _compat.tracing()


def test_the_foreach_kernels_and_their_devices() -> None:
    assert "cuda" in _compat.foreach_devices()
    tensors = [torch.tensor([-3.0, 0.5, 3.0]), torch.full((2, 2), 9.0)]
    _compat.foreach_clamp_(tensors, -1.0, 1.0)
    assert tensors[0].tolist() == [-1.0, 0.5, 1.0] and tensors[1].eq(1).all()
    _compat.foreach_clamp_(tensors, None, 0.0)
    assert tensors[0].tolist() == [-1.0, 0.0, 0.0]
    _compat.foreach_copy_(tensors, [torch.zeros(3), torch.ones(2, 2)])
    assert tensors[0].eq(0).all() and tensors[1].eq(1).all()


def test_calls_forward_sees_every_kind_of_hook_and_a_compiled_call() -> None:
    layer = nn.Linear(2, 2)
    assert _compat.calls_forward(layer)
    for register in (
        layer.register_forward_pre_hook,
        layer.register_forward_hook,
        layer.register_full_backward_pre_hook,
        layer.register_full_backward_hook,
    ):
        handle = register(lambda *args: None)
        assert not _compat.calls_forward(layer)
        handle.remove()
    assert _compat.calls_forward(layer)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *args: None)
    assert not _compat.calls_forward(layer)
    handle.remove()
    layer.compile(backend="eager")
    assert not _compat.calls_forward(layer)
