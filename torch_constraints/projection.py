"""``hard_project``: write projected values into the raw tensors, in place.

A call costs a few kernels, not a walk over the module tree. The first call on a
module builds a *plan*, cached per module:

1. find every tensor this library constrains (only the constraints applied
   directly to the raw tensor: one stacked after another library's
   parametrization acts on that parametrization's output, which has no raw
   storage to write back to);
2. pack the plain dense ones of each device and dtype into flat buffers (see
   ``_packing``) so that tensors with identical constraints form runs, each
   projected by one kernel;
3. group the rest by device, dtype and constraint, for multi-tensor (foreach)
   kernels or a plain loop.

The plan is rebuilt before projecting when a module, parameter or buffer is
registered anywhere, when a constraint is added, removed or moved by
``module.to()`` (see ``_tracking``), or when a packed buffer lost its storage.
A packed tensor rebound elsewhere (``tensor.data = ...``) is caught after the
projection kernels are launched, so that on a GPU this per-tensor check runs
while they do: such a tensor is then projected on its own, and the plan rebuilt
for the next call. (The slot it left is projected too, with its own constraints:
nothing but a tensor that kept hold of that slot can see it.)
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Hashable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import _distributed, _kernels, _packing, _tracking
from .base import Constraint, SkipRecord, recordable, state_of
from .registration import constrained_slots

__all__ = ["hard_project"]


@torch.compiler.disable  # type: ignore[untyped-decorator]
@torch.no_grad()
def hard_project(module: nn.Module, *, foreach: bool | None = None, pack: bool = True) -> None:
    """Project, in place and without autograd, every tensor constrained in ``module``'s tree.

    For each constrained tensor the projection is written into the raw stored
    tensor, ``module.parametrizations[name].original``; the Parameter objects are
    kept. Call it after ``optimizer.step()`` (or let
    :func:`~torch_constraints.project_after_step` do so): it is the post-step
    weight clipping of WGAN and of Keras' ``kernel_constraint``, fused. Other
    parametrizations (``weight_norm``, ``orthogonal``, your own) are left alone.

    Tensors of one device and dtype are packed into flat buffers on the first call
    (their ``.data`` become views of the buffer), so that tensors with the same
    constraint are projected by one kernel. Runs in eager mode only.

    Args:
        module: the root of the module tree.
        foreach: for tensors outside a packed buffer, use PyTorch's multi-tensor
            (foreach) kernels (``True``), a loop over tensors (``False``), or foreach
            where the device has fast foreach kernels (``None``). Default: ``None``.
        pack: pack tensors into flat buffers and project each run with one kernel.
            ``False`` restores tensors packed earlier to storages of their own.
            Default: ``True``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_constraints import constrain, hard_project
        >>> layer = constrain(nn.Linear(3, 1), "weight", -0.1, 0.1)
        >>> with torch.no_grad():
        ...     _ = layer.parametrizations.weight.original.fill_(5.0)
        >>> hard_project(layer)
        >>> layer.parametrizations.weight.original
        Parameter containing:
        tensor([[0.1000, 0.1000, 0.1000]], requires_grad=True)
    """
    plan = _plans.get(module)
    if plan is None or not plan.is_current(pack):
        plan = _Plan.build(module, pack=pack, previous=plan)
        _plans[module] = plan
    if not plan.run(foreach):
        _plans[module] = _Plan.build(module, pack=pack, previous=plan)


@dataclass
class _Target:
    """A raw tensor and the constraints applied to it, in order."""

    tensor: Tensor
    constraints: tuple[Constraint, ...]

    def chain_key(self) -> Hashable | None:
        keys = tuple(c.fusion_key() for c in self.constraints)
        if any(key is None for key in keys):
            return None
        return (tuple(type(c) for c in self.constraints), keys)


@dataclass
class _Group:
    """Tensors outside packs that one multi-tensor call per constraint can project."""

    constraints: tuple[Constraint, ...]
    tensors: list[Tensor]


class _Plan:
    """What ``hard_project`` does for one root module, cached until the model changes."""

    def __init__(self, targets: list[_Target], packs: list[_packing.Pack], pack: bool) -> None:
        self.generation = _tracking.generation()
        self.pack = pack
        self.targets = targets
        self.tensors = [t.tensor for t in targets]
        self.ptrs = _kernels.data_ptrs(self.tensors)
        self.indices = list(range(len(self.tensors)))
        self.packs = packs
        packed = {id(t) for p in packs for t in p.tensors}
        loose = [t for t in targets if id(t.tensor) not in packed]
        self.groups = _groups(loose)
        # Few, usually none: tensors that could not be packed (strided, tied, DTensor).
        self.loose = [t.tensor for t in loose]
        self.loose_ptrs = _kernels.data_ptrs(self.loose)
        self.recorders = _recorders(targets)
        self.sharded = _distributed.any_dtensor(self.tensors)  # FSDP2 (see _distributed)

    @classmethod
    def build(cls, module: nn.Module, *, pack: bool, previous: _Plan | None) -> _Plan:
        _tracking.install_hooks()
        targets = _targets(module)
        kept: list[_packing.Pack] = []
        if previous is not None:
            if previous.pack == pack and previous.has_targets(targets) and previous.layout_intact():
                previous.generation = _tracking.generation()
                previous.recorders = _recorders(targets)
                return previous
            # Keep the packs whose members are all still projected the same way;
            # unpack the others. Targets outside the kept packs are packed anew.
            wanted = {id(t.tensor): t.constraints for t in targets} if pack else {}
            for old in previous.packs:
                if old.serves(wanted):
                    kept.append(old)
                else:
                    old.release()
        return cls(targets, kept + (_pack(module, targets) if pack else []), pack)

    def is_current(self, pack: bool) -> bool:
        """Whether the plan still describes the model (all but rebound pack members).

        Tensors outside packs are projected through their Parameter objects, so a
        rebinding cannot make them miss a projection; they are checked here only so
        that the plan is rebuilt (and, say, a tensor rebound to a contiguous one packed).
        """
        return (
            self.generation == _tracking.generation()
            and self.pack == pack
            and all(p.buffers_intact() for p in self.packs)
            and _kernels.data_ptrs(self.loose) == self.loose_ptrs
        )

    def layout_intact(self) -> bool:
        return _kernels.data_ptrs_equal(self.tensors, self.ptrs, self.indices)

    def has_targets(self, targets: list[_Target]) -> bool:
        return len(targets) == len(self.targets) and all(
            a.tensor is b.tensor and a.constraints == b.constraints
            for a, b in zip(targets, self.targets, strict=True)
        )

    def run(self, foreach: bool | None) -> bool:
        """Project every target once; return ``False`` if pack members had moved."""
        for p in self.packs:
            for run in p.runs:
                for constraint in run.constraints:
                    constraint.project_(run.view)
        with _distributed.plain_tensors_replicated() if self.sharded else contextlib.nullcontext():
            for group in self.groups:
                for constraint in group.constraints:
                    constraint.project_many_(group.tensors, foreach=foreach)
        # Groups hold the Parameters themselves; the runs above projected the slots
        # the pack members had when they were packed. Those rebound since need
        # their own projection.
        moved = [m for p in self.packs for m in p.moved_members()]
        for member in moved:
            for constraint in member.constraints:
                constraint.project_(member.tensor)
        if moved:  # a rebound tensor may no longer be recordable
            for record, tensor in self.recorders:
                record.projected = state_of(tensor)
            return False
        # base.state_of for each tensor, with the checks done once when the plan was built.
        steps = _tracking.optimizer_steps()
        for record, tensor in self.recorders:
            record.projected = (tensor._version, tensor.data_ptr(), steps)
        return True


_plans: weakref.WeakKeyDictionary[nn.Module, _Plan] = weakref.WeakKeyDictionary()


def _targets(module: nn.Module) -> list[_Target]:
    targets = []
    for slot in constrained_slots(module):
        constraints = tuple(slot.leading_constraints())
        if constraints:
            targets.append(_Target(slot.chain.original, constraints))
    return targets


def _pack(module: nn.Module, targets: list[_Target]) -> list[_packing.Pack]:
    """Pack every target that owns its storage alone; one pack per device and dtype."""
    storage_users: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        if _packing.is_packable(tensor):
            ptr = tensor.untyped_storage().data_ptr()
            storage_users[ptr] = storage_users.get(ptr, 0) + 1
    targets_per_tensor: dict[int, int] = {}
    for target in targets:
        targets_per_tensor[id(target.tensor)] = targets_per_tensor.get(id(target.tensor), 0) + 1
    by_group: dict[tuple[torch.device, torch.dtype], list[_packing.Member]] = {}
    for index, target in enumerate(targets):
        tensor = target.tensor
        if not _packing.is_packable(tensor) or targets_per_tensor[id(tensor)] != 1:
            continue
        if storage_users.get(tensor.untyped_storage().data_ptr()) != 1:
            continue  # tied to another tensor: packing would untie them
        key = target.chain_key()
        flat = key is not None and all(c.elementwise for c in target.constraints)
        member = _packing.Member(tensor, target.constraints, _run_key(target, index), flat)
        by_group.setdefault((tensor.device, tensor.dtype), []).append(member)
    return [_packing.Pack(members) for members in by_group.values()]


def _run_key(target: _Target, index: int) -> Hashable:
    """Equal for targets one view can project: same constraints (and shape, unless elementwise)."""
    key = target.chain_key()
    if key is None:
        return ("alone", index)
    if all(c.elementwise for c in target.constraints):
        return key
    return (key, tuple(target.tensor.shape), tuple(target.tensor.stride()))


def _groups(targets: list[_Target]) -> list[_Group]:
    groups: dict[Hashable, _Group] = {}
    seen: set[int] = set()
    for index, target in enumerate(targets):
        key = target.chain_key()
        if key is None or id(target.tensor) in seen:
            key = ("alone", index)  # unfusable, or a tensor tied to an earlier target
        seen.add(id(target.tensor))
        group_key = (target.tensor.device, target.tensor.dtype, key)
        group = groups.setdefault(group_key, _Group(target.constraints, []))
        group.tensors.append(target.tensor)
    return list(groups.values())


def _recorders(targets: list[_Target]) -> list[tuple[SkipRecord, Tensor]]:
    """Targets whose forward pass can skip its work right after a projection."""
    return [
        (t.constraints[0]._skip, t.tensor)
        for t in targets
        if len(t.constraints) == 1
        and t.constraints[0].identity_on_feasible
        and t.constraints[0]._skip.used_in_forward
        and recordable(t.tensor)
    ]
