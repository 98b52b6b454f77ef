"""Tied weights: one tensor reachable under several names.

Hugging Face ties ``lm_head.weight`` to ``transformer.wte.weight``: one Parameter
object, two names. A constraint acts on the tensor, so

* with ``parametrize=False``, constraining it under any name constrains what every
  name sees (the projection is written into the one tensor). Another name may carry
  the same constraint (one class, equal configs); a different one is refused: one
  tensor cannot be held in two different sets;
* a parametrization changes only the name it is registered under: the other names go
  on reading the raw tensor, and serializers see two tensors sharing a storage. It is
  refused, with the aliases listed and ``parametrize=False`` suggested.

The other names of a tensor are found two ways. Within the tree a call is given, by
reading every parameter and buffer of it (:func:`aliases`). Beyond it (two calls
through two submodules, ``constrain(model.transformer.wte, ...)`` then
``constrain(model.lm_head, ...)``), by a mark on the tensor object itself: the
modules and names through which this library constrained it. The mark is state of the
tensor, not of the process: it survives ``register_parametrization`` (which keeps the
Parameter object) and pickling, and each entry is checked against its module every
time it is read (an entry whose module no longer constrains that very tensor, as after
PyTorch's ``remove_parametrizations``, is ignored). ``deepcopy`` does not copy it
(``Parameter.__deepcopy__`` copies the data alone): in a deep copy, ties are found
within the tree of each call only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import _tree
from ._validation import describe, is_internal, type_name
from .base import Constraint

__all__ = ["aliases", "check_new", "check_tree", "mark", "same_constraint", "unmark"]

#: The attribute of a constrained tensor listing ``(module, name)`` pairs constraining it.
MARK = "_torch_constraints_owners"


def mark(tensor: Tensor, owner: nn.Module, name: str) -> None:
    """Note on ``tensor`` that ``owner.<name>`` constrains it."""
    entries = [e for e in _entries(tensor) if not (e[0] is owner and e[1] == name)]
    setattr(tensor, MARK, [*entries, (owner, name)])


def unmark(tensor: Tensor, owner: nn.Module, name: str) -> None:
    """Drop ``owner.<name>`` from ``tensor``'s mark."""
    entries = [e for e in _entries(tensor) if not (e[0] is owner and e[1] == name)]
    if entries:
        setattr(tensor, MARK, entries)
    elif MARK in getattr(tensor, "__dict__", {}):
        delattr(tensor, MARK)


def _entries(tensor: Tensor) -> list[tuple[nn.Module, str]]:
    return list(getattr(tensor, "__dict__", {}).get(MARK, ()))


def _constrained_elsewhere(tensor: Tensor, owner: nn.Module, name: str) -> list[_tree.Constrained]:
    """The other names that constrain ``tensor`` now, from its mark, each checked."""
    found = []
    for other, other_name in _entries(tensor):
        if other is owner and other_name == name:
            continue
        entry = _tree.find(other, other_name)
        if entry is not None and entry.raw is tensor:
            found.append(entry)
    return found


