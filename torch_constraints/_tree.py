"""Where constraints live in a module tree, and the one walk that finds them.

A constraint is attached to a tensor in one of two ways:

* ``parametrize=True``: it is an entry of the tensor's parametrization chain,
  ``module.parametrizations[name]`` (a
  :class:`~torch.nn.utils.parametrize.ParametrizationList`); the raw tensor is the
  chain's ``original``, the same Parameter object as before registration;
* ``parametrize=False``: it is recorded on the module, in a ``dict``
  ``{tensor_name: (constraint, ...)}`` stored in ``module.__dict__`` under
  :data:`ATTRIBUTE`. Nothing else about the module changes: its class, parameter
  names, ``state_dict`` keys and forward pass stay as they were. The raw tensor is
  the module's own parameter or buffer of that name, read by name on every walk, so a
  Parameter replaced by ``load_state_dict(assign=True)``, ``module.to()`` or FSDP2 is
  the one found. The dict is never changed in place: every change stores a new one,
  so a shallow ``copy.copy(module)`` cannot share constraints with its original;
  ``deepcopy``, ``pickle`` and ``torch.save(module)`` copy it with the module.

:func:`constrained` walks a tree and returns one :class:`Constrained` entry per
constrained tensor. ``hard_project``, :class:`~torch_constraints.PackedProjection`,
``named_constraints``, monitoring, tied-weight checks, checkpoints and the callbacks
all read the tree through it, afresh on every call.
"""

from __future__ import annotations

from typing import NamedTuple, cast

from torch import Tensor, nn
from torch.nn.utils.parametrize import ParametrizationList

from ._compat import BUFFERS, MODULES, PARAMETERS, buffers_of, children_of, parameters_of
from .base import Constraint

__all__ = [
    "ATTRIBUTE",
    "PACKED",
    "Constrained",
    "chain_of",
    "constrained",
    "find",
    "our_constraints",
    "raw_tensor",
    "record",
    "recorded",
    "release_pack",
    "unrecord",
]

#: The attribute of a module holding its ``parametrize=False`` constraints.
ATTRIBUTE = "_torch_constraints"


class Constrained(NamedTuple):
    """A tensor that carries at least one of this library's constraints.

    ``constraints`` are the ones applied, in order, directly to the raw tensor: what
    ``hard_project`` writes back. ``stacked`` are this library's constraints after
    another library's parametrization in the chain: they act on that
    parametrization's output in the forward pass only, and there is no raw tensor to
    write them back to. ``raw`` is ``None`` when nothing can be written (a chain of
    several original tensors, a recorded parameter set to ``None``).
    """

    prefix: str
    owner: nn.Module
    name: str
    raw: Tensor | None
    constraints: tuple[Constraint, ...]
    stacked: tuple[Constraint, ...]
    parametrized: bool

    @property
    def qualname(self) -> str:
        """The tensor's name from the root of the walk, such as ``"encoder.fc.weight"``."""
        return f"{self.prefix}.{self.name}" if self.prefix else self.name

    @property
    def all_constraints(self) -> tuple[Constraint, ...]:
        """Every constraint of this library on the tensor, in registration order."""
        return self.constraints + self.stacked


def constrained(module: nn.Module) -> list[Constrained]:
    """Every tensor of ``module``'s tree carrying one of this library's constraints.

    In module order (pre-order, as ``named_modules``), a module reachable under
    several names once; on each module the ``parametrize=False`` tensors first, then
    the parametrized ones. A tensor reachable under several names (tied weights)
    gives one entry per name, with the same ``raw``.

    ``hard_project`` calls this on every step: it reads each module's dicts by key
    (``_compat``'s names) and builds each entry with ``tuple.__new__``, the least
    Python a walk of thousands of modules can do.
    """
    found: list[Constrained] = []
    seen: set[int] = set()
    stack: list[tuple[str, nn.Module]] = [("", module)]
    pop, push, append, see = stack.pop, stack.extend, found.append, seen.add
    while stack:
        prefix, owner = pop()
        key = id(owner)
        if key in seen:
            continue
        see(key)
        state = owner.__dict__
        recorded_here = state.get(ATTRIBUTE)
        if recorded_here:
            parameters = state[PARAMETERS]
            for name, chain in recorded_here.items():
                raw = parameters.get(name)
                if raw is None:
                    raw = state[BUFFERS].get(name)
                append(_new(Constrained, (prefix, owner, name, raw, chain, (), False)))
        children = state[MODULES]
        if not children:
            continue
        chains = children.get("parametrizations")
        if chains is not None:
            for name, chain in chains.__dict__[MODULES].items():
                chain_state = chain.__dict__
                entries = chain_state[MODULES]
                if len(entries) == 1:  # one constraint, on one tensor ("original")
                    (first,) = entries.values()
                    raw = chain_state[PARAMETERS].get("original")
                    if raw is not None and isinstance(first, Constraint):
                        append(_new(Constrained, (prefix, owner, name, raw, (first,), (), True)))
                        continue
                entry = _read_chain(prefix, owner, name, chain)
                if entry is not None:
                    append(entry)
            if len(children) == 1:
                continue
        push(
            [
                (f"{prefix}.{name}" if prefix else name, child)
                for name, child in reversed(children.items())
                if child is not None and name != "parametrizations"
            ]
        )
    return found


