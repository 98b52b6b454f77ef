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
* the object holds a plan, as an optimizer holds its parameter list. Each call
  checks, by value, what it can afford to: that every tensor still views its slot
  (a ``.data`` rebinding, ``module.to()``, a storage freed in place; it repacks if
  not), and that the constraints of each run still have the attributes they had
  (``box.max = 0.05``, read from the constraints themselves; a run whose members
  differ now is projected member by member).
  Constraining or unconstraining a packed tensor through this library unpacks it
  (each packed tensor knows its pack), and the next call packs again. Anything else
  needs :meth:`PackedProjection.repack`, as an optimizer would need rebuilding:
  tensors constrained later, Parameters or modules replaced
  (``load_state_dict(assign=True)``, ``setattr``, FSDP2's ``fully_shard``), and
  PyTorch's own ``remove_parametrizations(..., leave_parametrized=False)``.
  :meth:`PackedProjection.is_current` compares the whole plan with the model.

Tensors that share a storage with another tensor (tied weights), that are not
plain dense tensors (DTensors, strided views) or that are empty are never packed;
they are projected as :func:`~torch_constraints.hard_project` projects them. Slots
start on 64-byte boundaries. Buffers hold at most ``MAX_BUFFER_BYTES``.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from . import _tree
from .base import Constraint
from .projection import Group, chain_key, groups, project_group_

__all__ = ["MAX_BUFFER_BYTES", "PackedProjection"]

MAX_BUFFER_BYTES = 256 * 2**20
_ALIGN_BYTES = 64


class PackedProjection:
    """Pack the constrained tensors of ``module`` into flat buffers; project them in runs.

    Calling the object projects every tensor it covers, in place, like
    :func:`~torch_constraints.hard_project` (equal results, bit for bit), with one
    kernel per run of identically constrained packed tensors.
    :func:`~torch_constraints.project_after_step` accepts it in place of a module.

    It follows its tensors as an optimizer follows its parameters: a rebound
    ``.data``, ``module.to()`` and a changed attribute of a constraint are seen by the
    next call (which repacks), and constraining or unconstraining a packed tensor
    through this library unpacks it. Call :meth:`repack` after constraining more
    tensors, or after replacing Parameters or modules
    (``load_state_dict(assign=True)``, ``setattr``).

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
        self._found: list[_tree.Constrained] = []
        self._packs: list[_Pack] = []
        self._loose: list[Group] = []
        self._hooks: list[RemovableHandle] = []
        self._packed = False
        self._pack()

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    @torch.no_grad()
    def __call__(self) -> None:
        """Project every covered tensor in place; (re)pack first if the plan has changed."""
        if not (self._packed and all(pack.follows_model() for pack in self._packs)):
            self.repack()
        for pack in self._packs:
            pack.project_()
        for constraints, tensors in self._loose:
            project_group_(constraints, tensors, self.foreach)

    def is_current(self) -> bool:
        """Whether packed, every tensor in its slot, the same constraints on the same tensors.

        Compares the whole plan with the model: each tensor is still held by the same
        module under the same name, with the same constraints, whose attributes
        project as they did.
        """
        if not (self._packed and all(pack.follows_model() for pack in self._packs)):
            return False
        now = _tree.constrained(self.module)
        return len(now) == len(self._found) and all(
            a.owner is b.owner
            and a.name == b.name
            and a.raw is b.raw
            and a.constraints == b.constraints
            and chain_key(a.constraints) == chain_key(b.constraints)
            for a, b in zip(now, self._found, strict=True)
        )

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
        self._found, self._packs, self._loose, self._hooks = [], [], [], []
        self._packed = False

    def invalidate(self) -> None:
        """Deprecated: each call checks its plan by value; :meth:`repack` rebuilds it."""
        warnings.warn(
            "PackedProjection.invalidate() is deprecated and does nothing: each call checks "
            "its plan; call repack() after changes it cannot see",
            DeprecationWarning,
            stacklevel=2,
        )

    def release(self, tensor: Tensor) -> None:
        """Deprecated: unpack if ``tensor`` is packed here (``unconstrain`` does it itself)."""
        warnings.warn(
            "PackedProjection.release() is deprecated: unconstrain() unpacks the tensors it "
            "changes; call unpack() to unpack everything",
            DeprecationWarning,
            stacklevel=2,
        )
        if any(tensor is t for pack in self._packs for t in pack.tensors):
            self.unpack()

    def _pack(self) -> None:
        found = _tree.constrained(self.module)
        with torch.inference_mode(False), torch.no_grad():
            members, loose = _select(self.module, found)
            by_group: dict[tuple[torch.device, torch.dtype], list[_Member]] = {}
            for member in members:
                by_group.setdefault((member.tensor.device, member.tensor.dtype), []).append(member)
            self._packs = [_Pack(group) for group in by_group.values()]
        handle = _PackHandle(self)
        for pack in self._packs:
            for tensor in pack.tensors:
                setattr(tensor, _tree.PACKED, handle)
        self._found, self._packed = found, True
        self._loose = groups(loose)
        packed = {id(t) for pack in self._packs for t in pack.tensors}
        holders = {
            id(holder): holder
            for entry in found
            if id(entry.raw) in packed
            for holder in [_holder(entry)]
        }
        hook = _CopyPackedEntries(self)
        self._hooks = [
            holder.register_state_dict_post_hook(hook)  # type: ignore[no-untyped-call]
            for holder in holders.values()
        ]


class _PackHandle:
    """What a packed tensor holds of its pack (:data:`_tree.PACKED`): a weak reference.

    A pickled or deep-copied tensor carries a handle to no pack.
    """

    def __init__(self, projection: PackedProjection | None) -> None:
        self._projection = weakref.ref(projection) if projection is not None else None

    def unpack(self) -> None:
        projection = self._projection() if self._projection is not None else None
        if projection is not None:
            projection.unpack()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_PackHandle, (None,))


def _holder(entry: _tree.Constrained) -> nn.Module:
    """The module whose ``state_dict`` holds the raw tensor (the chain, when parametrized)."""
    chain = _tree.chain_of(entry.owner, entry.name)
    return chain if chain is not None else entry.owner


# ---------------------------------------------------------------------------- internals
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


#: Attributes of a constraint that do not change its in-place projection: the module's
#: training flag, and straight-through (which changes the forward pass's gradient only).
_NOT_PROJECTED = frozenset({"training", "straight_through"})


class _Run:
    """Consecutive members projected together through one view, by the first one's constraints.

    Each call reads every member's constraints' public attributes (``min``, ``max``,
    ``max_value``, ``dim``, ...: those in the instance's ``__dict__`` not starting
    with ``_``, but :data:`_NOT_PROJECTED`) and compares them by value with what they
    were when packed: equal, the run is projected at once; not (``box.max = 0.05`` on
    one member), each member is projected by its own constraints.
    """

    def __init__(
        self, view: Tensor, chains: list[tuple[Constraint, ...]], tensors: list[Tensor]
    ) -> None:
        self.view, self.chains, self.tensors = view, chains, tensors
        self.constraints = chains[0]
        self._config: list[tuple[Callable[[Any], Any], list[object], list[Constraint]]] = []
        for position, first in enumerate(self.constraints if len(chains) > 1 else ()):
            names = [n for n in vars(first) if not n.startswith("_") and n not in _NOT_PROJECTED]
            getter = attrgetter(*names) if names else (lambda c: ())
            members = [chain[position] for chain in chains]
            self._config.append((getter, list(map(getter, members)), members))

    def project_(self) -> None:
        if all(_unchanged(*config) for config in self._config):
            for constraint in self.constraints:
                constraint.project_(self.view)
            return
        for chain, tensor in zip(self.chains, self.tensors, strict=True):
            for constraint in chain:
                constraint.project_(tensor)


def _unchanged(getter: Callable[[Any], Any], packed: list[object], members: list[Any]) -> bool:
    """Whether the members' attributes equal those they had when packed."""
    try:
        return list(map(getter, members)) == packed
    except RuntimeError:  # a tensor attribute, compared element by element: changed
        return False


def _select(
    module: nn.Module, found: list[_tree.Constrained]
) -> tuple[list[_Member], list[_tree.Constrained]]:
    """Split ``found`` into members to pack and entries left as they are."""
    storage_users: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        if _is_packable(tensor):
            ptr = tensor.untyped_storage().data_ptr()
            storage_users[ptr] = storage_users.get(ptr, 0) + 1
    names_per_tensor: dict[int, int] = {}
    for entry in found:
        names_per_tensor[id(entry.raw)] = names_per_tensor.get(id(entry.raw), 0) + 1
    members: list[_Member] = []
    loose: list[_tree.Constrained] = []
    for index, entry in enumerate(found):
        if (
            entry.raw is None
            or not entry.constraints
            or not _is_packable(entry.raw)
            or names_per_tensor[id(entry.raw)] != 1
            or storage_users.get(entry.raw.untyped_storage().data_ptr()) != 1  # tied
        ):
            loose.append(entry)
            continue
        tensor = entry.raw
        key = chain_key(entry.constraints)
        flat = key is not None and all(c.elementwise for c in entry.constraints)
        if key is None:
            run_key: Hashable = ("alone", index)
        elif flat:
            run_key = key
        else:
            run_key = (key, tuple(tensor.shape), tuple(tensor.stride()))
        members.append(_Member(tensor, entry.constraints, run_key, flat))
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
        self.ptrs = list(map(Tensor.data_ptr, self.tensors))
        self.buffer_ptrs = list(map(Tensor.data_ptr, self.buffers))

    def project_(self) -> None:
        for run in self.runs:
            run.project_()

    def follows_model(self) -> bool:
        """Whether every buffer has its memory and every tensor still views its slot.

        A storage resized in place (``untyped_storage().resize_(0)``) gets a new data
        pointer, or none; a tensor rebound with ``.data = ...`` views another one.
        """
        return (
            list(map(Tensor.data_ptr, self.buffers)) == self.buffer_ptrs
            and list(map(Tensor.data_ptr, self.tensors)) == self.ptrs
        )

    def release(self) -> None:
        """Give every tensor still viewing a buffer a storage of its own.

        Tensors that view the same slot (tied after packing, ``b.data = a.data``)
        get the same new storage, so the tie survives.
        """
        buffers = {b.untyped_storage().data_ptr() for b in self.buffers}
        copies: dict[tuple[int, int], Tensor] = {}  # by (storage, offset)
        for tensor in self.tensors:
            tensor.__dict__.pop(_tree.PACKED, None)
            if tensor.device.type == "meta":
                continue
            if tensor.untyped_storage().data_ptr() not in buffers:
                continue  # rebound elsewhere since: not ours any more
            slot = (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()))
            if slot not in copies:
                copies[slot] = tensor.data.clone()
            tensor.data = copies[slot]
        self.tensors, self.runs, self.buffers = [], [], []
        self.ptrs, self.buffer_ptrs = [], []

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
        view = buffer[start:end]
    elif len(members) == 1:
        view = buffer.as_strided(first.tensor.shape, first.tensor.stride(), start)
    else:
        shape, stride, slot = first.tensor.shape, first.tensor.stride(), _slot_elems(first.tensor)
        view = buffer.as_strided((len(members), *shape), (slot, *stride), start)
    return _Run(view, [m.constraints for m in members], [m.tensor for m in members])


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
