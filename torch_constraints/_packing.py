"""Packed storage: many constrained tensors as views of one flat buffer.

Projecting thousands of small tensors one kernel at a time is bound by launch
and Python overhead, not by memory. A :class:`Pack` copies the tensors of one
device and dtype into a few flat buffers and rebinds each tensor's ``.data`` to a
view of its slot. The Parameter objects stay the same (optimizers keep them),
and tensors whose constraints project identically sit next to each other, so
each such *run* is projected by one kernel over one view:

* elementwise constraints (``Box``) see the run as one 1-D segment, whatever the
  shapes of its tensors;
* other constraints (``MaxNorm``) see a run of same-shaped tensors as one stacked
  tensor of shape ``(count, *shape)``.

Slots start on 64-byte boundaries. Buffers hold at most ``MAX_BUFFER_BYTES``, so
packing never needs more than that much extra memory at once.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from . import _kernels
from .base import Constraint

__all__ = ["MAX_BUFFER_BYTES", "Member", "Pack", "is_packable", "release"]

MAX_BUFFER_BYTES = 256 * 2**20
_ALIGN_BYTES = 64

#: Live packs by the data pointer of their buffers' storage.
_live: weakref.WeakValueDictionary[int, Pack] = weakref.WeakValueDictionary()


@dataclass
class Member:
    """A tensor to pack, the constraints applied to it, and the key of its run.

    Members with equal ``run_key`` are projected together: as one 1-D segment when
    ``flat`` (elementwise constraints), else as one stacked tensor (same shapes).
    """

    tensor: Tensor
    constraints: tuple[Constraint, ...]
    run_key: Hashable
    flat: bool


@dataclass
class Run:
    """Consecutive members projected together through one view."""

    constraints: tuple[Constraint, ...]
    view: Tensor


class Pack:
    """Flat buffers for tensors of one device and dtype; the tensors become views of them."""

    def __init__(self, members: Sequence[Member], *, max_bytes: int = MAX_BUFFER_BYTES) -> None:
        first = members[0].tensor
        self.dtype, self.device = first.dtype, first.device
        self.tensors: list[Tensor] = []
        self.runs: list[Run] = []
        self.buffers: list[Tensor] = []
        by_key: dict[Hashable, list[Member]] = {}
        for member in members:
            by_key.setdefault(member.run_key, []).append(member)
        self.members = [member for group in by_key.values() for member in group]
        for chunk in _chunks(self.members, max_bytes):
            self._fill(chunk)
        self.ptrs = _kernels.data_ptrs(self.tensors)
        self.indices = list(range(len(self.tensors)))
        self.buffer_ptrs = _kernels.data_ptrs(self.buffers)

    def buffers_intact(self) -> bool:
        """Whether every buffer still has the memory it was made with (O(buffers)).

        A storage resized in place (``untyped_storage().resize_(0)``, as code that
        frees memory does) gets a new data pointer, or none.
        """
        return _kernels.data_ptrs(self.buffers) == self.buffer_ptrs

    def moved_members(self) -> list[Member]:
        """The members whose tensor no longer views its slot (rebound with ``.data = ...``)."""
        if _kernels.data_ptrs_equal(self.tensors, self.ptrs, self.indices):
            return []
        now = _kernels.data_ptrs(self.tensors)  # in the order of self.members
        return [m for m, old, new in zip(self.members, self.ptrs, now, strict=True) if old != new]

    def serves(self, wanted: Mapping[int, tuple[Constraint, ...]]) -> bool:
        """Whether every member is still here and still carries the same constraints.

        ``wanted`` maps ``id(tensor)`` to the constraints a plan applies to it.
        """
        return (
            all(wanted.get(id(m.tensor)) == m.constraints for m in self.members)
            and _kernels.data_ptrs(self.tensors) == self.ptrs
            and self.buffers_intact()
        )

    def _fill(self, chunk: list[Member]) -> None:
        sizes = [_slot_elems(m.tensor) for m in chunk]
        offsets: list[int] = []
        buffer = torch.zeros(sum(sizes), dtype=self.dtype, device=self.device)
        self.buffers.append(buffer)
        _live[buffer.untyped_storage().data_ptr()] = self
        offset, first = 0, 0
        for i, (member, size) in enumerate(zip(chunk, sizes, strict=True)):
            tensor = member.tensor
            view = buffer.as_strided(tensor.shape, tensor.stride(), offset)
            view.copy_(tensor)
            tensor.data = view
            self.tensors.append(tensor)
            offsets.append(offset)
            if i + 1 == len(chunk) or chunk[i + 1].run_key != member.run_key:
                end = offset + tensor.numel()
                self.runs.append(_run(buffer, chunk[first : i + 1], offsets[first], end))
                first = i + 1
            offset += size

    def release(self) -> None:
        """Give every member still viewing these buffers its own storage again."""
        for tensor in self.tensors:
            release(tensor)
        self.tensors, self.runs, self.buffers, self.members = [], [], [], []
        self.ptrs, self.indices, self.buffer_ptrs = [], [], []


def is_packable(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a plain, dense tensor that owns its whole storage."""
    if type(tensor) not in (Tensor, torch.nn.Parameter):
        return False
    if tensor.layout != torch.strided or tensor.device.type == "meta" or tensor.is_inference():
        return False
    if tensor.numel() == 0 or tensor.storage_offset() != 0:
        return False
    nbytes = tensor.numel() * tensor.element_size()
    return tensor.untyped_storage().nbytes() == nbytes and _is_dense(tensor)


def release(tensor: Tensor) -> None:
    """If ``tensor`` is a view of a live pack, move it to a storage of its own."""
    if type(tensor) not in (Tensor, torch.nn.Parameter) or tensor.device.type == "meta":
        return
    if tensor.untyped_storage().data_ptr() in _live:
        tensor.data = tensor.data.clone()


def _run(buffer: Tensor, members: list[Member], start: int, end: int) -> Run:
    """The view through which ``members``, packed in ``buffer[start:end]``, are projected."""
    first = members[0]
    if first.flat:
        return Run(first.constraints, buffer[start:end])
    shape, stride = first.tensor.shape, first.tensor.stride()
    if len(members) == 1:
        return Run(first.constraints, buffer.as_strided(shape, stride, start))
    slot = _slot_elems(first.tensor)
    view = buffer.as_strided((len(members), *shape), (slot, *stride), start)
    return Run(first.constraints, view)


def _chunks(members: list[Member], max_bytes: int) -> list[list[Member]]:
    chunks: list[list[Member]] = [[]]
    used = 0
    for member in members:
        nbytes = _slot_elems(member.tensor) * member.tensor.element_size()
        if chunks[-1] and used + nbytes > max_bytes:
            chunks.append([])
            used = 0
        chunks[-1].append(member)
        used += nbytes
    return chunks


def _slot_elems(tensor: Tensor) -> int:
    align = max(1, _ALIGN_BYTES // tensor.element_size())
    return -(-tensor.numel() // align) * align


def _is_dense(tensor: Tensor) -> bool:
    """Non-overlapping and dense: some permutation of the dims is contiguous."""
    expected = 1
    for size, stride in sorted(zip(tensor.shape, tensor.stride(), strict=True), key=lambda d: d[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True
