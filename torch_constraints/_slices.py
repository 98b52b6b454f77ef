"""Constraints that act on each slice of a tensor along ``dim``.

``dim`` names the dimension whose slices are each constrained, as in
:func:`torch.nn.utils.parametrizations.weight_norm`: ``dim=0`` on a ``Linear``
weight ``(out, in)`` constrains each row (each output unit), on a ``Conv2d``
weight ``(out, in, kh, kw)`` each filter. A tuple names several dimensions;
``None`` treats the whole tensor as one slice.

Once registered on a tensor of ``n`` dimensions, a constraint treats extra
leading dimensions of its input as a batch of such tensors, so that
``hard_project`` can project many same-shaped tensors with one call.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from torch import Tensor

from . import _validation
from .base import Constraint
from .functional import Dim

__all__ = ["SliceConstraint"]


class SliceConstraint(Constraint):
    """Base of the constraints applied to each slice along ``dim``."""

    def __init__(self, dim: Dim) -> None:
        super().__init__()
        self.dim = _validation.dims(type(self).__name__, dim)

    def check(self, x: Tensor, where: str) -> None:
        super().check(x, where)
        for d in self._dims():
            if not -x.ndim <= d < x.ndim:
                raise ValueError(
                    f"{where}: {type(self).__name__} dim={self.dim!r} is out of range for a "
                    f"tensor with {x.ndim} dimension(s)"
                )

    def project_many_(self, xs: Sequence[Tensor], *, foreach: bool | None = None) -> None:
        """Project in place, stacking same-shaped tensors for one batched call per shape."""
        del foreach
        self._project_stacked_(xs)

    def slices(self, x: Tensor) -> Dim:
        """The ``dim`` argument for the kernels: ``self.dim``, shifted past any batch dims."""
        batch = self.batch_ndim(x)
        if batch == 0:
            return self.dim
        event = x.ndim - batch
        return tuple(range(batch)) + tuple(batch + d % event for d in self._dims())

    def fusion_key(self) -> Hashable | None:
        if self._event_ndim is None:
            return None
        config = tuple(sorted((k, v) for k, v in self.get_config().items() if k != "dim"))
        dims = tuple(sorted(d % max(self._event_ndim, 1) for d in self._dims()))
        return (type(self).__name__, config, self._event_ndim, self.dim is None, dims)

    def _dims(self) -> tuple[int, ...]:
        if self.dim is None:
            return ()
        return (self.dim,) if isinstance(self.dim, int) else self.dim
