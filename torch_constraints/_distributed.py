"""DTensor support for ``hard_project``: sharded raw tensors (FSDP2, tensor parallelism).

With ``torch.distributed.fsdp.fully_shard`` the raw tensors are DTensors between
steps, and ``hard_project`` projects them where they are: an elementwise
constraint acts on each rank's shard, and a projection written with ordinary
torch operations on the DTensor (``torch.linalg.vector_norm(x, dim=...)``) reduces
across shards where it must, as DTensor does for any operation. The constraints'
own tensors (tensor bounds) are plain tensors, the same on every rank: while
projecting DTensors they are treated as replicated.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator

from torch import Tensor
from torch.nn import Parameter

__all__ = ["any_dtensor", "plain_tensors_replicated"]


def any_dtensor(tensors: Iterable[Tensor]) -> bool:
    """Whether any of ``tensors`` is a DTensor (without importing ``torch.distributed``)."""
    module = sys.modules.get("torch.distributed.tensor")
    dtensor = getattr(module, "DTensor", None)
    plain = (Tensor, Parameter)
    return dtensor is not None and any(
        type(t) not in plain and isinstance(t, dtensor) for t in tensors
    )


@contextlib.contextmanager
def plain_tensors_replicated() -> Iterator[None]:
    """Within the context, DTensor operations treat plain tensors as replicated."""
    from torch.distributed.tensor.experimental import implicit_replication

    with implicit_replication():
        yield
