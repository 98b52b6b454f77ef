"""Multi-tensor helpers built on PyTorch's private APIs, each with a plain fallback.

Every private ``torch`` call of the library lives here, so that a PyTorch
release that moves one of them breaks one file, and the fallback keeps working.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["clamp_", "copy_", "data_ptrs", "data_ptrs_equal", "foreach_supported"]

try:
    from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices
except ImportError:  # pragma: no cover - depends on the PyTorch release

    def _get_foreach_kernels_supported_devices() -> list[str]:
        return ["cuda"]


_ptrs_equal = getattr(torch._C, "_tensors_data_ptrs_at_indices_equal", None)


def foreach_supported(device: torch.device, foreach: bool | None) -> bool:
    """Resolve a ``foreach`` flag: ``None`` means "where PyTorch has fused foreach kernels".

    On the CPU PyTorch's foreach functions loop over the tensors in C++, one kernel
    each: a clamp then takes two passes over memory (there is no foreach clamp with
    both bounds), where a loop of ``clamp_`` takes one. Only devices with fused
    multi-tensor kernels (CUDA, XPU, ...) use foreach by default.
    """
    if foreach is None:
        return device.type in _get_foreach_kernels_supported_devices()
    return foreach


def clamp_(tensors: Sequence[Tensor], lo: float | None, hi: float | None, *, foreach: bool) -> None:
    """Clamp every tensor in place to ``[lo, hi]`` (one device and dtype)."""
    if foreach and tensors:
        if _triton_clamp_(tensors, lo, hi):
            return
        # nn.Parameter fails PyTorch's foreach support check and would silently take a
        # slow per-tensor path: work on detached aliases instead.
        detached = [t.detach() for t in tensors]
        if lo is not None:
            torch._foreach_clamp_min_(detached, lo)
        if hi is not None:
            torch._foreach_clamp_max_(detached, hi)
        return
    for t in tensors:
        t.clamp_(lo, hi)


def _triton_clamp_(tensors: Sequence[Tensor], lo: float | None, hi: float | None) -> bool:
    """The single-pass Triton kernel (:mod:`._triton`), where it may apply: on CUDA, or
    on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``, for tests)."""
    device = tensors[0].device.type
    if device != "cuda" and not (device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    from . import _triton  # imports Triton where it is installed: here, on first use

    return _triton.clamp_(tensors, lo, hi)


def data_ptrs(tensors: Sequence[Tensor]) -> list[int]:
    """Return each tensor's data pointer."""
    return list(map(Tensor.data_ptr, tensors))


def data_ptrs_equal(tensors: Sequence[Tensor], ptrs: list[int], indices: list[int]) -> bool:
    """Whether every ``tensors[i].data_ptr() == ptrs[i]``.

    ``indices`` is ``list(range(len(tensors)))``, kept by the caller; CUDA builds of
    PyTorch check it in one C++ loop, other builds in a Python ``map``.
    """
    if _ptrs_equal is not None:
        return bool(_ptrs_equal(list(tensors), ptrs, indices))
    return data_ptrs(tensors) == ptrs


def copy_(destinations: Sequence[Tensor], sources: Sequence[Tensor]) -> None:
    """Copy ``sources[i]`` into ``destinations[i]`` (one multi-tensor call where available)."""
    detached = [t.detach() for t in destinations]  # Parameters fail the foreach check
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(detached, list(sources))
        return
    for destination, source in zip(detached, sources, strict=True):  # pragma: no cover
        destination.copy_(source)
