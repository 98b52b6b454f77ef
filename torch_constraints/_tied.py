"""Tied weights: one Parameter reachable under several names.

Hugging Face ties ``lm_head.weight`` to ``transformer.wte.weight``: one Parameter
object, two names. A constraint acts on the tensor, so

* with ``parametrize=False`` constraining it under any name constrains what every
  name sees (the projection is written into the one tensor); constraining it under
  another name too is accepted when the constraint is the same, and refused when it
  differs (one tensor cannot be held in two different sets by two names);
* a parametrization would change only the name it is registered under (the other
  names would go on reading the raw tensor) and makes serializers see two tensors
  sharing one storage, so it is refused, with the aliases listed and
  ``parametrize=False`` suggested.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrize import ParametrizationList

from .base import Constraint

__all__ = ["Aliases", "same_constraint"]


class Aliases:
    """Every parameter in ``root``'s tree, by tensor, with the modules and names holding it.

    One walk of the tree per registration call (``constrain_all`` shares it across
    its tensors); qualified names are worked out only for an error message.
    """

    def __init__(self, root: nn.Module) -> None:
        self._root = root
        self._holders: dict[int, list[tuple[nn.Module, str]]] = {}
        for owner, tensor_name, tensor in _tensors(root):
            self._holders.setdefault(id(tensor), []).append((owner, tensor_name))

    def others(
        self, tensor: Tensor, owner: nn.Module, tensor_name: str
    ) -> list[tuple[str, nn.Module, str]]:
        """The other names of ``tensor``, as (qualname, owner, name)."""
        holders = [
            (module, name)
            for module, name in self._holders.get(id(tensor), [])
            if not (module is owner and name == tensor_name)
        ]
        if not holders:
            return []
        prefixes: dict[int, str] = {}
        for prefix, module in self._root.named_modules(remove_duplicate=False):
            prefixes.setdefault(id(module), prefix)
        return [(_join(prefixes[id(module)], name), module, name) for module, name in holders]


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


def _tensors(root: nn.Module) -> Iterator[tuple[nn.Module, str, Tensor]]:
    """``(owner, public name, tensor)`` of every parameter in the tree, raw ones included."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        owner = stack.pop()
        if id(owner) in seen or isinstance(owner, (ParametrizationList, Constraint)):
            continue
        seen.add(id(owner))
        for name, tensor in owner._parameters.items():
            if tensor is not None:
                yield owner, name, tensor
        children = owner._modules
        chains = children.get("parametrizations")
        if chains is not None:
            for name, chain in chains._modules.items():
                original = chain._parameters.get("original") if chain is not None else None
                if original is not None:
                    yield owner, name, original
        stack.extend(
            [
                child
                for key, child in children.items()
                if child is not None and key != "parametrizations"
            ]
        )


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