_new = tuple.__new__


def find(module: nn.Module, name: str) -> Constrained | None:
    """The entry of ``module.<name>`` alone (no walk), or ``None`` if it is not constrained."""
    chain = recorded(module).get(name)
    if chain:
        return Constrained("", module, name, _own_tensor(module, name), chain, (), False)
    chains = children_of(module).get("parametrizations")
    if chains is None:
        return None
    return _read_chain("", module, name, children_of(chains).get(name))


def _read_chain(
    prefix: str, owner: nn.Module, name: str, chain: nn.Module | None
) -> Constrained | None:
    if not isinstance(chain, ParametrizationList):
        return None
    state = chain.__dict__
    entries = state[MODULES]
    if len(entries) == 1:  # the usual case: one constraint
        (first,) = entries.values()
        if not isinstance(first, Constraint):
            return None
        leading: tuple[Constraint, ...] = (first,)
        stacked: tuple[Constraint, ...] = ()
    else:
        ordered = list(entries.values())
        count = 0
        while count < len(ordered) and isinstance(ordered[count], Constraint):
            count += 1
        leading = tuple(e for e in ordered[:count] if isinstance(e, Constraint))
        stacked = tuple(e for e in ordered[count:] if isinstance(e, Constraint))
        if not leading and not stacked:
            return None
    raw = None
    if leading and state["is_tensor"]:
        raw = state[PARAMETERS].get("original")
        if raw is None:
            raw = state[BUFFERS].get("original")
    return _new(Constrained, (prefix, owner, name, raw, leading, stacked, True))


def _own_tensor(module: nn.Module, name: str) -> Tensor | None:
    state = module.__dict__
    tensor: Tensor | None = state[PARAMETERS].get(name)
    if tensor is None:
        tensor = state[BUFFERS].get(name)
    return tensor


# ----------------------------------------------------------------- packed tensors
#: The attribute of a tensor packed by a :class:`~torch_constraints.PackedProjection`:
#: an object whose ``unpack()`` gives every tensor of that pack its own storage back.
PACKED = "_torch_constraints_pack"


def release_pack(tensor: Tensor) -> None:
    """Unpack the :class:`~torch_constraints.PackedProjection` holding ``tensor``, if any.

    Registration and removal call it before changing a tensor's constraints, so that a
    pack never goes on projecting a tensor by constraints it no longer has, and its
    buffer is freed once nothing is constrained.
    """
    pack = getattr(tensor, "__dict__", {}).get(PACKED)
    if pack is not None:
        pack.unpack()


# ----------------------------------------------------------------- parametrize=False
def recorded(module: nn.Module) -> dict[str, tuple[Constraint, ...]]:
    """``module``'s ``parametrize=False`` constraints by tensor name (do not change it)."""
    return cast(dict[str, tuple[Constraint, ...]], module.__dict__.get(ATTRIBUTE, {}))


def record(module: nn.Module, name: str, constraint: Constraint) -> None:
    """Record ``constraint`` after those already recorded for ``module.<name>``."""
    records = dict(recorded(module))
    records[name] = (*records.get(name, ()), constraint)
    module.__dict__[ATTRIBUTE] = records


def unrecord(module: nn.Module, name: str) -> None:
    """Forget the ``parametrize=False`` constraints of ``module.<name>``."""
    records = dict(recorded(module))
    records.pop(name, None)
    if records:
        module.__dict__[ATTRIBUTE] = records
    else:
        module.__dict__.pop(ATTRIBUTE, None)


# ----------------------------------------------------------------- parametrize=True
def chain_of(module: nn.Module, name: str) -> ParametrizationList | None:
    """``module.parametrizations[name]``, or ``None`` if that tensor is not parametrized."""
    chains = children_of(module).get("parametrizations")
    chain = children_of(chains).get(name) if chains is not None else None
    return chain if isinstance(chain, ParametrizationList) else None


def our_constraints(module: nn.Module, name: str) -> list[Constraint]:
    """This library's entries in the parametrization chain of ``module.<name>``, in order."""
    chain = chain_of(module, name)
    return [] if chain is None else [e for e in chain if isinstance(e, Constraint)]


def raw_tensor(module: nn.Module, name: str) -> Tensor | None:
    """The stored tensor behind ``module.<name>``: its chain's ``original``, or itself."""
    chain = chain_of(module, name)
    if chain is None:
        return _own_tensor(module, name)
    if not chain.is_tensor:
        return None
    original: Tensor | None = parameters_of(chain).get("original")
    return original if original is not None else buffers_of(chain).get("original")
