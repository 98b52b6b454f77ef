"""Evaluate a parametrization chain with less Python than ``chain()``.

Reading ``module.weight`` on a parametrized module calls the chain
(:class:`~torch.nn.utils.parametrize.ParametrizationList`) through
``nn.Module.__call__``, which calls each parametrization through it again, and
looks for the next one with ``hasattr``, which raises and catches an
``AttributeError`` at the end of every chain. On a GPU, where a small layer's
kernels take a few microseconds, that bookkeeping alone costs as much as the
layer. :func:`evaluate` computes the same value, calling ``forward`` directly,
whenever nothing could tell the difference: no hooks (the module's own or
global ones), no compiled ``__call__``, no tracing or compiling. Otherwise it
calls ``chain()``.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module

__all__ = ["evaluate"]


def evaluate(chain: nn.Module) -> Any:
    """Return ``chain()`` for a ``ParametrizationList``."""
    if (
        not chain.is_tensor
        or not _direct(chain)
        or _module._global_forward_pre_hooks
        or _module._global_forward_hooks
        or _module._global_backward_pre_hooks
        or _module._global_backward_hooks
        or torch._C._get_tracing_state() is not None
        or torch.compiler.is_compiling()
    ):
        return chain()
    x = cast(Tensor, chain.original)
    for parametrization in chain._modules.values():
        assert parametrization is not None  # a ParametrizationList holds no None entries
        if _direct(parametrization):
            x = parametrization.forward(x)
        else:
            x = parametrization(x)
    return x


def _direct(module: nn.Module) -> bool:
    """Whether ``module(...)`` is ``module.forward(...)``: no hooks and no compiled call."""
    return not (
        module._forward_pre_hooks
        or module._forward_hooks
        or module._backward_pre_hooks
        or module._backward_hooks
        or module._compiled_call_impl is not None
    )
