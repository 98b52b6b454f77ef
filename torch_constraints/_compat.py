"""Every private PyTorch name the library touches, in one place.

A PyTorch release that renames one of these breaks this file and its test
(``tests/test_compat.py`` checks that each exists and behaves as assumed), not
the library at large. Private means any underscored name reached through PyTorch:
``torch._foreach_*``, ``torch._C``, ``parametrize._cache``, and the underscored
attributes of modules and ``state_dict`` objects that belong to the user.

Why each is needed:

* the module dicts (``_parameters``, ``_buffers``, ``_modules``): reading a tree on
  every ``hard_project`` call through ``named_modules()``/``getattr`` costs several
  times the dict reads; a parametrized tensor's raw value lives in its chain's
  ``_parameters`` (or ``_buffers``) under ``"original"``;
* the foreach kernels: one C++ loop over many tensors instead of one Python call per
  tensor (``_kernels``); PyTorch has no public multi-tensor clamp;
* ``parametrize._cache``/``_cache_enabled``: the shared classes' property honours
  :func:`torch.nn.utils.parametrize.cached` as PyTorch's own property does;
* the forward hooks and the compiled call of a module: reading a constrained weight
  calls each parametrization's ``forward`` directly when no hook or compiled call
  could tell the difference. ``chain()`` costs about as much again as the clamp of a
  small weight (``ParametrizationList`` looks for its next entry with ``hasattr``,
  which raises and catches an ``AttributeError`` on every read); the benchmark's
  weight-read row shows what the shortcut buys;
* the hook dicts: registering the checkpoint hooks once per module, and removing
  them with the module's last constraint, needs to see which are registered;
* ``state_dict._metadata``: where PyTorch keeps per-module metadata (the format).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module
from torch.nn.utils import parametrize

__all__ = [
    "BUFFERS",
    "MODULES",
    "PARAMETERS",
    "buffers_of",
    "calls_forward",
    "children_of",
    "foreach_clamp_",
    "foreach_copy_",
    "foreach_devices",
    "load_pre_hooks_of",
    "metadata_of",
    "parameters_of",
    "parametrize_cache",
    "set_metadata",
    "state_dict_hooks_of",
    "tracing",
]

#: The keys of a module's ``__dict__`` holding its parameters, buffers and submodules.
#: The walk of every ``hard_project`` call reads them by key: a ``getattr`` or a call
#: per dict would cost more than the rest of the walk.
PARAMETERS, BUFFERS, MODULES = "_parameters", "_buffers", "_modules"


def parameters_of(module: nn.Module) -> dict[str, nn.Parameter | None]:
    """``module._parameters``: its own parameters by name (``None`` entries included)."""
    return module._parameters


def buffers_of(module: nn.Module) -> dict[str, Tensor | None]:
    """``module._buffers``: its own buffers by name (``None`` entries included)."""
    return module._buffers


def children_of(module: nn.Module) -> dict[str, nn.Module | None]:
    """``module._modules``: its direct submodules by name (``None`` entries included)."""
    return module._modules


def load_pre_hooks_of(module: nn.Module) -> dict[int, Any]:
    """``module._load_state_dict_pre_hooks``: the registered load pre-hooks, by handle id."""
    return module._load_state_dict_pre_hooks


def state_dict_hooks_of(module: nn.Module) -> dict[int, Any]:
    """``module._state_dict_hooks``: the registered ``state_dict`` post-hooks, by handle id."""
    return module._state_dict_hooks


def metadata_of(state_dict: object) -> dict[str, dict[str, Any]]:
    """``state_dict._metadata``: per-module metadata by prefix (empty if there is none)."""
    metadata: dict[str, dict[str, Any]] = getattr(state_dict, "_metadata", {})
    return metadata


def set_metadata(state_dict: object, metadata: dict[str, dict[str, Any]]) -> None:
    """Attach ``metadata`` to ``state_dict`` where ``load_state_dict`` looks for it."""
    state_dict._metadata = metadata  # type: ignore[attr-defined]


def parametrize_cache() -> dict[tuple[int, str], Tensor | None] | None:
    """The cache of :func:`torch.nn.utils.parametrize.cached` while it is on, else ``None``."""
    return parametrize._cache if parametrize._cache_enabled else None


def calls_forward(module: nn.Module) -> bool:
    """Whether ``module(x)`` is ``module.forward(x)``: no hooks, its own or global; not compiled.

    When it is, calling ``forward`` directly gives the same value and the same
    autograd graph, without ``nn.Module.__call__``'s bookkeeping.
    """
    return not (
        module._forward_pre_hooks
        or module._forward_hooks
        or module._backward_pre_hooks
        or module._backward_hooks
        or module._compiled_call_impl is not None
        or _module._global_forward_pre_hooks
        or _module._global_forward_hooks
        or _module._global_backward_pre_hooks
        or _module._global_backward_hooks
    )


def tracing() -> bool:
    """Whether ``torch.jit.trace`` is tracing (PyTorch refuses cached parametrizations then)."""
    return torch._C._get_tracing_state() is not None


def foreach_devices() -> list[str]:
    """The device types with fused multi-tensor (foreach) kernels, such as ``"cuda"``."""
    from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices

    return _get_foreach_kernels_supported_devices()


def foreach_clamp_(tensors: Sequence[Tensor], lo: float | None, hi: float | None) -> None:
    """Clamp every tensor in place: ``_foreach_clamp_min_`` then ``_foreach_clamp_max_``."""
    tensors = list(tensors)
    if lo is not None:
        torch._foreach_clamp_min_(tensors, lo)
    if hi is not None:
        torch._foreach_clamp_max_(tensors, hi)


def foreach_copy_(destinations: Sequence[Tensor], sources: Sequence[Tensor]) -> None:
    """Copy ``sources[i]`` into ``destinations[i]`` with one multi-tensor call."""
    torch._foreach_copy_(list(destinations), list(sources))
