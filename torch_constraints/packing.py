"""Packed projection: an explicit opt-in that trades storage layout for speed.

Projecting thousands of small tensors one kernel at a time is bound by launch
and Python overhead, not by memory. A :class:`PackedProjection` copies the
constrained tensors of each device and dtype into a few flat buffers and rebinds
each tensor's ``.data`` to a view of its slot. The Parameter objects stay the same
(optimizers keep them), and tensors whose constraints project identically sit next
to each other, so each such *run* is projected by one kernel over one view:

* elementwise constraints (``Box``) see the run as one 1-D segment, whatever the
  shapes of its tensors;
* other constraints (``MaxNorm``) see a run of same-shaped tensors as one stacked
  tensor of shape ``(count, *shape)``.

What it costs, and why it is not the default:

* the packed tensors share storages: a ``tensor.detach()`` or ``state_dict()``
  value taken before packing no longer follows the model (the model's own
  ``state_dict()`` returns copies of packed tensors while packed, so that no
  serializer takes them for tied tensors and drops all but one);
* the object holds a plan, as an optimizer holds its parameter list, and follows
  its tensors as an optimizer does. Each call checks that every tensor still views
  its slot (a ``.data`` rebinding, ``module.to()``, a storage freed in place) and
  repacks if not. The rest of the plan (the same constraints, with the same
  attributes, on the same tensors of the same modules) is compared by value on
  the first call after this library is told of a change: a constraint's attribute
  assigned, a constraint registered or removed (see :mod:`._plans`). That keeps
  the per-call cost to one pointer read per tensor. Tensors constrained after
  packing, and Parameters or modules replaced (``load_state_dict(assign=True)``,
  ``setattr``, FSDP2's ``fully_shard``) need :meth:`PackedProjection.repack`, as
  an optimizer would need rebuilding.
  :meth:`PackedProjection.is_current` compares the whole plan at any time.

Tensors that share a storage with another tensor (tied weights), that are not
plain dense tensors (DTensors, strided views) or that are empty are never packed;
they are projected as :func:`~torch_constraints.hard_project` projects them. Slots
start on 64-byte boundaries. Buffers hold at most ``MAX_BUFFER_BYTES``.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from . import _kernels, _plans, _records
from .base import Constraint
from .projection import Group, Target, groups, targets

__all__ = ["MAX_BUFFER_BYTES", "PackedProjection", "release"]

MAX_BUFFER_BYTES = 256 * 2**20
_ALIGN_BYTES = 64


class PackedProjection:
    """Pack the constrained tensors of ``module`` into flat buffers; project them in runs.

    Calling the object projects every tensor it covers, in place, like
    :func:`~torch_constraints.hard_project` (equal results, bit for bit), with one
    kernel per run of identically constrained packed tensors.
    :func:`~torch_constraints.project_after_step` accepts it in place of a module.

    It follows its tensors as an optimizer follows its parameters: a rebound
    ``.data``, ``module.to()``, a changed attribute of a constraint, a constraint
    added to or removed from a packed tensor through this library are seen by the
    next call (which repacks), and so is PyTorch's ``remove_parametrizations``.
    Call :meth:`repack` after constraining more tensors, or after replacing
    Parameters or modules (``load_state_dict(assign=True)``, ``setattr``).

    Args:
        module: the root of the module tree; its constrained tensors are packed now.
        foreach: as in :func:`~torch_constraints.hard_project`, for tensors that are
            not packed. Default: ``None``.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_constraints import PackedProjection, constrain_all
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        >>> _ = constrain_all(model, -0.1, 0.1)
        >>> packed = PackedProjection(model)
        >>> with torch.no_grad():
        ...     _ = model[1].parametrizations.weight.original.fill_(3.0)
        >>> packed()
        >>> bool(model[1].weight.max() <= 0.1), len({p.untyped_storage().data_ptr()
        ...                                          for p in model.parameters()})
        (True, 1)
        >>> packed.unpack()  # every tensor gets a storage of its own again
    """

    def __init__(self, module: nn.Module, *, foreach: bool | None = None) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"PackedProjection: expected an nn.Module, got {type(module).__name__}")
        self.module = module
        self.foreach = foreach
        self._snapshot = _Snapshot([])
        self._packs: list[_Pack] = []
        self._groups: list[Group] = []
        self._hooks: list[RemovableHandle] = []
        self._packed = False
        self._recheck = False
        self._pack()
        _plans.register(self)

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    @torch.no_grad()
    def __call__(self) -> None:
        """Project every covered tensor in place; (re)pack first if the plan has changed.

        Every call checks that each packed tensor still views its slot; the rest of the
        plan is compared with the model (as :meth:`is_current` does) on the first call
        after a change made through this library (see :class:`PackedProjection`).
        """
        if not self._follows_model():
            self.repack()
        for pack in self._packs:
            pack.project_()
        for group in self._groups:
            group.project_(self.foreach)

    def is_current(self) -> bool:
        """Whether packed, with every tensor in its slot and carrying the same constraints.

        Compares the whole plan with the model, by identity and value: each tensor
        is still held by the same module under the same name, with the same
        constraints, whose attributes project as they did.
        """
        return (
            self._packed and all(pack.intact() for pack in self._packs) and self._snapshot.matches()
        )

    def invalidate(self) -> None:
        """Compare the whole plan with the model on the next call (see :mod:`._plans`)."""
        self._recheck = True

    def _follows_model(self) -> bool:
        """The check of every call: the tensors view their slots; the rest if told to."""
        if not self._packed or not all(pack.intact() for pack in self._packs):
            return False
        if self._recheck:
            if not self._snapshot.matches():
                return False
            self._recheck = False
        return True

    def repack(self) -> None:
        """Unpack, then pack the tensors constrained now (after constraining more of them)."""
        self.unpack()
        self._pack()

    def unpack(self) -> None:
        """Give every packed tensor a storage of its own again (tensors tied since stay tied).

        Calling the object afterwards packs again.
        """
        for handle in self._hooks:
            handle.remove()
        with torch.inference_mode(False), torch.no_grad():
            for pack in self._packs:
                pack.release()
        self._snapshot, self._packs, self._groups, self._hooks = _Snapshot([]), [], [], []
        self._packed = False

    def release(self, tensor: Tensor) -> None:
        """If ``tensor`` is packed here, unpack everything (the next call packs again)."""
        if any(pack.holds(tensor) for pack in self._packs):
            self.unpack()

    def _pack(self) -> None:
        with torch.inference_mode(False), torch.no_grad():
            found = targets(self.module)
            members, loose = _select(self.module, found)
            by_group: dict[tuple[torch.device, torch.dtype], list[_Member]] = {}
            for member in members:
                tensor = member.tensor
                by_group.setdefault((tensor.device, tensor.dtype), []).append(member)
            self._packs = [_Pack(group) for group in by_group.values()]
        self._snapshot = _Snapshot(found)
        self._packed, self._recheck = True, False
        self._groups = groups(loose)
        hook = _CopyPackedEntries(self)
        holders = {
            id(target.holder()): target.holder()
            for target in found
            if any(pack.holds(target.tensor) for pack in self._packs)
        }
        self._hooks = [
            holder.register_state_dict_post_hook(hook)  # type: ignore[no-untyped-call]
            for holder in holders.values()
        ]


def release(tensor: Tensor) -> None:
    """Unpack every live :class:`PackedProjection` that packed ``tensor``."""
    for plan in _plans.live():
        if isinstance(plan, PackedProjection):
            plan.release(tensor)


# ---------------------------------------------------------------------------- internals
class _Snapshot:
    """What a plan was built from, compared with the model by identity and value.

    For every target: the owner still holds the same parametrization chain (or
    records) with the same constraints and raw tensor, and every constraint's
    fusion key, read from its current attributes, is unchanged. Each list holds,
    per target, where to look and what must be found there, so that most of the
    comparison runs as ``map`` over lists rather than as Python code per tensor.
    """

    def __init__(self, found: list[Target]) -> None:
        chained = [t for t in found if t.parametrized]
        recorded = [t for t in found if not t.parametrized]
        # Parametrized: owner -> its ModuleDict -> the chain -> its entries and original.
        self.owner_modules = [t.owner.__dict__["_modules"] for t in chained]
        chains = [t.holder() for t in chained]
        self.chain_dicts = [c._modules for c in chains]
        self.chain_lists = [t.owner.__dict__["_modules"]["parametrizations"] for t in chained]
        self.chain_list_dicts = [m._modules for m in self.chain_lists]
        self.names = [t.name for t in chained]
        self.chains = chains
        self.entries = [tuple(d.values()) for d in self.chain_dicts]
        self.original_dicts = [_table_of(c, "original") for c in chains]
        self.originals = [t.tensor for t in chained]
        # Recorded: the records dict is replaced on every change (see _records).
        self.owner_states = [t.owner.__dict__ for t in recorded]
        self.records = [t.owner.__dict__.get(_records.ATTRIBUTE) for t in recorded]
        self.tensor_dicts = [_table_of(t.owner, t.name) for t in recorded]
        self.recorded_names = [t.name for t in recorded]
        self.tensors = [t.tensor for t in recorded]
        self.constraints = [c for t in found for c in t.constraints]
        self.keys = [c.fusion_key() for c in self.constraints]

    def matches(self) -> bool:
        """Whether the model still holds every target as it was, with the same keys."""
        return (
            _same(map(dict.get, self.owner_modules, repeat("parametrizations")), self.chain_lists)
            and _same(map(dict.get, self.chain_list_dicts, self.names), self.chains)
            and list(map(tuple, map(dict.values, self.chain_dicts))) == self.entries
            and _same(map(dict.get, self.original_dicts, repeat("original")), self.originals)
            and _same(map(dict.get, self.owner_states, repeat(_records.ATTRIBUTE)), self.records)
            and _same(map(dict.get, self.tensor_dicts, self.recorded_names), self.tensors)
            and [c.fusion_key() for c in self.constraints] == self.keys
        )


def _same(found: Iterable[object], expected: list[Any]) -> bool:
    """Whether ``found`` holds the very objects of ``expected``, in order."""
    return all(map(operator.is_, found, expected))


def _table_of(module: nn.Module, name: str) -> dict[str, Any]:
    """The dict of ``module`` (parameters or buffers) that holds ``name``."""
    return module._parameters if name in module._parameters else module._buffers


@dataclass
class _Member:
    """A tensor to pack, the constraints applied to it, and the key of its run.

    Members with equal ``run_key`` are projected together: as one 1-D segment when
    ``flat`` (elementwise constraints), else as one stacked tensor (same shapes).
    """

    tensor: Tensor
    constraints: tuple[Constraint, ...]
    run_key: Hashable
    flat: bool


@dataclass
class _Run:
    """Consecutive members projected together through one view."""

    constraints: tuple[Constraint, ...]
    view: Tensor


def _select(module: nn.Module, found: list[Target]) -> tuple[list[_Member], list[Target]]:
    """Split ``found`` into members to pack and targets left as they are."""
    storage_users: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        if _is_packable(tensor):
            ptr = tensor.untyped_storage().data_ptr()
            storage_users[ptr] = storage_users.get(ptr, 0) + 1
    targets_per_tensor: dict[int, int] = {}
    for target in found:
        targets_per_tensor[id(target.tensor)] = targets_per_tensor.get(id(target.tensor), 0) + 1
    members: list[_Member] = []
    loose: list[Target] = []
    for index, target in enumerate(found):
        tensor = target.tensor
        if (
            not _is_packable(tensor)
            or targets_per_tensor[id(tensor)] != 1
            or storage_users.get(tensor.untyped_storage().data_ptr()) != 1  # tied
        ):
            loose.append(target)
            continue
        key = target.chain_key()
        flat = key is not None and all(c.elementwise for c in target.constraints)
        if key is None:
            run_key: Hashable = ("alone", index)
        elif flat:
            run_key = key
        else:
            run_key = (key, tuple(tensor.shape), tuple(tensor.stride()))
        members.append(_Member(tensor, target.constraints, run_key, flat))
    return members, loose


class _Pack:
    """Flat buffers for tensors of one device and dtype; the tensors become views of them."""

    def __init__(self, members: Sequence[_Member], *, max_bytes: int = MAX_BUFFER_BYTES) -> None:
        first = members[0].tensor
        self.dtype, self.device = first.dtype, first.device
        self.tensors: list[Tensor] = []
        self.runs: list[_Run] = []
        self.buffers: list[Tensor] = []
        by_key: dict[Hashable, list[_Member]] = {}
        for member in members:
            by_key.setdefault(member.run_key, []).append(member)
        ordered = [member for group in by_key.values() for member in group]
        for chunk in _chunks(ordered, max_bytes):
            self._fill(chunk)
        self.ptrs = _kernels.data_ptrs(self.tensors)
        self.indices = list(range(len(self.tensors)))
        self.buffer_ptrs = _kernels.data_ptrs(self.buffers)

    def project_(self) -> None:
        for run in self.runs:
            for constraint in run.constraints:
                constraint.project_(run.view)

    def intact(self) -> bool:
        """Whether every buffer has its memory and every tensor still views its slot.

        A storage resized in place (``untyped_storage().resize_(0)``) gets a new data
        pointer, or none; a tensor rebound with ``.data = ...`` views another one.
        """
        return _kernels.data_ptrs(self.buffers) == self.buffer_ptrs and (
            _kernels.data_ptrs_equal(self.tensors, self.ptrs, self.indices)
        )

    def holds(self, tensor: Tensor) -> bool:
        return any(tensor is member for member in self.tensors)

    def release(self) -> None:
        """Give every tensor still viewing a buffer a storage of its own.

        Tensors that view the same slot (tied after packing, ``b.data = a.data``)
        get the same new storage, so the tie survives.
        """
        buffers = {b.untyped_storage().data_ptr() for b in self.buffers}
        copies: dict[tuple[int, int], Tensor] = {}  # by (storage, offset)
        for tensor in self.tensors:
            if tensor.device.type == "meta":
                continue
            if tensor.untyped_storage().data_ptr() not in buffers:
                continue  # rebound elsewhere since: not ours any more
            slot = (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()))
            if slot not in copies:
                copies[slot] = tensor.data.clone()
            tensor.data = copies[slot]
        self.tensors, self.runs, self.buffers = [], [], []
        self.ptrs, self.indices, self.buffer_ptrs = [], [], []

    def _fill(self, chunk: list[_Member]) -> None:
        sizes = [_slot_elems(m.tensor) for m in chunk]
        offsets: list[int] = []
        buffer = torch.zeros(sum(sizes), dtype=self.dtype, device=self.device)
        self.buffers.append(buffer)
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


class _CopyPackedEntries:
    """``state_dict`` post-hook: packed tensors are saved as copies, never as shared views.

    Serializers that take tensors sharing a storage for tied weights (safetensors,
    Accelerate, Hugging Face) would otherwise keep one of them and drop the rest.
    It copies the entries that view a buffer of its live projection; a copy of the
    hook (a pickled or deep-copied module) has no projection and copies every entry
    that views a larger storage, which is what a pickled pack still is.
    """

    def __init__(self, projection: PackedProjection | None) -> None:
        self._projection = weakref.ref(projection) if projection is not None else None

    def __call__(
        self,
        module: nn.Module,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
    ) -> None:
        projection = self._projection() if self._projection is not None else None
        buffers = (
            {b.untyped_storage().data_ptr() for pack in projection._packs for b in pack.buffers}
            if projection is not None
            else None
        )
        for key, value in state_dict.items():
            if (
                not key.startswith(prefix)
                or type(value) not in (Tensor, nn.Parameter)
                or value.device.type == "meta"
            ):
                continue
            storage = value.untyped_storage()
            packed = (
                storage.data_ptr() in buffers
                if buffers is not None
                else storage.nbytes() != value.numel() * value.element_size()
            )
            if packed:
                state_dict[key] = value.detach().clone()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_CopyPackedEntries, (None,))


def _is_packable(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a plain, dense tensor that owns its whole storage."""
    if type(tensor) not in (Tensor, nn.Parameter):
        return False
    if tensor.layout != torch.strided or tensor.device.type == "meta" or tensor.is_inference():
        return False
    if tensor.numel() == 0 or tensor.storage_offset() != 0:
        return False
    nbytes = tensor.numel() * tensor.element_size()
    return tensor.untyped_storage().nbytes() == nbytes and _is_dense(tensor)


def _run(buffer: Tensor, members: list[_Member], start: int, end: int) -> _Run:
    """The view through which ``members``, packed in ``buffer[start:end]``, are projected."""
    first = members[0]
    if first.flat:
        return _Run(first.constraints, buffer[start:end])
    shape, stride = first.tensor.shape, first.tensor.stride()
    if len(members) == 1:
        return _Run(first.constraints, buffer.as_strided(shape, stride, start))
    slot = _slot_elems(first.tensor)
    view = buffer.as_strided((len(members), *shape), (slot, *stride), start)
    return _Run(first.constraints, view)


def _chunks(members: list[_Member], max_bytes: int) -> list[list[_Member]]:
    chunks: list[list[_Member]] = [[]]
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
