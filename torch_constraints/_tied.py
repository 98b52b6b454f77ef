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
from torch.nn.utils import parametrize
from torch.nn.utils.parametrize import ParametrizationList

from .base import Constraint

__all__ = ["Aliases", "same_constraint"]


class Aliases:
    """The public names of every parameter in ``root``'s tree, by tensor."""

    def __init__(self, root: nn.Module) -> None:
        self._names: dict[int, list[tuple[str, nn.Module, str]]] = {}
        for qualname, owner, tensor_name, tensor in _named_tensors(root):
            self._names.setdefault(id(tensor), []).append((qualname, owner, tensor_name))

    def others(
        self, tensor: Tensor, owner: nn.Module, tensor_name: str
    ) -> list[tuple[str, nn.Module, str]]:
        """The other names of ``tensor`` than ``owner.<tensor_name>``."""
        return [
            entry
            for entry in self._names.get(id(tensor), [])
            if not (entry[1] is owner and entry[2] == tensor_name)
        ]


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


def _named_tensors(root: nn.Module) -> Iterator[tuple[str, nn.Module, str, Tensor]]:
    """``(public qualified name, owner, name, tensor)`` of every parameter in the tree."""
    for prefix, owner in root.named_modules(remove_duplicate=False):
        if isinstance(owner, (ParametrizationList, Constraint)):
            continue
        for name, tensor in owner._parameters.items():
            if tensor is not None:
                yield _join(prefix, name), owner, name, tensor
        if parametrize.is_parametrized(owner):
            chains = owner._modules["parametrizations"]
            assert chains is not None
            for name, chain in chains._modules.items():
                original = chain._parameters.get("original") if chain is not None else None
                if original is not None:
                    yield _join(prefix, name), owner, name, original


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
