"""``hard_project``: write projected values into the raw tensors, in place.

Each call starts from the model as it is now, and keeps nothing for the next:

1. walk the module tree (``_tree.constrained``): one entry per constrained tensor,
   with its raw tensor and the constraints applied directly to it;
2. group the raw tensors by device, dtype and what their constraints compute now
   (:meth:`~torch_constraints.Constraint.fusion_key`, read from the constraints'
   current attributes); a tensor reachable under several names (tied) once;
3. hand each group to its constraints' multi-tensor kernel
   (:meth:`~torch_constraints.Constraint.project_many_`), which writes in place.

No tensor's storage, data pointer or aliasing changes.
:class:`~torch_constraints.PackedProjection` is the explicit opt-in that trades the
walk and the per-tensor kernels for flat buffers.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from itertools import repeat
from operator import attrgetter, is_, itemgetter, methodcaller

import torch
from torch import Tensor, nn

from . import _distributed, _tree
from .base import Constraint

__all__ = ["chain_key", "groups", "hard_project", "project_group_"]

#: Tensors projected together: the constraints, applied in order, and the tensors.
Group = tuple[tuple[Constraint, ...], list[Tensor]]


def hard_project(module: nn.Module, *, foreach: bool | None = None) -> None:
    """Project, in place and without autograd, every tensor constrained in ``module``'s tree.

    For each constrained tensor the projection is written into the raw stored
    tensor (``module.parametrizations[name].original``, or the parameter itself
    with ``parametrize=False``); the Parameter objects, their storages and every
    alias of them are kept. Call it after ``optimizer.step()`` (or let
    :func:`~torch_constraints.project_after_step` do so): it is the post-step
    weight clipping of WGAN and of Keras' ``kernel_constraint``, done with one
    multi-tensor kernel per group of identically constrained tensors. Other
    parametrizations (``weight_norm``, ``orthogonal``, your own) are left alone, and so
    are constraints stacked after one of them (they act on its output, which has no
    stored tensor). A model with nothing constrained is left as it is: the call is
    meant to run after every step, whatever the model holds at the time
    (:func:`~torch_constraints.project_after_step`, which is set up once, refuses such
    a model instead). Runs in eager mode only.

    Args:
        module: the root of the module tree.
        foreach: use PyTorch's multi-tensor (foreach) kernels (``True``), a loop
            over tensors (``False``), or the faster per device (``None``): foreach
            where the device has fused foreach kernels (CUDA); on the CPU, foreach
            for small tensors and the loop for large ones. Default: ``None``.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.
        ValueError: if a constraint cannot apply to its tensor now (a bound changed to
            a value the tensor's dtype cannot hold); the message names the tensor,
            which is left as it was.

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
    if torch.compiler.is_compiling():  # traced by torch.compile: a graph break, then eager
        _eager_hard_project(module, foreach)
        return
    _hard_project(module, foreach)


def _hard_project(module: nn.Module, foreach: bool | None) -> None:
    if not isinstance(module, nn.Module):
        raise TypeError(f"hard_project: expected an nn.Module, got {type(module).__name__}")
    found = _tree.constrained(module)
    # torch.no_grad() without its per-call context objects, for a call made every step.
    grad_enabled = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    try:
        for constraints, tensors in groups(found):
            project_group_(constraints, tensors, foreach)
    finally:
        torch.set_grad_enabled(grad_enabled)


#: What a compiled caller runs. Eager callers skip ``torch.compiler.disable``'s wrapper,
#: which costs about 5 us a call (a tenth of ``hard_project`` on a two-layer model).
_eager_hard_project = torch.compiler.disable(_hard_project)  # type: ignore[no-untyped-call]


def project_group_(
    constraints: Sequence[Constraint], tensors: list[Tensor], foreach: bool | None
) -> None:
    """Apply each constraint, in order, to every tensor of a group, in place."""
    if _distributed.any_dtensor(tensors):  # FSDP2: sharded raw tensors
        _distributed.project_sharded_(constraints, tensors, foreach)
        return
    for constraint in constraints:
        constraint.project_many_(tensors, foreach=foreach)


def chain_key(constraints: tuple[Constraint, ...]) -> Hashable | None:
    """Equal for chains that project identically now; ``None`` for a chain to project alone."""
    keys = []
    for constraint in constraints:
        key = constraint.fusion_key()
        if key is None:
            return None
        keys.append((type(constraint), key))
    return tuple(keys)


def groups(found: list[_tree.Constrained]) -> list[Group]:
    """Group the raw tensors of ``found`` by device, dtype and :func:`chain_key`.

    A tensor reachable under several names (tied) is projected once when its names
    carry the same projection; other constraints on it come after, alone.

    The usual model (one constraint per tensor, no ties, one device and dtype, as
    after ``constrain_all``) is recognised first with C-level loops over the
    entries, and grouped by set in one dictionary pass (none when every tensor has
    the same set): ``hard_project`` groups afresh on every step, and on thousands of
    small tensors a Python loop per tensor would cost as much as their projection.
    """
    raws: list[Tensor | None] = list(map(_raw, found))
    chains: list[tuple[Constraint, ...]] = list(map(_chain, found))
    if not raws or set(map(len, chains)) != {1} or any(map(is_, raws, repeat(None))):
        return _groups(found)
    firsts = list(map(_first, chains))
    keys = list(map(_fusion_key, firsts))
    devices, dtypes = list(map(_device, raws)), list(map(_dtype, raws))
    if (
        any(map(is_, keys, repeat(None)))
        or len(set(map(id, raws))) != len(raws)
        or devices.count(devices[0]) != len(devices)
        or dtypes.count(dtypes[0]) != len(dtypes)
        or raws[0].is_meta  # type: ignore[union-attr]
    ):
        return _groups(found)
    kinds = list(map(type, firsts))
    if keys.count(keys[0]) == len(keys) and kinds.count(kinds[0]) == len(kinds):
        return [(chains[0], raws)]  # type: ignore[list-item]
    grouped: dict[Hashable, Group] = {}
    for chain, raw, key in zip(chains, raws, zip(kinds, keys, strict=True), strict=True):
        group = grouped.get(key)
        if group is None:
            grouped[key] = (chain, [raw])  # type: ignore[list-item]
        else:
            group[1].append(raw)  # type: ignore[arg-type]
    return list(grouped.values())


_raw, _chain, _first = itemgetter(3), itemgetter(4), itemgetter(0)
_fusion_key = methodcaller("fusion_key")
_device, _dtype = attrgetter("device"), attrgetter("dtype")


def _groups(found: list[_tree.Constrained]) -> list[Group]:
    """:func:`groups`, one entry at a time: ties, stacks, several sets and devices."""
    result: dict[Hashable, Group] = {}
    first: dict[int, tuple[tuple[Constraint, ...], Hashable | None]] = {}
    for index, (_, _, _, raw, constraints, _, _) in enumerate(found):
        if raw is None or not constraints or raw.is_meta:
            continue
        if len(constraints) == 1:  # the usual case, without chain_key's loop
            (constraint,) = constraints
            key = constraint.fusion_key()
            key = None if key is None else ((type(constraint), key),)
        else:
            key = chain_key(constraints)
        earlier = first.get(id(raw))
        if earlier is None:
            first[id(raw)] = (constraints, key)
        else:
            if earlier[0] == constraints or (key is not None and key == earlier[1]):
                continue  # the same projection: once is enough
            key = None  # other constraints on the same tensor: applied after the first
        group_key = (raw.device, raw.dtype, ("alone", index) if key is None else key)
        group = result.get(group_key)
        if group is None:
            result[group_key] = (constraints, [raw])
        else:
            group[1].append(raw)
    return list(result.values())
