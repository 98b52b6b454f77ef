r"""The :class:`Constraint` base class: one projection, everything else derived.

A constraint is a feasible set :math:`C` and the Euclidean projection onto it,

.. math::

    P_C(x) = \operatorname*{argmin}_{y \in C} \lVert y - x \rVert_2 .

A subclass writes :meth:`Constraint.project` once, as a pure differentiable
function. From it the base class derives everything the rest of the library uses:

* ``forward(x) = P_C(x)``: the constraint is a parametrization
  (:func:`torch.nn.utils.parametrize.register_parametrization`), so every
  forward pass sees a feasible tensor;
* ``right_inverse(x) = P_C(x)``: registering the constraint, or assigning
  ``module.weight = W``, stores a feasible raw value;
* :meth:`Constraint.project_`: writes :math:`P_C(x)` into ``x`` in place, which is
  what :func:`~torch_constraints.hard_project` calls;
* :meth:`Constraint.get_config` / :meth:`Constraint.from_config` and the repr,
  read off the constructor's signature.
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from . import _tracking
from ._autograd import straight_through

__all__ = ["Constraint", "SkipRecord", "recordable", "state_of"]

C = TypeVar("C", bound="Constraint")


class Constraint(nn.Module):
    r"""Base class of all constraints: subclass it and implement :meth:`project`.

    Example:
        A custom constraint is one small class; it then works with
        :func:`~torch_constraints.constrain`, :func:`~torch_constraints.constrain_all`,
        :func:`~torch_constraints.hard_project`, ``repr`` and the config functions.

        >>> import torch
        >>> from torch import nn
        >>> from torch_constraints import Constraint, constrain, hard_project
        >>> class Symmetric(Constraint):
        ...     '''Symmetric matrices: P(x) = (x + x^T) / 2.'''
        ...     def project(self, x):
        ...         return (x + x.mT) / 2
        >>> layer = constrain(nn.Linear(3, 3), "weight", Symmetric())
        >>> torch.equal(layer.weight, layer.weight.T)
        True
        >>> layer.parametrizations.weight[0]
        Symmetric()
    """

    #: ``True`` when the forward map is the identity, with the identity Jacobian,
    #: on every value that :meth:`project_` returns (sets with an interior, such as
    #: boxes and balls; not spheres or simplices). Right after ``hard_project``
    #: such a constraint can then skip its forward computation.
    identity_on_feasible: bool = False

    #: ``True`` when the projection acts on each element alone, with no reference
    #: to the tensor's shape: ``hard_project`` may then project tensors of any
    #: shapes that share a :meth:`fusion_key` as one flat tensor.
    elementwise: ClassVar[bool] = False

    straight_through: bool

    def __init__(self) -> None:
        super().__init__()
        self.straight_through = False
        self._event_ndim: int | None = None
        self._skip = SkipRecord()

    # ------------------------------------------------------------------ to override
    def project(self, x: Tensor) -> Tensor:
        r"""Return :math:`P_C(x)`, differentiably and without modifying ``x``."""
        raise NotImplementedError(f"{type(self).__name__} must implement project(x)")

    def check(self, x: Tensor, where: str) -> None:
        """Raise ``TypeError``/``ValueError`` if this constraint cannot apply to ``x``.

        Called before anything is registered; must not modify ``self`` or ``x``.

        Args:
            x: the raw tensor about to be constrained.
            where: names the module and tensor, for error messages (``"Linear.weight"``).
        """
        if not x.is_floating_point():
            raise TypeError(
                f"{where}: only floating-point tensors can be constrained, got dtype {x.dtype}"
            )

    def bind(self, x: Tensor) -> None:
        """Adapt this (freshly copied) constraint to the tensor it is registered on.

        Records ``x.ndim`` so that extra leading dimensions passed to
        :meth:`project` later are treated as a batch of such tensors.
        """
        self._event_ndim = x.ndim

    def fusion_key(self) -> Hashable | None:
        """Return a key equal for constraints that project identically, or ``None``.

        ``hard_project`` projects tensors whose constraints share a key (and, unless
        :attr:`elementwise`, a shape) with one batched call; ``None`` opts out.
        """
        return None

    # ------------------------------------------------------------------ derived
    @torch.no_grad()
    def project_(self, x: Tensor) -> Tensor:
        """Write :math:`P_C(x)` into ``x`` in place and return ``x``.

        ``x`` may carry extra leading dimensions: a stack of tensors of the shape this
        constraint was registered on, each projected independently.
        """
        x.copy_(self.project(x))
        return x

    def project_many_(self, xs: Sequence[Tensor], *, foreach: bool | None = None) -> None:
        """Project every tensor of ``xs`` in place (one device and dtype)."""
        del foreach  # the generic version has no multi-tensor kernel
        for x in xs:
            self.project_(x)

    def forward(self, x: Tensor) -> Tensor:
        """Map the raw tensor to the feasible set (the parametrization's forward)."""
        if not torch.compiler.is_compiling() and self.identity_on_feasible:
            skip = self._skip
            if skip.projected is not None and skip.projected == state_of(x):
                return x.view_as(x)
            if not skip.used_in_forward:
                # From now on hard_project records when this tensor is known feasible.
                skip.used_in_forward = True
                _tracking.layout_changed()
        if self.straight_through:
            return straight_through(x, self.project(x.detach()))
        return self.project(x)

    def right_inverse(self, x: Tensor) -> Tensor:
        """Return the raw value to store for ``module.weight = x``: its projection."""
        _tracking.layout_changed()  # the raw tensor may get a new storage
        with torch.no_grad():
            return self.project(x)

    def _apply(self, fn: Any, recurse: bool = True) -> Constraint:
        # module.to() / .cuda() / .half() reach the constraint with the raw tensor,
        # whose storage they replace: cached projection plans are stale.
        _tracking.layout_changed()
        return super()._apply(fn, recurse)  # type: ignore[no-untyped-call,no-any-return]

    def batch_ndim(self, x: Tensor) -> int:
        """Return how many leading dimensions of ``x`` form a batch of registered tensors."""
        return 0 if self._event_ndim is None else x.ndim - self._event_ndim

    # ------------------------------------------------------------------ config and repr
    def get_config(self) -> dict[str, Any]:
        """Return the constructor arguments that rebuild this constraint.

        The default reads, for every parameter of ``__init__``, the attribute of the
        same name; override it when the constructor stores its arguments differently.
        """
        config: dict[str, Any] = {}
        for name in _init_parameters(type(self)):
            if not hasattr(self, name):
                raise NotImplementedError(
                    f"{type(self).__name__}.get_config(): store the constructor argument "
                    f"{name!r} as self.{name}, or override get_config()"
                )
            config[name] = getattr(self, name)
        return config

    @classmethod
    def from_config(cls: type[C], config: dict[str, Any]) -> C:
        """Build a constraint from :meth:`get_config`'s output."""
        return cls(**config)

    def extra_repr(self) -> str:
        parts = [f"{key}={_short_repr(value)}" for key, value in self.get_config().items()]
        if self.straight_through:
            parts.append("straight_through=True")
        return ", ".join(parts)

    def __getstate__(self) -> dict[str, Any]:
        # A copy is a different tensor: it must not inherit "already projected".
        state = dict(self.__dict__)
        state["_skip"] = SkipRecord()
        return state


class SkipRecord:
    """When the forward pass of a constraint may return the raw tensor as it is.

    ``hard_project`` stores in ``projected`` the state (:func:`state_of`) of the raw
    tensor it has just projected; while the tensor is in that state, it is known
    feasible. It does so only once ``used_in_forward`` is set, so projections of
    tensors no forward pass reads cost nothing extra. A plain object, so that
    updating it skips ``nn.Module.__setattr__``.
    """

    __slots__ = ("projected", "used_in_forward")

    def __init__(self) -> None:
        self.projected: tuple[int, int, int] | None = None
        self.used_in_forward = False


def state_of(x: Tensor) -> tuple[int, int, int] | None:
    """Identify ``x``'s storage and contents: (version counter, data pointer, optimizer steps).

    ``None`` for tensors without a version counter or a plain storage (inference
    tensors, tensor subclasses, functorch wrappers), which are never skipped.
    """
    if type(x) not in (Tensor, nn.Parameter) or x.is_inference():
        return None
    try:
        return (x._version, x.data_ptr(), _tracking.optimizer_steps())
    except RuntimeError:
        return None


def recordable(x: Tensor) -> bool:
    """Whether :func:`state_of` identifies ``x``; it stays so until ``x.data`` is rebound."""
    return state_of(x) is not None


def _init_parameters(cls: type) -> list[str]:
    signature = inspect.signature(cls.__init__)  # type: ignore[misc]
    return [
        name
        for name, p in list(signature.parameters.items())[1:]
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def _short_repr(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"tensor(shape={tuple(value.shape)})"
    return repr(value)
