r"""Checkpoints: what a constrained model saves and loads, and a plain export.

A constrained model's ``state_dict()`` holds the raw tensors
(``fc.parametrizations.weight.original``) and the constraints' own state (tensor
bounds), and records :data:`CHECKPOINT_FORMAT` in the metadata. Loading it back is
exact, bit for bit. Two more directions work out of the box:

* **unconstrained → constrained**: ``model.load_state_dict(plain_sd)`` accepts the
  checkpoint of the same model without constraints (keys ``fc.weight``); the
  values are projected, in the dtype they are stored in, so the stored raw value
  is feasible. A load pre-hook does it, registered by
  :func:`~torch_constraints.constrain` on each module owning a constrained tensor.
* **constrained → unconstrained**: :func:`plain_state_dict` exports the values
  the forward pass sees under the plain names, for deployment without this
  library.

Loading refuses, with a ``ValueError`` and before the first tensor is written, a
checkpoint whose format this release cannot read (:data:`CHECKPOINT_FORMAT`) or
whose constraint state is invalid (a :class:`~torch_constraints.Box`'s tensor
bounds with NaN or ``min > max``, or of another shape), when it is loaded into the
module given to :func:`~torch_constraints.constrain` or
:func:`~torch_constraints.constrain_all`. Loaded through a wrapper (``outer`` holding
that module), it is refused all the same, but only the bounds are all checked before
the first copy: see ``torch_constraints._state_hooks`` for the details. Other faults
(missing keys, shapes of unconstrained tensors) are reported by PyTorch as usual,
after it has copied what it could.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, cast

import torch
from torch import Tensor, nn

from ._state_hooks import FORMAT, FORMAT_KEY
from .registration import chain_of, constrained_slots, type_name

__all__ = ["CHECKPOINT_FORMAT", "plain_state_dict"]

#: The checkpoint format this release writes, and the newest it reads. It is stored
#: per constrained module, under ``state_dict._metadata[module_prefix]["torch_constraints"]``;
#: loading a checkpoint of a newer format raises ``ValueError`` saying to upgrade, and
#: any other value than this int (or no entry) raises ``ValueError`` too, before
#: anything is written (see the module's notes on atomic loading).
CHECKPOINT_FORMAT: int = FORMAT


@torch.no_grad()
def plain_state_dict(module: nn.Module, *, prefix: str = "") -> dict[str, Tensor]:
    """Return a ``state_dict`` for the unconstrained model: plain names, constrained values.

    Every tensor that carries a constraint of this library appears under its plain
    name (``fc.weight``, not ``fc.parametrizations.weight.original``) with the
    value the forward pass sees, so the result loads with ``strict=True`` into the
    same architecture built without constraints, and needs no torch-constraints to
    use. The constraints' own state (tensor bounds) is left out. Everything else is
    exactly ``module.state_dict()``, metadata included. Constrained values are new
    tensors (never views of the raw parameters), so writing the result to disk
    writes each value once.

    A tensor whose constraint is stacked on another library's parametrization is
    exported with the value of the whole chain; tensors that carry only other
    libraries' parametrizations are left as they are.

    Args:
        module: the constrained model (or any module tree).
        prefix: prepended to every key, as in :meth:`torch.nn.Module.state_dict`.
            Default: ``""``.

    Returns:
        An ordered ``dict`` from names to tensors, with ``_metadata``.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_constraints import constrain, plain_state_dict
        >>> model = nn.Sequential(nn.Linear(3, 2))
        >>> _ = constrain(model, "0.weight", -0.1, 0.1)
        >>> sd = plain_state_dict(model)
        >>> sorted(sd)
        ['0.bias', '0.weight']
        >>> plain = nn.Sequential(nn.Linear(3, 2))
        >>> plain.load_state_dict(sd)
        <All keys matched successfully>
        >>> torch.equal(plain[0].weight, model[0].weight)
        True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"plain_state_dict: expected an nn.Module, got {type_name(module)}")
    state = module.state_dict(prefix=prefix)
    metadata: dict[str, dict[str, Any]] = OrderedDict(
        (key, dict(value)) for key, value in getattr(state, "_metadata", {}).items()
    )
    # The first key of each chain is replaced by the plain entry, the others dropped.
    replaced: dict[str, tuple[str, Tensor]] = {}
    dropped: set[str] = set()
    appended: list[tuple[str, Tensor]] = []
    exported: dict[str, tuple[nn.Module, set[str]]] = {}
    for slot in constrained_slots(module):
        owner = prefix + slot.qualname[: len(slot.qualname) - len(slot.tensor_name)]
        chain_prefix = f"{owner}parametrizations.{slot.tensor_name}."
        keys = list(slot.chain.state_dict(prefix=chain_prefix, keep_vars=True))
        entry = (prefix + slot.qualname, _forward_value(slot.module, slot.tensor_name))
        if keys:
            replaced[keys[0]] = entry
            dropped.update(keys[1:])
        else:
            appended.append(entry)
        exported.setdefault(owner, (slot.module, set()))[1].add(slot.tensor_name)
    result: OrderedDict[str, Tensor] = OrderedDict()
    for key, tensor in state.items():
        if key in replaced:
            plain_key, value = replaced[key]
            result[plain_key] = value
        elif key not in dropped:
            result[key] = tensor
    result.update(appended)
    _drop_metadata(metadata, exported)
    result._metadata = metadata  # type: ignore[attr-defined]
    return result


def _forward_value(owner: nn.Module, tensor_name: str) -> Tensor:
    value: Tensor = getattr(owner, tensor_name).detach()
    chain = chain_of(owner, tensor_name)
    originals = [*chain.parameters(recurse=False), *chain.buffers(recurse=False)]
    if any(_shares_storage(value, t) for t in originals):
        value = value.clone()  # e.g. the forward pass returned the raw tensor itself
    return value


def _shares_storage(a: Tensor, b: Tensor) -> bool:
    try:
        return bool(a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
        return False


def _drop_metadata(
    metadata: dict[str, dict[str, Any]], exported: dict[str, tuple[nn.Module, set[str]]]
) -> None:
    """Drop the metadata entries of exported chains, and their owners' format entries."""
    chains: set[str] = set()
    parents: set[str] = set()
    for owner, (owner_module, names) in exported.items():
        chains.update(f"{owner}parametrizations.{name}" for name in names)
        if set(cast(nn.ModuleDict, owner_module.parametrizations)) <= names:
            parents.add(f"{owner}parametrizations")
        owner_entry = metadata.get(owner[:-1])
        if owner_entry is not None:
            owner_entry.pop(FORMAT_KEY, None)
    for key in list(metadata):
        parts = key.split(".")
        if key in parents or any(
            part == "parametrizations" and ".".join(parts[: i + 2]) in chains
            for i, part in enumerate(parts)
        ):
            del metadata[key]
