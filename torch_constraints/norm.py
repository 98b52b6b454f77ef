r"""Norm constraints with Keras' names and defaults: MaxNorm, MinMaxNorm, UnitNorm.

Each acts on the slices along ``dim`` (default ``0``: each output unit of a
``Linear`` or ``Conv`` weight, which is what Keras' default ``axis=0`` means on
its ``(in, out)`` / ``(kh, kw, in, out)`` kernels; see the Keras migration page).

Unlike Keras, which multiplies every slice by ``clip(n) / (n + 1e-7)``, these
are projections with a proven bound: a slice already in the set is returned
unchanged, bit for bit, and a slice moved into a ball lands with a norm of at
most the bound. Outside the set both agree to within 1e-5 relative in float32
(8.2e-6 at most; see the guarantees page).
"""

from __future__ import annotations

from torch import Tensor

from . import _validation
from ._slices import SliceConstraint
from .functional import Dim, _project_norm

__all__ = ["MaxNorm", "MinMaxNorm", "UnitNorm"]


class MaxNorm(SliceConstraint):
    r"""Keep the L2 norm of each slice at most ``max_value`` (Keras ``MaxNorm``).

    .. math::

        C = \{x : \lVert x_s \rVert_2 \le m \ \forall s\}, \qquad
        P_C(x)_s = x_s \cdot \min\!\left(1, \frac{m}{\lVert x_s \rVert_2}\right)

    The same set as :class:`~torch_constraints.L2Ball` (``MaxNorm(m, dim=d)`` projects
    as ``L2Ball(m, dim=d)``), with Keras' name and defaults: each output unit
    (``dim=0``) and ``m = 2``, where optax's ``L2Ball`` takes the whole tensor and
    radius 1.

    Args:
        max_value: :math:`m \ge 0`. Default: ``2.0``.
        dim: dimension(s) indexing the slices, or ``None`` for the whole tensor.
            Default: ``0``.

    Raises:
        ValueError: if ``max_value`` is negative or not finite.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_constraints import MaxNorm, constrain
        >>> layer = constrain(nn.Linear(8, 4), "weight", MaxNorm(0.5))
        >>> bool((layer.weight.norm(dim=1) <= 0.5 * (1 + 1e-6)).all())
        True
    """

    def __init__(self, max_value: float = 2.0, dim: Dim = 0) -> None:
        super().__init__(dim)
        self.max_value = _validation.number("MaxNorm", "max_value", max_value, at_least=0)

    def _kernel(self, x: Tensor, dim: Dim, *, inplace: bool) -> Tensor | None:
        return _project_norm(x, dim, 0.0, self.max_value, inplace=inplace)


class MinMaxNorm(SliceConstraint):
    r"""Keep the L2 norm of each slice in ``[min_value, max_value]`` (Keras ``MinMaxNorm``).

    With :math:`n = \lVert x_s \rVert_2`, Keras rescales each slice to

    .. math::

        d = \text{rate} \cdot \operatorname{clamp}(n, \text{min}, \text{max})
            + (1 - \text{rate})\, n .

    With ``rate = 1`` that is the projection onto the shell
    :math:`\{\text{min} \le \lVert x_s \rVert_2 \le \text{max}\}`. With ``rate < 1``
    it is not a projection: it moves each slice part of the way, and applying it
    twice moves further. So that nothing applies it twice by accident:

    * the **forward map** and **registration** (``right_inverse``) always apply the
      full projection (``rate = 1``): the forward pass sees norms inside the range;
    * :func:`~torch_constraints.hard_project` applies the ``rate`` step once per
      call to the raw tensor, as Keras applies the constraint once after each
      optimizer update.

    Zero slices stay zero.

    Args:
        min_value: lower bound of the norm, ``>= 0``. Default: ``0.0``.
        max_value: upper bound of the norm, ``>= min_value``. Default: ``1.0``.
        rate: fraction of the way ``hard_project`` moves, in ``[0, 1]``. Default: ``1.0``.
        dim: dimension(s) indexing the slices, or ``None``. Default: ``0``.

    Raises:
        ValueError: for a negative ``min_value``, ``min_value > max_value``, or
            ``rate`` outside ``[0, 1]``.

    Example:
        >>> import torch
        >>> from torch_constraints import MinMaxNorm
        >>> c = MinMaxNorm(0.8, 2.0, rate=0.7, dim=1)
        >>> kernel = torch.tensor([[3.0, 0.3], [4.0, 0.4]])  # Keras layout: columns are units
        >>> c.project_(kernel)
        tensor([[1.7400, 0.4260],
                [2.3200, 0.5680]])
    """

    def __init__(
        self, min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0, dim: Dim = 0
    ) -> None:
        super().__init__(dim)
        self.min_value = _validation.number("MinMaxNorm", "min_value", min_value, at_least=0)
        self.max_value = _validation.number("MinMaxNorm", "max_value", max_value, at_least=0)
        if self.min_value > self.max_value:
            raise ValueError(
                f"MinMaxNorm: min_value must be <= max_value, got min_value={min_value}, "
                f"max_value={max_value}"
            )
        self.rate = _validation.number("MinMaxNorm", "rate", rate, at_least=0, at_most=1)

    def _kernel(self, x: Tensor, dim: Dim, *, inplace: bool) -> Tensor | None:
        rate = self.rate if inplace else 1.0  # the forward map: the projection
        return _project_norm(x, dim, self.min_value, self.max_value, rate, inplace=inplace)

    def _slices_may_be_empty(self) -> bool:
        return self.min_value == 0


class UnitNorm(SliceConstraint):
    r"""Scale each slice to L2 norm 1 (Keras ``UnitNorm``); zero slices stay zero.

    .. math::

        C = \{x : \lVert x_s \rVert_2 = 1 \ \forall s\}, \qquad
        P_C(x)_s = \frac{x_s}{\lVert x_s \rVert_2}

    :class:`~torch_constraints.L2Sphere` of radius 1, with Keras' name and default
    slices (each output unit, ``dim=0``, where ``L2Sphere`` takes the whole tensor).

    Args:
        dim: dimension(s) indexing the slices, or ``None``. Default: ``0``.

    Example:
        >>> import torch
        >>> from torch_constraints import UnitNorm
        >>> UnitNorm().project(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """

    def __init__(self, dim: Dim = 0) -> None:
        super().__init__(dim)

    def _kernel(self, x: Tensor, dim: Dim, *, inplace: bool) -> Tensor | None:
        return _project_norm(x, dim, 1.0, 1.0, inplace=inplace)

    def _slices_may_be_empty(self) -> bool:
        return False
