"""``hard_project``: write projected values into the raw tensors, in place.

Each call starts from the model as it is now, and keeps nothing for the next:

1. walk the module tree and collect every raw tensor this library constrains,
   with its constraints (those of a parametrization applied directly to the raw
   tensor, and those recorded with ``parametrize=False``; a constraint stacked
   after another library's parametrization acts on that parametrization's output,
   which has no raw storage to write back to);
2. group the tensors by device, dtype and what their constraints compute now
   (:meth:`~torch_constraints.Constraint.fusion_key`, read from the constraints'
   current attributes);
3. hand each group to its constraints' multi-tensor kernel
   (:meth:`~torch_constraints.Constraint.project_many_`), which writes in place.

No tensor's storage, data pointer or aliasing changes. The walk costs about a
microsecond per constrained tensor with the model's objects in cache, a few when
they are not (as after an optimizer step);
:class:`~torch_constraints.PackedProjection` is the explicit opt-in that trades
that, and the per-tensor kernels, for flat buffers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable
from dataclasses import dataclass
from itertools import compress, repeat
from operator import attrgetter, is_not, itemgetter, methodcaller

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrize import ParametrizationList

from . import _distributed, _records
from .base import Constraint

__all__ = ["Group", "Target", "groups", "hard_project", "targets"]


@torch.compiler.disable  # type: ignore[untyped-decorator]
def hard_project(module: nn.Module, *, foreach: bool | None = None) -> None:
    """Project, in place and without autograd, every tensor constrained in ``module``'s tree.

    For each constrained tensor the projection is written into the raw stored
    tensor (``module.parametrizations[name].original``, or the parameter itself
    with ``parametrize=False``); the Parameter objects, their storages and every
    alias of them are kept. Call it after ``optimizer.step()`` (or let
    :func:`~torch_constraints.project_after_step` do so): it is the post-step
    weight clipping of WGAN and of Keras' ``kernel_constraint``, done with one
    multi-tensor kernel per group of identically constrained tensors. Other
    parametrizations (``weight_norm``, ``orthogonal``, your own) are left alone.
    Runs in eager mode only.

    Args:
        module: the root of the module tree.
        foreach: use PyTorch's multi-tensor (foreach) kernels (``True``), a loop
            over tensors (``False``), or the faster per device (``None``): foreach
            where the device has fused foreach kernels (CUDA); on the CPU, foreach
            for small tensors and the loop for large ones. Default: ``None``.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.

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
    if not isinstance(module, nn.Module):
        raise TypeError(f"hard_project: expected an nn.Module, got {type(module).__name__}")
    # torch.no_grad(), without its per-call context objects (tens of microseconds
    # cold), and nothing to do when grad mode is already off.
    grad_enabled = torch.is_grad_enabled()
    if grad_enabled:
        torch.set_grad_enabled(False)
    try:
        plan = _plan(module)
        sharded = _distributed.any_dtensor(t for _, tensors in plan for t in tensors)  # FSDP2
        with _distributed.plain_tensors_replicated() if sharded else contextlib.nullcontext():
            for constraints, tensors in plan:
                for constraint in constraints:
                    constraint.project_many_(tensors, foreach=foreach)
    finally:
        if grad_enabled:
            torch.set_grad_enabled(True)


_Plan = list[tuple[tuple[Constraint, ...], list[Tensor]]]


def _plan(module: nn.Module) -> _Plan:
    """``groups(targets(module))`` as ``(constraints, tensors)`` pairs, read now.

    The same walk, order and grouping as :func:`targets` and :func:`groups`, with
    fewer Python steps per module and per tensor: ``hard_project`` reads the whole
    tree on every call. Work common to many tensors runs in C loops (``map``, ``zip``,
    ``dict.fromkeys``) where the usual case allows it: every chain one constraint
    on one tensor, no tied tensors, one group or a few.
    """
    tensors, chains = _walk(module)
    if not tensors:
        return []
    if len(set(map(id, tensors))) == len(tensors) and set(map(len, chains)) == {1}:
        firsts = list(map(_first, chains))
        keys = list(map(_fusion_key, firsts))
        if all(map(is_not, keys, repeat(None))):
            # The key of groups(): (device, dtype, ((type, fusion key),)), flattened.
            keyed = list(
                zip(
                    map(_device, tensors),
                    map(_dtype, tensors),
                    map(type, firsts),
                    keys,
                    strict=True,
                )
            )
            unique = dict.fromkeys(keyed)
            if len(unique) == 1:
                return [(chains[0], tensors)]
            if len(unique) <= _FEW_GROUPS:  # one C loop per group
                return [
                    (chains[keyed.index(key)], list(compress(tensors, map(key.__eq__, keyed))))
                    for key in unique
                ]
        chain_keys: list[Hashable | None] = [
            None if key is None else ((type(first), key),)
            for first, key in zip(firsts, keys, strict=True)
        ]  # Target.chain_key(), from the fusion keys read once
    else:
        chain_keys = list(map(_chain_key, chains))
    return _grouped(tensors, chains, chain_keys)


