r"""Projections onto the sets optax offers: simplex, L1/L2/L-infinity balls, L2 sphere.

As in optax, each acts on the whole tensor by default (``dim=None``); pass
``dim`` to constrain each slice separately (``dim=0``: each row of a ``Linear``
weight).
"""

from __future__ import annotations

from torch import Tensor

from . import _validation
from ._slices import SliceConstraint
from .box import Box
from .functional import (
    Dim,
    _project_l1_ball,
    _project_norm,
    _project_simplex,
)

__all__ = ["L1Ball", "L2Ball", "L2Sphere", "LinfBall", "Simplex"]


class Simplex(SliceConstraint):
    r"""Nonnegative entries summing to ``scale``: the exact (sort-based) Euclidean projection.

    .. math::

        C = \{x : x_i \ge 0,\ \textstyle\sum_i x_i = s\}, \qquad
        P_C(x)_i = \max(x_i - \theta, 0)

    with :math:`\theta` the unique shift that makes the entries sum to :math:`s`.

    Args:
        scale: :math:`s > 0`. Default: ``1.0``.
        dim: dimension(s) indexing the slices, or ``None`` for the whole tensor.
            Default: ``None``.

    Example:
        >>> import torch
        >>> from torch_constraints import Simplex
        >>> Simplex().project(torch.tensor([0.0, 0.0, float("-inf")]))
        tensor([0.5000, 0.5000, 0.0000])
    """

    def __init__(self, scale: float = 1.0, dim: Dim = None) -> None:
        super().__init__(dim)
        self.scale = _validation.number("Simplex", "scale", scale, above=0)

    def _kernel(self, x: Tensor, dim: Dim, *, inplace: bool) -> Tensor | None:
        return _project_simplex(x, dim, self.scale, inplace=inplace)

    def _slices_may_be_empty(self) -> bool:
        return False


class L1Ball(SliceConstraint):
    r"""L1 norm at most ``radius``: the exact (sort-based) Euclidean projection.

    .. math::

        C = \{x : \lVert x \rVert_1 \le r\}, \qquad
        P_C(x)_i = \operatorname{sign}(x_i)\max(\lvert x_i \rvert - \theta, 0)

    Args:
        radius: :math:`r \ge 0`. Default: ``1.0``.
        dim: dimension(s) indexing the slices, or ``None``. Default: ``None``.

    Example:
        >>> import torch
        >>> from torch_constraints import L1Ball
        >>> L1Ball(3.0).project(torch.tensor([3.0, -1.0, 0.5]))
        tensor([ 2.5000, -0.5000,  0.0000])
    """

    def __init__(self, radius: float = 1.0, dim: Dim = None) -> None:
        super().__init__(dim)
        self.radius = _validation.number("L1Ball", "radius", radius, at_least=0)

    def _kernel(self, x: Tensor, dim: Dim, *, inplace: bool) -> Tensor | None:
        return _project_l1_ball(x, dim, self.radius, inplace=inplace)


class L2Ball(SliceConstraint):
    r"""L2 norm at most ``radius``: :class:`~torch_constraints.MaxNorm` under optax's name.

    Where they differ: the defaults. ``L2Ball`` takes the whole tensor (``dim=None``)
    and radius 1, as optax's ``projection_l2_ball`` does; ``MaxNorm`` each output unit
    (``dim=0``) and 2, as Keras does. ``L2Ball(r, dim=0)`` is ``MaxNorm(r)``.

    .. math::

        C = \{x : \lVert x \rVert_2 \le r\}, \qquad
        P_C(x) = x \min\!\left(1, \frac{r}{\lVert x \rVert_2}\right)

    Args:
        radius: :math:`r \ge 0`. Default: ``1.0``.
        dim: dimension(s) indexing the slices, or ``None``. Default: ``None``.

    Example:
        >>> import torch
        >>> from torch_constraints import L2Ball
        >>> L2Ball(1.0).project(torch.tensor([3.0, 4.0]))
        tensor([0.6000, 0.8000])
    """

    def __init__(self, radius: float = 1.0, dim: Dim = None) -> None:
        super().__init__(dim)
        self.radius = _validation.number("L2Ball", "radius", radius, at_least=0)

    def _kernel(self, x: Tensor, dim: Dim, *, inplace: bool) -> Tensor | None:
        return _project_norm(x, dim, 0.0, self.radius, inplace=inplace)


class L2Sphere(SliceConstraint):
    r"""L2 norm exactly ``radius``; zero slices stay zero.

    ``L2Sphere(1.0, dim=0)`` is :class:`~torch_constraints.UnitNorm` ``()``: the sphere
    takes the whole tensor by default (``dim=None``), as optax's projection does, and
    any radius.

    .. math::

        C = \{x : \lVert x \rVert_2 = r\}, \qquad P_C(x) = r \frac{x}{\lVert x \rVert_2}

    Args:
        radius: :math:`r > 0`. Default: ``1.0``.
        dim: dimension(s) indexing the slices, or ``None``. Default: ``None``.

    Example:
        >>> import torch
        >>> from torch_constraints import L2Sphere
        >>> L2Sphere(10.0).project(torch.tensor([3.0, 4.0]))
        tensor([6., 8.])
    """

    def __init__(self, radius: float = 1.0, dim: Dim = None) -> None:
        super().__init__(dim)
        self.radius = _validation.number("L2Sphere", "radius", radius, above=0)

    def _kernel(self, x: Tensor, dim: Dim, *, inplace: bool) -> Tensor | None:
        return _project_norm(x, dim, self.radius, self.radius, inplace=inplace)

    def _slices_may_be_empty(self) -> bool:
        return False


class LinfBall(Box):
    r"""Every element in ``[-radius, radius]``: :class:`~torch_constraints.Box` ``(-r, r)``.

    A ``Box`` with one more attribute, ``radius`` (setting it sets both bounds); its
    config is the radius, so it serializes as ``LinfBall``.

    .. math::

        C = \{x : \lVert x \rVert_\infty \le r\}, \qquad P_C(x) = \operatorname{clamp}(x, -r, r)

    Args:
        radius: :math:`r \ge 0`. Default: ``1.0``.

    Example:
        >>> import torch
        >>> from torch_constraints import LinfBall
        >>> LinfBall(0.5).project(torch.tensor([-2.0, 0.25, 2.0]))
        tensor([-0.5000,  0.2500,  0.5000])
    """

    def __init__(self, radius: float = 1.0) -> None:
        r = _validation.number("LinfBall", "radius", radius, at_least=0)
        super().__init__(-r, r)

    @property
    def radius(self) -> float:
        """:math:`r`; setting it sets the box ``[-r, r]``, live like every attribute."""
        return -float(self.min) if self.min is not None else float(self.max)  # type: ignore[arg-type]

    @radius.setter
    def radius(self, value: float) -> None:
        r = _validation.number("LinfBall", "radius", value, at_least=0)
        self.min, self.max = -r, r
