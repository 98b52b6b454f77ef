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

import math
from collections.abc import Hashable, Sequence
from operator import attrgetter
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import _validation
from .base import Constraint, _init_parameters
from .functional import Dim, _reduced_dims

__all__ = ["SliceConstraint"]


class SliceConstraint(Constraint):
    """Base of the constraints applied to each slice along ``dim``.

    A subclass implements :meth:`_kernel` (one call into the functional kernels);
    :meth:`project`, :meth:`project_` and :meth:`project_many_` come from it.
    """

    _bypass_project = ("project_", "project_many_")
    #: The constructor's arguments: what :meth:`fusion_key` compares.
    _key_names: ClassVar[tuple[str, ...]] = ()
    #: Reads ``(self._event_ndim, self.dim, *those arguments)`` in one C-level call.
    _key_values: ClassVar[attrgetter[tuple[Any, ...]]] = attrgetter("_event_ndim", "dim")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._key_names = tuple(_init_parameters(cls))
        cls._key_values = attrgetter("_event_ndim", "dim", *cls._key_names)

    def __init__(self, dim: Dim) -> None:
        super().__init__()
        self.dim = _validation.dims(type(self).__name__, dim)

    def _kernel(self, x: Tensor, dim: Dim, *, inplace: bool) -> Tensor | None:
        """The projection of ``x``'s slices along ``dim``: a new tensor, or in place.

        In place it returns ``x``, or ``None`` when it changed nothing.
        """
        raise NotImplementedError

    def _slices_may_be_empty(self) -> bool:
        """Whether the set of a slice of 0 elements holds a point (the empty vector)."""
        return True

    def project(self, x: Tensor) -> Tensor:
        r"""Return :math:`P_C(x)`, slice by slice, differentiably and without modifying ``x``."""
        dim = self.dim if self._event_ndim in (None, x.ndim) else self.slices(x)
        result = self._kernel(x, dim, inplace=False)
        assert result is not None
        return result

    def project_(self, x: Tensor) -> Tensor:
        """Write :math:`P_C(x)` into ``x``, slice by slice, and return ``x``."""
        dim = self.dim if self._event_ndim in (None, x.ndim) else self.slices(x)
        if torch.is_grad_enabled():
            with torch.no_grad():
                self._kernel(x, dim, inplace=True)
        else:  # (hard_project: no context object per tensor)
            self._kernel(x, dim, inplace=True)
        return x

    def project_many_(self, xs: Sequence[Tensor], *, foreach: bool | None = None) -> None:
        """Project in place, stacking small same-shaped tensors for one batched call per shape.

        A stack is copied back only when the projection changed it.
        """

        def project_stack(stack: Tensor) -> bool:
            return self._kernel(stack, self.slices(stack), inplace=True) is not None

        self._project_stacked_(xs, project_stack)

    def check(self, x: Tensor, where: str) -> None:
        super().check(x, where)
        for d in self._dims():
            if not -x.ndim <= d < x.ndim:
                raise ValueError(
                    f"{where}: {type(self).__name__} dim={self.dim!r} is out of range for a "
                    f"tensor with {x.ndim} dimension(s)"
                )
        reduced = _reduced_dims(x, self.dim)
        size = math.prod(x.shape[d] for d in reduced)
        count = math.prod(x.shape[d] for d in range(x.ndim) if d not in reduced)
        if size == 0 and count > 0 and not self._slices_may_be_empty():
            raise ValueError(
                f"{where}: {type(self).__name__} cannot constrain a tensor of shape "
                f"{tuple(x.shape)}: its slices have no elements, and its set holds no "
                "point of 0 elements"
            )

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
        if type(self).get_config is Constraint.get_config:  # the attributes, without inspect
            return (type(self).__name__, self._key_values(self))
        config = tuple(sorted(self.get_config().items()))
        return (type(self).__name__, config, self._event_ndim)

    def _dims(self) -> tuple[int, ...]:
        if self.dim is None:
            return ()
        return (self.dim,) if isinstance(self.dim, int) else self.dim
