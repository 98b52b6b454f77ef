r"""The multi-tensor elementwise clamp: one Triton launch clamps many tensors in place.

PyTorch's fallback (:func:`torch_constraints._kernels.clamp_`) is a foreach pair,
``_foreach_clamp_min_`` then ``_foreach_clamp_max_``: two passes over memory and,
for thousands of small tensors, about ``2 * tensors / 110`` launches. This module
reads and writes every element once, in one launch.

Launch layout
-------------
The tensors (one CUDA device, one floating dtype, each contiguous) are cut into
chunks of at most ``chunk`` elements. A table of int64 rows ``(address, length)``,
one row per chunk, is copied to the device (from pinned memory, without waiting
for the GPU), and program ``i`` of a 1-D grid of ``len(rows)`` programs clamps
chunk ``i``: it casts ``address`` to a pointer, clamps the chunk's full blocks of
``block`` elements without a mask (16-byte vector loads and stores when every
address is 16-byte aligned, which the host checks) and ends with one masked block.
Empty tensors get no row.

Math
----
The kernel does no floating-point arithmetic, so no flushing of subnormals, no
fused or reordered comparison and no rewritten NaN can make it differ from
``torch.clamp``. It loads each element's bits as a ``W``-bit signed integer ``x``
(``W`` = 16, 32 or 64), with ``M = 2**(W-1) - 1`` and ``I`` the bits of ``+inf``:

* ``x`` is NaN iff ``x & M > I``;
* ``key(x) = x if x >= 0 else x ^ M`` (the magnitude bits of negatives flipped)
  increases with the float value: ``-inf < ... < -0 < +0 < ... < +inf``. So for
  non-NaN ``a`` and ``b`` that are not both zeros, ``a < b`` as floats iff
  ``key(a) < key(b)``; two zeros compare equal as floats.

With these, as ``torch.clamp`` (``min(max(x, lo), hi)``):

.. math::

    y = \begin{cases} lo & x < lo \\ x & \text{otherwise} \end{cases}
    \qquad
    \text{out} = \begin{cases} hi & hi < y \\ y & \text{otherwise} \end{cases}

where a NaN element is never below or above a bound, so it is left as it is (the
same bits; PyTorch's own 16-bit CPU kernels may rewrite a NaN's payload, the value
stays NaN either way). ``lo`` and ``hi`` are the dtype's values nearest the given
floats (the callers pass bounds already rounded to the dtype, see
:func:`~torch_constraints.functional.box_bounds`), and either may be ``None``.

The one choice left is a tie between zeros of opposite signs (``x = -0.0`` against
``lo = +0.0``, ...): ``torch.clamp`` keeps ``x`` on the CPU, while PyTorch's CUDA
kernels have, in some releases, written the bound or the larger zero (``fmaxf``)
instead. So the first use on a device and
dtype clamps ``+0.0`` and ``-0.0`` against both zeros with ``torch.clamp`` there
(:func:`_learn_ties`) and the kernel writes, on such a tie, what ``torch.clamp``
wrote: the element, or a fixed zero. An outcome this model cannot reproduce turns
the kernel off for that device and dtype: the caller falls back.

Where it applies
----------------
:func:`clamp_` returns ``False``, touching nothing, unless Triton (and NumPy)
import, the device is CUDA (or the CPU under ``TRITON_INTERPRET=1``, where Triton's
interpreter runs the kernel, for tests), the tensors are plain contiguous tensors
or parameters of one floating dtype and device, and PyTorch is neither compiling
nor capturing a CUDA graph, and ``TORCH_CONSTRAINTS_TRITON=1`` is set: until the
kernel has been measured on a GPU, it is an opt-in.

This module imports Triton where it is installed; :mod:`torch_constraints._kernels`
imports this module on its first multi-tensor clamp on CUDA (or under the
interpreter): ``import torch_constraints`` does not import it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["Plan", "clamp_", "prepare"]

#: Set to ``1`` to turn the kernel on. It is off by default until it has been
#: measured on a GPU against the foreach pair (``.ci/gpu_triton.py``); every call
#: takes PyTorch's fallback without it.
ENV = "TORCH_CONSTRAINTS_TRITON"
#: Bytes each program clamps per loop iteration, and iterations per chunk.
BLOCK_BYTES = 4096
BLOCKS_PER_CHUNK = 16
NUM_WARPS = 4


class _Format(NamedTuple):
    int_type: torch.dtype  # the integer dtype of the bits
    width: int  # W
    inf: int  # the bits of +inf

    @property
    def magnitude(self) -> int:  # M
        return (1 << (self.width - 1)) - 1


_FORMATS = {
    torch.float16: _Format(torch.int16, 16, 0x7C00),
    torch.bfloat16: _Format(torch.int16, 16, 0x7F80),
    torch.float32: _Format(torch.int32, 32, 0x7F800000),
    torch.float64: _Format(torch.int64, 64, 0x7FF0000000000000),
}
_PLAIN = frozenset({Tensor, nn.Parameter})
_DTYPE = operator.attrgetter("dtype")


try:
    import numpy as np
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - where Triton (or NumPy) is not installed
    HAVE_TRITON = False
else:
    HAVE_TRITON = True

if HAVE_TRITON:
    # Module-level functions: Triton's interpreter resolves a kernel's callees in its
    # module's globals (it does not see closures).

    @triton.jit
    def _key(x, M: tl.constexpr):  # type: ignore[no-untyped-def]
        """Integer order of the floats: flip the magnitude bits of negatives."""
        return tl.where(x < 0, x ^ M, x)

    @triton.jit
    def _clamp_bits(  # type: ignore[no-untyped-def]
        x,
        lo,
        hi,
        lo_tie,
        hi_tie,
        M: tl.constexpr,
        INF: tl.constexpr,
        HAS_LO: tl.constexpr,
        HAS_HI: tl.constexpr,
        LO_TIE: tl.constexpr,
        HI_TIE: tl.constexpr,
    ):
        """``min(max(x, lo), hi)`` on the bits (the module's docstring)."""
        nan = (x & M) > INF
        y = x
        if HAS_LO:
            zeros = ((x & M) == 0) & ((lo & M) == 0)  # equal as floats
            below = (_key(x, M) < _key(lo, M)) & ~nan & ~zeros
            y = tl.where(below, lo, y)
            if LO_TIE:
                y = tl.where(zeros, lo_tie, y)
        if HAS_HI:
            zeros = ((y & M) == 0) & ((hi & M) == 0)
            above = (_key(hi, M) < _key(y, M)) & ~nan & ~zeros
            y = tl.where(above, hi, y)
            if HI_TIE:
                y = tl.where(zeros, hi_tie, y)
        return y

    @triton.jit(do_not_specialize=["lo", "hi", "lo_tie", "hi_tie"])
    def multi_tensor_clamp(  # type: ignore[no-untyped-def]
        rows,
        lo,
        hi,
        lo_tie,
        hi_tie,
        ELEM: tl.constexpr,
        M: tl.constexpr,
        INF: tl.constexpr,
        HAS_LO: tl.constexpr,
        HAS_HI: tl.constexpr,
        LO_TIE: tl.constexpr,
        HI_TIE: tl.constexpr,
        BLOCK: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):
        """Program ``i`` clamps the chunk of row ``i`` of ``rows``: ``(address, length)``."""
        row = rows + 2 * tl.program_id(0)
        p = tl.load(row).to(tl.pointer_type(ELEM))
        if ALIGNED:
            p = tl.multiple_of(p, 16)
        n = tl.load(row + 1)
        lo = lo.to(ELEM)
        hi = hi.to(ELEM)
        lo_tie = lo_tie.to(ELEM)
        hi_tie = hi_tie.to(ELEM)
        offsets = tl.arange(0, BLOCK)
        full = n - n % BLOCK
        for start in range(0, full, BLOCK):
            x = tl.load(p + start + offsets)
            y = _clamp_bits(x, lo, hi, lo_tie, hi_tie, M, INF, HAS_LO, HAS_HI, LO_TIE, HI_TIE)
            tl.store(p + start + offsets, y.to(ELEM))
        if full < n:
            mask = full + offsets < n
            x = tl.load(p + full + offsets, mask=mask)
            y = _clamp_bits(x, lo, hi, lo_tie, hi_tie, M, INF, HAS_LO, HAS_HI, LO_TIE, HI_TIE)
            tl.store(p + full + offsets, y.to(ELEM), mask=mask)

    _ELEM = {torch.int16: tl.int16, torch.int32: tl.int32, torch.int64: tl.int64}
    #: Whether TRITON_INTERPRET=1 was set when this module was imported.
    INTERPRETED = not isinstance(multi_tensor_clamp, triton.runtime.JITFunction)


#: Set when a launch raised (Triton could not compile or launch the kernel here): every
#: call then takes PyTorch's fallback, with one warning.
_failed = False


def _usable(device: torch.device) -> bool:
    """Whether the kernel runs on ``device``: CUDA, or the CPU under Triton's interpreter."""
    if os.environ.get(ENV) != "1" or not HAVE_TRITON or _failed:
        return False
    return device.type == ("cpu" if INTERPRETED else "cuda")


# ----------------------------------------------------------------------------- ties of zeros
#: What ``torch.clamp`` writes where a zero element meets a zero bound, by side and by
#: the bound's sign (``True``: ``-0.0``): ``None`` for the element, or the bits written.
Ties = dict[tuple[str, bool], int | None]
Clamp = Callable[[Tensor, float | None, float | None], Tensor]


def _torch_clamp(x: Tensor, lo: float | None, hi: float | None) -> Tensor:
    return x.clamp_(lo, hi)


def _learn_ties(
    dtype: torch.dtype, device: torch.device, clamp: Clamp = _torch_clamp
) -> Ties | None:
    """Clamp ``+0.0`` and ``-0.0`` with ``clamp`` against zero bounds: the rule of ties.

    Each side is learnt from one-sided clamps; the two-sided clamps must then follow
    ``hi``'s rule applied after ``lo``'s, or ``None`` is returned (the kernel is off).
    """
    form = _FORMATS[dtype]
    elements = [0, ~form.magnitude] * 16  # +0.0, -0.0 (the sign bit alone)
    x = torch.tensor(elements, dtype=form.int_type).view(dtype).to(device)
    one_sided = [("lo", False), ("lo", True), ("hi", False), ("hi", True)]
    two_sided = [(a, b) for a in (False, True) for b in (False, True)]
    zero = {False: 0.0, True: -0.0}
    results = [
        clamp(x.clone(), zero[sign] if side == "lo" else None, zero[sign] if side == "hi" else None)
        for side, sign in one_sided
    ] + [clamp(x.clone(), zero[a], zero[b]) for a, b in two_sided]
    bits: list[list[int]] = torch.stack(results).view(form.int_type).cpu().tolist()
    ties: Ties = {}
    for case, row in zip(one_sided, bits, strict=False):
        if row == elements:
            ties[case] = None
        elif len(set(row)) == 1:
            ties[case] = row[0]
        else:
            return None

    def apply(rule: int | None, element: int) -> int:
        return element if rule is None else rule

    for (a, b), row in zip(two_sided, bits[len(one_sided) :], strict=True):
        expected = [apply(ties["hi", b], apply(ties["lo", a], e)) for e in elements]
        if row != expected:
            return None
    return ties


@functools.cache
def _ties(device: torch.device, dtype: torch.dtype) -> Ties | None:
    return _learn_ties(dtype, device)


# ----------------------------------------------------------------------------- host side
@dataclass(frozen=True)
class Plan:
    """A launch prepared for fixed tensors: the device table of chunks and its settings.

    Valid while the tensors keep their storage, shape and dtype; :func:`prepare` makes
    one, :meth:`run` clamps.
    """

    tensors: Sequence[Tensor]
    rows: Tensor  # int64 (address, length) per chunk, on the tensors' device
    dtype: torch.dtype
    device: torch.device
    block: int
    aligned: bool
    num_warps: int

    def run(self, lo: float | None, hi: float | None) -> bool:
        """Clamp every tensor in place to ``[lo, hi]``; ``False`` (nothing done) where
        this kernel does not reproduce ``torch.clamp``: no bound, a NaN bound, ``lo > hi``,
        or ties of zeros it cannot follow on this device."""
        if not _supported(lo, hi):
            return False
        ties = _ties(self.device, self.dtype)
        if ties is None:
            return False
        form = _FORMATS[self.dtype]
        both = [0.0 if lo is None else lo, 0.0 if hi is None else hi]
        lo_bits, hi_bits = torch.tensor(both, dtype=self.dtype).view(form.int_type).tolist()
        lo_tie = hi_tie = None
        if lo is not None and not lo_bits & form.magnitude:  # a zero
            lo_tie = ties["lo", lo_bits < 0]
        if hi is not None and not hi_bits & form.magnitude:
            hi_tie = ties["hi", hi_bits < 0]
        if self.rows.shape[0]:
            guard = torch.cuda.device(self.device) if self.device.type == "cuda" else None
            try:
                with guard or contextlib.nullcontext():
                    self._launch(
                        None if lo is None else lo_bits,
                        None if hi is None else hi_bits,
                        lo_tie,
                        hi_tie,
                    )
            except Exception as error:  # Triton could not compile or launch it here
                # The fallback clamps again: the same result after a partial write too.
                global _failed
                _failed = True
                warnings.warn(
                    f"torch_constraints: Triton's clamp kernel failed ({error!r}); PyTorch's "
                    f"kernels clamp from now on",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return False
        # As an in-place PyTorch op would: autograd then refuses stale saved tensors.
        torch.autograd.graph.increment_version(self.tensors)
        return True

    def _launch(
        self, lo: int | None, hi: int | None, lo_tie: int | None, hi_tie: int | None
    ) -> None:
        """One launch; the bounds and the zeros written on ties as bits (``None``: none)."""
        form = _FORMATS[self.dtype]
        multi_tensor_clamp[(self.rows.shape[0],)](
            self.rows,
            0 if lo is None else lo,
            0 if hi is None else hi,
            0 if lo_tie is None else lo_tie,
            0 if hi_tie is None else hi_tie,
            ELEM=_ELEM[form.int_type],
            M=form.magnitude,
            INF=form.inf,
            HAS_LO=lo is not None,
            HAS_HI=hi is not None,
            LO_TIE=lo_tie is not None,
            HI_TIE=hi_tie is not None,
            BLOCK=self.block,
            ALIGNED=self.aligned,
            num_warps=self.num_warps,
            enable_fp_fusion=False,
        )


def prepare(
    tensors: Sequence[Tensor],
    *,
    block: int | None = None,
    chunk: int | None = None,
    num_warps: int = NUM_WARPS,
) -> Plan | None:
    """The launch plan for ``tensors``, or ``None`` where the kernel does not apply.

    ``block`` (a power of two) and ``chunk`` (a multiple of it) are in elements; the
    defaults are :data:`BLOCK_BYTES` and :data:`BLOCKS_PER_CHUNK` blocks.
    """
    if not tensors:
        return None
    first = tensors[0]
    dtype, device = first.dtype, first.device
    if dtype not in _FORMATS or not _usable(device):
        return None
    if torch.compiler.is_compiling() or (
        device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    ):
        return None
    if not (
        set(map(type, tensors)) <= _PLAIN
        and set(map(_DTYPE, tensors)) == {dtype}
        and set(map(Tensor.get_device, tensors)) == {first.get_device()}
        and all(map(Tensor.is_contiguous, tensors))
    ):
        return None
    itemsize = first.element_size()
    block = block or BLOCK_BYTES // itemsize
    chunk = chunk or block * BLOCKS_PER_CHUNK
    if block & (block - 1) or chunk % block:
        raise ValueError(f"block must be a power of two dividing chunk, got {block}, {chunk}")
    address = np.array(list(map(Tensor.data_ptr, tensors)), dtype=np.int64)
    size = np.array(list(map(Tensor.numel, tensors)), dtype=np.int64)
    count = -(-size // chunk)  # chunks per tensor (none for an empty one)
    owner = np.repeat(np.arange(len(size)), count)
    index = np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count)
    table = np.empty((owner.size, 2), dtype=np.int64)
    table[:, 0] = address[owner] + index * (chunk * itemsize)
    table[:, 1] = np.minimum(chunk, size[owner] - index * chunk)
    aligned = not (table[:, 0] % 16).any()
    rows = torch.from_numpy(table)
    if device.type == "cuda":
        rows = rows.pin_memory().to(device, non_blocking=True)
    return Plan(tensors, rows, dtype, device, block, aligned, num_warps)


def _supported(lo: float | None, hi: float | None) -> bool:
    """At least one bound, no NaN, ``lo <= hi``."""
    if lo is not None and hi is not None:
        return lo <= hi  # False for a NaN too
    bound = hi if lo is None else lo
    return bound is not None and not math.isnan(bound)


def clamp_(tensors: Sequence[Tensor], lo: float | None, hi: float | None) -> bool:
    """Clamp every tensor in place to ``[lo, hi]`` in one launch, as ``t.clamp_(lo, hi)``.

    Returns ``False``, having changed nothing, where the kernel does not apply (see
    the module's docstring): the caller then takes PyTorch's path.
    """
    if not _supported(lo, hi):
        return False
    plan = prepare(tensors)
    return plan is not None and plan.run(lo, hi)
