"""Multi-tensor kernels: many tensors clamped or copied with few calls.

PyTorch's foreach functions (reached through ``_compat``, with the other private
names) take a list of tensors and loop over it in C++: fused kernels on CUDA, a C++
loop of per-tensor kernels on the CPU. The loop of plain per-tensor calls is the
fallback, and the better choice where the tensors are large.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import _compat

__all__ = ["clamp_", "copy_", "foreach_supported"]

_PLAIN = (Tensor, nn.Parameter)


def foreach_supported(device: torch.device, foreach: bool | None) -> bool:
    """Resolve a ``foreach`` flag: ``None`` means "where PyTorch has fused foreach kernels".

    On the CPU PyTorch's foreach functions loop over the tensors in C++, one kernel
    each: a clamp then takes two passes over memory (there is no foreach clamp with
    both bounds), where a loop of ``clamp_`` takes one. Only devices with fused
    multi-tensor kernels (CUDA, XPU, ...) use foreach by default.
    """
    if foreach is None:
        return device.type in _compat.foreach_devices()
    return foreach


#: On the CPU, tensors of at most this many bytes and :data:`CPU_SMALL_NUMEL`
#: elements are clamped by PyTorch's foreach pair (``_foreach_clamp_min_`` then
#: ``_foreach_clamp_max_``), larger ones by one ``clamp_`` each. Below both a
#: Python-level call costs more than the second pass over data the first pass just
#: brought into cache; above either the second pass costs more (measured break-even:
#: about 12k float32, 8k bfloat16 and 5k float64 elements), and ``clamp_`` is
#: multithreaded from 32768 elements on.
CPU_SMALL_BYTES = 2**15
#: See :data:`CPU_SMALL_BYTES` (float16 and bfloat16 convert to float32 on each pass).
CPU_SMALL_NUMEL = 2**13
#: The foreach pair clamps the small tensors in chunks of about this many bytes, so
#: that the second pass finds the chunk still in the (L2) cache.
CPU_CHUNK_BYTES = 2**18


def clamp_(
    tensors: Sequence[Tensor], lo: float | None, hi: float | None, *, foreach: bool | None
) -> None:
    """Clamp every tensor in place to ``[lo, hi]`` (one device and dtype).

    ``foreach``: ``True``, PyTorch's foreach pair over all of them; ``False``, one
    ``clamp_`` each; ``None``, the foreach pair where the device has fused foreach
    kernels, and on the CPU the foreach pair for small plain tensors (in chunks that
    fit in cache) and ``clamp_`` for the others (see :data:`CPU_SMALL_BYTES`).
    """
    if not tensors or (lo is None and hi is None):
        return  # nothing to clamp (as project_box_ does; clamp_ would refuse it)
    if foreach is None:
        device = tensors[0].device
        if device.type == "cpu":
            _clamp_cpu_(tensors, lo, hi)
            return
        foreach = foreach_supported(device, None)
    if foreach:
        # nn.Parameter fails PyTorch's foreach support check and would silently take a
        # slow per-tensor path: work on detached aliases instead.
        _compat.foreach_clamp_([t.detach() for t in tensors], lo, hi)
        return
    for t in tensors:
        t.clamp_(lo, hi)


def _clamp_cpu_(tensors: Sequence[Tensor], lo: float | None, hi: float | None) -> None:
    """``clamp_`` for CPU tensors of one dtype: small ones by the foreach pair, in chunks.

    The CPU has no fused foreach kernels: PyTorch's foreach clamp loops over the
    tensors in C++, which costs less per tensor than a ``clamp_`` call from Python.
    Parameters are passed as they are (on the CPU every foreach call takes the
    per-tensor path anyway; a ``detach()`` per tensor would cost more than it saves).
    Tensor subclasses other than ``nn.Parameter`` (DTensor) keep their own ``clamp_``.
    """
    size = tensors[0].element_size()
    small_numel = min(CPU_SMALL_NUMEL, CPU_SMALL_BYTES // size)
    chunk_numel = CPU_CHUNK_BYTES // size
    chunk: list[Tensor] = []
    numel = 0
    for t in tensors:
        n = t.numel()
        if n > small_numel or type(t) not in _PLAIN:
            t.clamp_(lo, hi)
            continue
        chunk.append(t)
        numel += n
        if numel >= chunk_numel:
            _compat.foreach_clamp_(chunk, lo, hi)
            chunk = []
            numel = 0
    if chunk:
        _compat.foreach_clamp_(chunk, lo, hi)


def copy_(destinations: Sequence[Tensor], sources: Sequence[Tensor]) -> None:
    """Copy ``sources[i]`` into ``destinations[i]`` (one multi-tensor call where available)."""
    _compat.foreach_copy_([t.detach() for t in destinations], sources)
