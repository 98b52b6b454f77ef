r"""Monitoring for training logs: how many weights sit at a bound, how far raw values drift.

Both functions read the raw stored tensors, compute one number per constrained
tensor on its device, and copy all the numbers to the host at once: one device
synchronisation per call, however many tensors (one per device when the model
spans several). Neither changes the model.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from . import _distributed, _tree
from .base import Constraint
from .box import Box
from .functional import box_bounds

__all__ = ["saturation", "violation"]


def _raw_targets(module: nn.Module) -> Iterator[tuple[str, Tensor, tuple[Constraint, ...]]]:
    """Yield ``(name, raw value, constraints applied to it in order)`` in ``module``'s tree.

    A sharded tensor (FSDP2's DTensor) is gathered whole, the same on every rank.
    """
    for entry in _tree.constrained(module):
        if entry.constraints and entry.raw is not None:
            yield entry.qualname, _distributed.full(entry.raw.detach()), entry.constraints


def _project(x: Tensor, constraints: tuple[Constraint, ...]) -> Tensor:
    for constraint in constraints:
        x = constraint.project(x)
    return x


def _to_host(names: list[str], values: list[Tensor]) -> dict[str, float]:
    if not values:
        return {}
    by_device: dict[torch.device, list[int]] = {}
    for i, value in enumerate(values):
        by_device.setdefault(value.device, []).append(i)
    result: list[float] = [0.0] * len(values)
    for indices in by_device.values():
        host = torch.stack([values[i].double() for i in indices]).tolist()  # the sync
        for i, number in zip(indices, host, strict=True):
            result[i] = number
    return dict(zip(names, result, strict=True))


@torch.no_grad()
def saturation(module: nn.Module) -> dict[str, float]:
    r"""Return, for each box-constrained tensor, the share of its entries at a bound.

    For each tensor carrying a :class:`~torch_constraints.Box` (or
    :class:`~torch_constraints.NonNeg`), with :math:`v = P(\text{raw})` its value
    after all its constraints (the raw value itself right after
    :func:`~torch_constraints.hard_project`), and :math:`l, h` the bounds in the
    tensor's dtype (rounded inward, as the projection applies them):

    .. math::

        \text{saturation} = \frac{1}{n} \#\{i : v_i \le l^+ \text{ or } v_i \ge h^-\},

    with :math:`l^+` and :math:`h^-` the next representable numbers inside
    (within one ulp of a bound). WGAN's clipped critic drifts towards 1.

    Args:
        module: the root of the module tree.

    Returns:
        ``{qualified tensor name: share in [0, 1]}``, in module order.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_constraints import constrain, saturation
        >>> layer = constrain(nn.Linear(4, 2), "weight", -0.5, 0.5)
        >>> with torch.no_grad():
        ...     _ = layer.parametrizations.weight.original.copy_(
        ...         torch.tensor([[9.0, -9.0, 0.1, 0.2], [0.3, 0.0, 0.5, -0.2]]))
        >>> saturation(layer)
        {'weight': 0.375}
    """
    names: list[str] = []
    values: list[Tensor] = []
    for name, raw, constraints in _raw_targets(module):
        boxes = [c for c in constraints if isinstance(c, Box)]
        if not boxes:
            continue
        v = _project(raw, constraints)
        at_bound = torch.zeros_like(v, dtype=torch.bool)
        for box in boxes:
            lo, hi = box_bounds(v, box.min, box.max)
            for bound, inward in ((lo, torch.inf), (hi, -torch.inf)):
                if bound is None:
                    continue
                b = torch.as_tensor(bound, dtype=v.dtype, device=v.device)
                limit = torch.nextafter(b, torch.full_like(b, inward))
                at_bound |= v <= limit if inward > 0 else v >= limit
        names.append(name)
        values.append(at_bound.sum(dtype=torch.float64) / max(v.numel(), 1))
    return _to_host(names, values)


@torch.no_grad()
def violation(module: nn.Module) -> dict[str, float]:
    r"""Return, for each constrained tensor, how far its raw value is from the set.

    .. math::

        \text{violation} = \max_i \lvert \text{raw}_i - P(\text{raw})_i \rvert ,

    with :math:`P` the tensor's constraints applied in order (each one's exact
    projection). Right after :func:`~torch_constraints.hard_project` it is 0 for
    the elementwise and norm sets, and the rounding of one more decomposition for
    the matrix sets: :math:`P` is computed afresh, with a new SVD (or
    eigendecomposition) of a weight whose top singular values sit on the radius
    (3e-7 to 5e-7 in float32, 1e-15 to 3e-15 in float64 for radius-1 weights; see
    :doc:`matrix-constraints`). It grows when the raw values drift outside, as they
    do under ``straight_through=True`` or when a model is trained without
    ``hard_project`` and constrained only in its forward pass. Costs one projection
    of every constrained tensor (an SVD for the matrix constraints); a sharded
    tensor (FSDP2) is gathered first.

    Args:
        module: the root of the module tree.

    Returns:
        ``{qualified tensor name: max absolute deviation}``, in module order.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_constraints import constrain, violation
        >>> layer = constrain(nn.Linear(2, 1), "weight", -1, 1, straight_through=True)
        >>> with torch.no_grad():
        ...     _ = layer.parametrizations.weight.original.copy_(torch.tensor([[1.75, -0.5]]))
        >>> violation(layer)
        {'weight': 0.75}
    """
    names: list[str] = []
    values: list[Tensor] = []
    for name, raw, constraints in _raw_targets(module):
        names.append(name)
        values.append((raw - _project(raw, constraints)).abs().amax() if raw.numel() else raw.sum())
    return _to_host(names, values)
