"""Sharded raw tensors (DTensors: FSDP2, tensor parallelism) in ``hard_project`` and monitoring.

With ``torch.distributed.fsdp.fully_shard`` the raw tensors are DTensors between
steps. An elementwise constraint (a :class:`~torch_constraints.Box`) acts on each
rank's shard where it is; its own tensors (tensor bounds) are plain tensors, the same
on every rank, and are treated as replicated. Any other constraint (a norm of a slice
that may span shards, a matrix decomposition) sees the whole tensor: every rank
gathers it, projects it as it would a plain tensor, and keeps its own shard of the
result. That costs an all-gather per tensor, and is exact whatever the sharding.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor
from torch.nn import Parameter

from .base import Constraint

__all__ = ["any_dtensor", "full", "project_sharded_"]


def _dtensor_class() -> type | None:
    """``DTensor``, if ``torch.distributed.tensor`` was imported (nothing is imported here)."""
    return getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)


def any_dtensor(tensors: Iterable[Tensor]) -> bool:
    """Whether any of ``tensors`` is a DTensor."""
    return not _PLAIN.issuperset(map(type, tensors)) and _dtensor_class() is not None


_PLAIN = frozenset({Tensor, Parameter})


def full(tensor: Tensor) -> Tensor:
    """The whole tensor: a DTensor gathered on every rank, anything else as it is."""
    dtensor = _dtensor_class()
    if dtensor is not None and isinstance(tensor, dtensor):
        return tensor.full_tensor()  # type: ignore[attr-defined,no-any-return]
    return tensor


def project_sharded_(
    constraints: Sequence[Constraint], tensors: list[Tensor], foreach: bool | None
) -> None:
    """Project ``tensors`` (some of them DTensors) in place, shard by shard."""
    from torch.distributed.tensor import distribute_tensor
    from torch.distributed.tensor.experimental import implicit_replication

    if all(c.elementwise for c in constraints):
        with implicit_replication():
            for constraint in constraints:
                constraint.project_many_(tensors, foreach=foreach)
        return
    for tensor in tensors:
        whole = full(tensor)
        if whole is tensor:  # a plain tensor in the group
            for constraint in constraints:
                constraint.project_(tensor)
            continue
        whole = whole.clone()
        for constraint in constraints:
            constraint.project_(whole)
        sharded: Any = tensor
        mine = distribute_tensor(whole, sharded.device_mesh, sharded.placements, src_data_rank=None)
        sharded.to_local().copy_(mine.to_local())