#: Up to this many groups, ``_plan`` gathers each group's tensors in a C loop over
#: all tensors; beyond it one Python loop over the tensors costs less.
_FEW_GROUPS = 8
_first = itemgetter(0)
_second = itemgetter(1)
_fusion_key = methodcaller("fusion_key")
_device = attrgetter("device")
_dtype = attrgetter("dtype")
_state = attrgetter("__dict__")


def _grouped(
    tensors: list[Tensor], chains: list[tuple[Constraint, ...]], keys: list[Hashable | None]
) -> _Plan:
    """:func:`groups`, on the two lists of :func:`_walk` and the chains' keys."""
    plan: dict[Hashable, tuple[tuple[Constraint, ...], list[Tensor]]] = {}
    first: dict[int, int] = {}  # a tensor reachable under several names (tied) once
    for index, tensor in enumerate(tensors):
        key = keys[index]
        earlier = first.setdefault(id(tensor), index)
        if earlier != index:
            if chains[earlier] == chains[index] or (key is not None and key == keys[earlier]):
                continue  # the same projection: once is enough
            key = None  # other constraints on the same tensor: applied after the first
        group_key = (tensor.device, tensor.dtype, ("alone", index) if key is None else key)
        group = plan.get(group_key)
        if group is None:
            plan[group_key] = (chains[index], [tensor])
        else:
            group[1].append(tensor)
    return list(plan.values())


def _walk(module: nn.Module) -> tuple[list[Tensor], list[tuple[Constraint, ...]]]:
    """:func:`targets` as two lists: the tensors and their constraints, in that order."""
    found: list[nn.Module] = []  # the parametrization chains, read after the walk
    recorded_at: list[tuple[int, nn.Module, dict[str, tuple[Constraint, ...]]]] = []
    seen: set[int] = set()  # a module reachable under several names is read once
    stack = [module]
    pop, push, see, attribute = stack.pop, stack.extend, seen.add, _records.ATTRIBUTE
    while stack:
        owner = pop()
        key = id(owner)
        if key in seen:
            continue
        see(key)
        state = owner.__dict__
        children = state["_modules"]
        recorded = state.get(attribute)
        if recorded:  # before the module's chains, as in targets()
            recorded_at.append((len(found), owner, recorded))
        chains = children.get("parametrizations")
        if chains is None:
            if children:
                push([child for child in reversed(children.values()) if child is not None])
            continue
        found.extend(chains.__dict__["_modules"].values())
        if len(children) > 1:
            push(
                [
                    child
                    for name, child in reversed(children.items())
                    if child is not None and name != "parametrizations"
                ]
            )
    read = _read_chains(found) if found else []
    if not recorded_at and None not in read:  # (tuples and None: no tensor is compared)
        return list(map(_first, read)), list(map(_second, read))  # type: ignore[arg-type]
    tensors: list[Tensor] = []
    constraints: list[tuple[Constraint, ...]] = []
    done = 0
    for at, owner, recorded in recorded_at:
        if at > done:
            _add_chains(read[done:at], tensors, constraints)
            done = at
        for name, chain in recorded.items():
            tensor = _records.tensor(owner, name)
            if tensor is not None:
                tensors.append(tensor)
                constraints.append(chain)
    _add_chains(read[done:], tensors, constraints)
    return tensors, constraints


def _add_chains(
    read: list[tuple[Tensor, tuple[Constraint, ...]] | None],
    tensors: list[Tensor],
    constraints: list[tuple[Constraint, ...]],
) -> None:
    for entry in read:
        if entry is not None:
            tensors.append(entry[0])
            constraints.append(entry[1])


def _read_chains(chains: list[nn.Module]) -> list[tuple[Tensor, tuple[Constraint, ...]] | None]:
    """For each parametrization chain, its raw tensor and leading constraints, or ``None``."""
    if set(map(type, chains)) == {ParametrizationList}:
        # The usual case, in C loops: every chain holds one tensor and one constraint.
        states = list(map(_state, chains))
        if all(map(itemgetter("is_tensor"), states)):
            entries = list(map(itemgetter("_modules"), states))
            if set(map(len, entries)) == {1}:
                firsts = list(map(next, map(iter, map(dict.values, entries))))
                if all(map(isinstance, firsts, repeat(Constraint))):
                    originals: list[Tensor | None] = list(
                        map(dict.get, map(itemgetter("_parameters"), states), repeat("original"))
                    )
                    if all(map(is_not, originals, repeat(None))):
                        return list(zip(originals, zip(firsts), strict=True))  # type: ignore[arg-type]
    read: list[tuple[Tensor, tuple[Constraint, ...]] | None] = []
    for chain in chains:
        leading = _leading_constraints(chain)
        read.append((_original(chain), leading) if leading else None)
    return read


