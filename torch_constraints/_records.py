"""Constraints recorded without a parametrization: ``constrain(..., parametrize=False)``.

In this mode nothing about the module changes but one plain attribute: its class,
its parameter names, its ``state_dict`` keys and its forward pass stay as they
were. The constraints of each tensor are kept, by tensor name, in a ``dict`` in the
module's ``__dict__`` under :data:`ATTRIBUTE`; :func:`~torch_constraints.hard_project`
reads the tensor by that name each time, so a Parameter replaced by
``load_state_dict(assign=True)``, ``module.to()`` or FSDP2 is still the one projected.

The dict is never changed in place: every change stores a new one, so a shallow
``copy.copy(module)`` cannot share constraints with the module it was copied from.
``deepcopy``, ``pickle`` and ``torch.save(module)`` copy it with the module.
"""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from .base import Constraint

__all__ = ["ATTRIBUTE", "add", "constraints", "names", "remove", "tensor"]

#: The attribute of a module holding ``{tensor_name: (constraint, ...)}``.
ATTRIBUTE = "_torch_constraints"

Records = dict[str, tuple[Constraint, ...]]


def constraints(module: nn.Module, tensor_name: str) -> tuple[Constraint, ...]:
    """The constraints recorded for ``module.<tensor_name>``, in registration order."""
    return _records(module).get(tensor_name, ())


def names(module: nn.Module) -> list[str]:
    """The names of ``module``'s tensors that carry recorded constraints."""
    return list(_records(module))


def add(module: nn.Module, tensor_name: str, constraint: Constraint) -> None:
    """Record ``constraint`` after those already recorded for ``module.<tensor_name>``."""
    records = dict(_records(module))
    records[tensor_name] = (*records.get(tensor_name, ()), constraint)
    module.__dict__[ATTRIBUTE] = records


def remove(module: nn.Module, tensor_name: str) -> tuple[Constraint, ...]:
    """Forget the constraints of ``module.<tensor_name>``; return them."""
    records = dict(_records(module))
    removed = records.pop(tensor_name, ())
    if records:
        module.__dict__[ATTRIBUTE] = records
    else:
        module.__dict__.pop(ATTRIBUTE, None)
    return removed


def tensor(module: nn.Module, tensor_name: str) -> Tensor | None:
    """The parameter or buffer ``module.<tensor_name>``, read now, or ``None``."""
    found: Tensor | None = module._parameters.get(tensor_name)
    if found is None:
        found = module._buffers.get(tensor_name)
    return found


def _records(module: nn.Module) -> Records:
    return cast(Records, module.__dict__.get(ATTRIBUTE, {}))