def aliases(root: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """Every tensor of ``root``'s tree by ``id``: the ``(qualname, module, name)`` holding it.

    Public names: a parametrized tensor is listed under ``module.<name>``, not under
    ``parametrizations.<name>.original``.
    """
    found: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for prefix, owner in root.named_modules(remove_duplicate=False):
        if is_internal(owner):
            continue
        held = [*owner.named_parameters(recurse=False), *owner.named_buffers(recurse=False)]
        for name, tensor in held:
            found.setdefault(id(tensor), []).append((_join(prefix, name), owner, name))
        for name in list(getattr(owner, "parametrizations", {})):
            tensor = _tree.raw_tensor(owner, name)
            if tensor is not None:
                found.setdefault(id(tensor), []).append((_join(prefix, name), owner, name))
    return found


def check_new(
    template: Constraint,
    raw: Tensor,
    owner: nn.Module,
    name: str,
    where: str,
    parametrized: bool,
    in_root: dict[int, list[tuple[str, nn.Module, str]]],
) -> None:
    """Refuse constraining ``owner.<name>`` if its tensor is tied and cannot take it.

    ``in_root`` is :func:`aliases` of the tree the call was given. Changes nothing.
    """
    labels: dict[tuple[int, str], str] = {}
    for qualname, module, other_name in in_root.get(id(raw), []):
        if not (module is owner and other_name == name):
            labels[(id(module), other_name)] = repr(qualname)
    constrained = _constrained_through(raw, owner, name, in_root)
    for entry in constrained:
        labels.setdefault((id(entry.owner), entry.name), describe(entry.owner, entry.name))
    if not labels:
        return
    if parametrized:
        raise ValueError(
            f"{where} is one Parameter with {', '.join(labels.values())} (tied weights): a "
            "parametrization would constrain this name only, and the others would read the "
            "raw tensor. Use parametrize=False, which constrains the tensor itself, for every name"
        )
    for entry in constrained:
        label = labels[(id(entry.owner), entry.name)]
        if entry.parametrized:
            raise ValueError(
                f"{where} is one Parameter with {label}, which carries a parametrization; "
                "unconstrain it there first, then constrain the tensor once with "
                "parametrize=False"
            )
        if not any(same_constraint(c, template) for c in entry.constraints):
            raise ValueError(
                f"{where} is one Parameter with {label}, already constrained by "
                f"{', '.join(map(repr, entry.constraints))}; two names of one tensor cannot "
                f"hold it in different sets: constrain it under one name (add {template!r} "
                "there to stack it)"
            )


def _constrained_through(
    raw: Tensor,
    owner: nn.Module,
    name: str,
    in_root: dict[int, list[tuple[str, nn.Module, str]]],
) -> list[_tree.Constrained]:
    """The other names of ``raw`` that carry constraints now: in the root and from the mark."""
    found: dict[tuple[int, str], _tree.Constrained] = {}
    for _, module, other_name in in_root.get(id(raw), []):
        if module is owner and other_name == name:
            continue
        entry = _tree.find(module, other_name)
        if entry is not None:
            found[(id(module), other_name)] = entry
    for entry in _constrained_elsewhere(raw, owner, name):
        found.setdefault((id(entry.owner), entry.name), entry)
    return list(found.values())


def check_tree(
    root: nn.Module, in_root: dict[int, list[tuple[str, nn.Module, str]]] | None = None
) -> None:
    """Refuse a tree in which a constrained tensor is tied in a way no projection can honour.

    Raises ``ValueError`` when a parametrized tensor is read under another name
    (unconstrained, or through another chain), and when two names of one tensor
    carry different ``parametrize=False`` constraints. Changes nothing. ``in_root``
    is :func:`aliases` of ``root`` when the caller has it already.
    """
    in_root = aliases(root) if in_root is None else in_root
    by_tensor: dict[int, list[_tree.Constrained]] = {}
    for entry in _tree.constrained(root):
        if entry.raw is not None:
            by_tensor.setdefault(id(entry.raw), []).append(entry)
    for tensor_id, entries in by_tensor.items():
        names = in_root.get(tensor_id, [])
        if len(names) < 2:
            continue
        for entry in entries:
            if not entry.parametrized:
                continue
            readers = [q for q, m, n in names if not (m is entry.owner and n == entry.name)]
            raise ValueError(
                f"{entry.qualname} ({type_name(entry.owner)}) is parametrized, but the same "
                f"tensor is read under {', '.join(map(repr, readers))} without that "
                "parametrization (tied weights): those modules see the raw values. "
                f"unconstrain {entry.qualname!r} and constrain the tensor with "
                "parametrize=False, which acts on the tensor every name reads"
            )
        first = entries[0]
        for entry in entries[1:]:
            if not _same_chain(first.constraints, entry.constraints):
                raise ValueError(
                    f"{first.qualname} and {entry.qualname} are one tensor (tied weights) "
                    f"constrained by different sets ({first.constraints!r} and "
                    f"{entry.constraints!r}); unconstrain one of the names"
                )


def _same_chain(a: tuple[Constraint, ...], b: tuple[Constraint, ...]) -> bool:
    return len(a) == len(b) and all(map(same_constraint, a, b))


def same_constraint(a: Constraint, b: Constraint) -> bool:
    """Whether ``a`` and ``b`` project identically: one class, equal configs."""
    if type(a) is not type(b) or a.straight_through != b.straight_through:
        return False
    config_a, config_b = a.get_config(), b.get_config()
    if config_a.keys() != config_b.keys():
        return False
    for key, value in config_a.items():
        other = config_b[key]
        if isinstance(value, Tensor) or isinstance(other, Tensor):
            if not (
                isinstance(value, Tensor)
                and isinstance(other, Tensor)
                and value.shape == other.shape
                and torch.equal(value.detach().cpu().double(), other.detach().cpu().double())
            ):
                return False
        elif value != other:
            return False
    return True


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