@dataclass(slots=True)
class Target:
    """A raw tensor, the constraints applied to it (in order), and where both were found."""

    tensor: Tensor
    constraints: tuple[Constraint, ...]
    owner: nn.Module
    name: str
    parametrized: bool

    def holder(self) -> nn.Module:
        """The module whose ``state_dict`` holds the tensor (the chain, when parametrized)."""
        if not self.parametrized:
            return self.owner
        chains = self.owner.__dict__["_modules"]["parametrizations"]
        return chains._modules[self.name]  # type: ignore[no-any-return]

    def chain_key(self) -> Hashable | None:
        """Equal for targets whose constraints project identically now; ``None``: unique."""
        return _chain_key(self.constraints)


def _chain_key(constraints: tuple[Constraint, ...]) -> Hashable | None:
    """See :meth:`Target.chain_key`."""
    if len(constraints) == 1:  # the common case, without the loop
        (constraint,) = constraints
        key = constraint.fusion_key()
        return None if key is None else ((type(constraint), key),)
    keys = []
    for constraint in constraints:
        key = constraint.fusion_key()
        if key is None:
            return None
        keys.append((type(constraint), key))
    return tuple(keys)


def targets(module: nn.Module) -> list[Target]:
    """Every raw tensor constrained in ``module``'s tree, with its constraints, read now."""
    found: list[Target] = []
    seen: set[int] = set()  # a module reachable under several names is read once
    stack = [module]
    while stack:
        owner = stack.pop()
        if id(owner) in seen:
            continue
        seen.add(id(owner))
        state = owner.__dict__
        children = state["_modules"]
        recorded = state.get(_records.ATTRIBUTE)
        if recorded:
            for name, constraints in recorded.items():
                tensor = _records.tensor(owner, name)
                if tensor is not None:
                    found.append(Target(tensor, constraints, owner, name, parametrized=False))
        chains = children.get("parametrizations")
        if chains is not None:
            for name, chain in chains._modules.items():
                leading = _leading_constraints(chain)
                if leading:
                    found.append(Target(_original(chain), leading, owner, name, parametrized=True))
        stack.extend(
            [
                child
                for name, child in reversed(children.items())
                if child is not None and name != "parametrizations"
            ]
        )
    return found


def _leading_constraints(chain: nn.Module) -> tuple[Constraint, ...]:
    """This library's constraints at the start of a parametrization chain."""
    if not isinstance(chain, ParametrizationList) or not chain.is_tensor:
        return ()
    leading = []
    for entry in chain._modules.values():
        if not isinstance(entry, Constraint):
            break
        leading.append(entry)
    return tuple(leading)


def _original(chain: nn.Module) -> Tensor:
    """``chain.original`` (a parameter or a buffer), without ``nn.Module.__getattr__``."""
    tensor: Tensor | None = chain._parameters.get("original")
    if tensor is None:
        tensor = chain._buffers["original"]
    assert tensor is not None  # a ParametrizationList of one tensor holds it
    return tensor


@dataclass(slots=True)
class Group:
    """Tensors that one multi-tensor call per constraint can project."""

    constraints: tuple[Constraint, ...]
    tensors: list[Tensor]

    def project_(self, foreach: bool | None) -> None:
        for constraint in self.constraints:
            constraint.project_many_(self.tensors, foreach=foreach)


def groups(found: list[Target]) -> list[Group]:
    """Group ``found`` by device, dtype and :meth:`Target.chain_key`; a tied tensor once."""
    result: dict[Hashable, Group] = {}
    first: dict[int, Target] = {}  # a tensor reachable under several names (tied) once
    for index, target in enumerate(found):
        key = target.chain_key()
        earlier = first.setdefault(id(target.tensor), target)
        if earlier is not target:
            if earlier.constraints == target.constraints or (
                key is not None and key == earlier.chain_key()
            ):
                continue  # the same projection: once is enough
            key = None  # other constraints on the same tensor: applied after the first
        if key is None:
            key = ("alone", index)
        group_key = (target.tensor.device, target.tensor.dtype, key)
        group = result.setdefault(group_key, Group(target.constraints, []))
        group.tensors.append(target.tensor)
    return list(result.values())
