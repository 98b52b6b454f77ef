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
from collections.abc import Callable, Hashable, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from . import _kernels
from ._autograd import straight_through

__all__ = ["Constraint"]

C = TypeVar("C", bound="Constraint")
_PLAIN = (Tensor, nn.Parameter)


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

    #: ``True`` when the projection acts on each element alone, with no reference
    #: to the tensor's shape: a :class:`~torch_constraints.PackedProjection` may then
    #: project tensors of any shapes that share a :meth:`fusion_key` as one flat tensor.
    elementwise: ClassVar[bool] = False

    #: The methods a class defines that compute its projection without calling
    #: :meth:`project` (in-place and multi-tensor fast paths). A subclass that
    #: overrides ``project`` but not one of these gets the generic version, derived
    #: from its own ``project`` (see :meth:`__init_subclass__`).
    _bypass_project: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Keep a subclass's fast paths consistent with its own :meth:`project`.

        ``class RoundedBox(Box)`` that overrides only ``project`` must not inherit
        ``Box``'s in-place clamp or its multi-tensor clamp, which would compute
        ``Box``'s projection, not the subclass's; nor its ``elementwise`` flag. Each
        such method the subclass does not define itself reverts to the generic
        version, derived from ``project``.
        """
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if "project" not in own:
            return
        for base in cls.__mro__[1:]:
            for name in base.__dict__.get("_bypass_project", ()):
                if name not in own:
                    setattr(cls, name, getattr(Constraint, name))
        if "elementwise" not in own:
            cls.elementwise = False

    straight_through: bool

    def __init__(self) -> None:
        super().__init__()
        self.straight_through = False
        self._event_ndim: int | None = None
        self._where: str | None = None  # the tensor it is registered on, for messages

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
        if x.layout != torch.strided:
            raise TypeError(
                f"{where}: only dense (strided) tensors can be constrained, got layout {x.layout}"
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

    def _project_stacked_(
        self,
        xs: Sequence[Tensor],
        project_stack: Callable[[Tensor], bool] | None = None,
        *,
        stack_bytes: int = 2 * 2**20,
        small_bytes: int = 2**18,
    ) -> None:
        """Project ``xs`` in place, stacking small same-shaped tensors into one batched call.

        For constraints whose :meth:`project_` treats extra leading dimensions as a
        batch (see :meth:`batch_ndim`): many small tensors then cost a few kernels
        instead of a few per tensor. A tensor larger than ``small_bytes`` gains
        nothing from it (copying it in and out costs more than a call: with ResNet-50's
        1 MiB tensors stacked, ``hard_project`` took 8% longer than with this threshold,
        CPU, caches flushed) and is projected on its own, as is anything but a plain
        dense tensor, and shapes with fewer than three tensors. Stacks hold at most
        ``stack_bytes``. ``project_stack`` projects a stack in place and returns whether
        it changed it (default: :meth:`project_`, then copy back): an unchanged stack is
        not copied back.
        """
        if torch.is_grad_enabled():
            with torch.no_grad():
                self._project_stacked_(
                    xs, project_stack, stack_bytes=stack_bytes, small_bytes=small_bytes
                )
            return
        if len(xs) < 3 or self._event_ndim is None:  # a stack of two costs more than their calls
            for x in xs:
                self.project_(x)
            return
        by_shape: dict[tuple[int, ...], list[Tensor]] = {}
        for x in xs:
            if type(x) not in _PLAIN or x.nbytes > small_bytes:
                self.project_(x)
            else:
                by_shape.setdefault(x.shape, []).append(x)
        for same in by_shape.values():
            if len(same) < 3:
                for x in same:
                    self.project_(x)
                continue
            per_stack = max(1, stack_bytes // max(1, same[0].nbytes))
            for start in range(0, len(same), per_stack):
                chunk = same[start : start + per_stack]
                stack = torch.stack(chunk)  # (under no_grad: a plain tensor)
                if project_stack is None:
                    self.project_(stack)
                elif not project_stack(stack):
                    continue
                _kernels.copy_(chunk, stack.unbind(0))

    def forward(self, x: Tensor) -> Tensor:
        """Map the raw tensor to the feasible set (the parametrization's forward).

        A pure function of ``x`` and of this constraint's current attributes: it is
        computed afresh on every access, so nothing done earlier (a projection, a
        write through ``.data``) can change what it returns.
        """
        if self.straight_through:
            return straight_through(x, self.project(x.detach()))
        return self.project(x)

    def right_inverse(self, x: Tensor) -> Tensor:
        """Return the raw value to store for ``module.weight = x``: its projection.

        ``x`` itself when it is already in the set (its projection equals it, bit for
        bit): PyTorch stores the result with ``set_``, which then keeps the raw
        tensor's storage. Registration projects the raw tensor in place first, so
        registering never gives it a new storage.
        """
        with torch.no_grad():
            projected = self.project(x)
            if (
                type(x) in (Tensor, nn.Parameter)
                and x.device.type != "meta"
                and torch.equal(projected, x)
            ):
                return x
            return projected

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
