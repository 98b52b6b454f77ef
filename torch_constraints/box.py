r"""Elementwise bounds: :class:`Box` and :class:`NonNeg`."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from . import _autograd, _kernels, _validation
from ._rounding import inward_tensor
from .base import Constraint
from .functional import (
    Bound,
    box_bounds,
    project_box,
    project_box_,
    refuse_out_of_range,
    scalar_bounds,
)

__all__ = ["Box", "NonNeg"]


class Box(Constraint):
    r"""Keep every element inside ``[min, max]``.

    .. math::

        C = \{x : \text{min} \le x \le \text{max}\}, \qquad
        P_C(x) = \operatorname{clamp}(x, \text{min}, \text{max})

    Bounds are numbers or tensors broadcastable to the constrained tensor (for
    instance one bound per output channel, shape ``(out, 1)`` for a ``Linear``
    weight); tensor bounds are buffers, so they follow ``module.to()`` and are saved
    in the ``state_dict``. They are rounded to the tensor's dtype toward the inside.

    Args:
        min: lower bound, or ``None`` for none. ``-inf`` is allowed. Default: ``None``.
        max: upper bound, or ``None`` for none. ``+inf`` is allowed. Default: ``None``.

    Raises:
        ValueError: if both bounds are ``None``, a bound is NaN, ``min`` is ``+inf``,
            ``max`` is ``-inf``, or ``min > max`` anywhere.
        TypeError: if a bound is not a real number or a real tensor.

    Example:
        >>> import torch
        >>> from torch_constraints import Box
        >>> Box(-1, 1).project(torch.tensor([-3.0, 0.25, 2.0]))
        tensor([-1.0000,  0.2500,  1.0000])
    """

    elementwise = True
    _bypass_project = ("project_", "project_many_")
    min: Bound
    max: Bound

    def __init__(self, min: Bound = None, max: Bound = None) -> None:
        super().__init__()
        if min is None and max is None:
            raise ValueError("Box needs at least one bound, got min=None and max=None")
        _set_bound(self, "min", _validated(min, "min", forbidden=math.inf))
        _set_bound(self, "max", _validated(max, "max", forbidden=-math.inf))
        _check_ordered(self.min, self.max)

    def __setattr__(self, name: str, value: Any) -> None:
        """Set an attribute; a new number bound is checked first, as the constructor does.

        ``box.max = 0.05`` takes effect at the next forward pass and projection. A bound
        that is not a real number or is NaN raises and changes nothing. Bounds that
        cross (``min > max``), or one beyond the range of the constrained tensor's
        dtype, raise at the next forward pass or projection, naming the tensor, which
        they leave untouched: the two bounds can be changed one after the other.
        """
        if name in ("min", "max") and not isinstance(value, Tensor):
            value = _validated(value, name, forbidden=math.inf if name == "min" else -math.inf)
            if value is None and (self.max if name == "min" else self.min) is None:
                raise ValueError("Box needs at least one bound, got min=None and max=None")
        super().__setattr__(name, value)

    def project(self, x: Tensor) -> Tensor:
        # project_box, with the common case first: this runs on every forward pass.
        lo, hi = self.min, self.max
        try:
            if isinstance(lo, Tensor) or isinstance(hi, Tensor):
                return project_box(x, lo, hi)
            lo, hi = scalar_bounds(lo, hi, x.dtype)
        except ValueError as error:
            raise self._naming(error) from None
        if lo is None and hi is None:
            return x.view_as(x)
        return _autograd.clamp(x, lo, hi)

    @torch.no_grad()
    def project_(self, x: Tensor) -> Tensor:
        try:
            return project_box_(x, self.min, self.max)
        except ValueError as error:
            raise self._naming(error) from None

    def _naming(self, error: ValueError) -> ValueError:
        """``error`` with the tensor's name in front (bounds changed since registration)."""
        where = self.__dict__.get("_where")
        return ValueError(f"{where}: {error}" if where else str(error))

    def project_many_(self, xs: Sequence[Tensor], *, foreach: bool | None = None) -> None:
        if not xs:
            return
        if isinstance(self.min, Tensor) or isinstance(self.max, Tensor):
            super().project_many_(xs)
            return
        try:
            lo, hi = box_bounds(xs[0], self.min, self.max)
        except ValueError as error:
            raise self._naming(error) from None
        assert not isinstance(lo, Tensor) and not isinstance(hi, Tensor)
        _kernels.clamp_(xs, lo, hi, foreach=foreach)

    def check(self, x: Tensor, where: str) -> None:
        super().check(x, where)
        self._check_shapes(x, where)
        if x.device.type == "meta":
            return  # no values to compare
        probe = torch.empty((), dtype=x.dtype, device=x.device)
        try:
            lo, hi = box_bounds(probe, self.min, self.max)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        for name, rounded, bound in (("min", lo, self.min), ("max", hi, self.max)):
            if isinstance(rounded, Tensor) and isinstance(bound, Tensor):
                if bool((rounded.isinf() & bound.isfinite()).any()):
                    try:
                        refuse_out_of_range(name, bound, x.dtype)
                    except ValueError as error:
                        raise ValueError(f"{where}: {error}") from None
        if lo is not None and hi is not None and bool(torch.as_tensor(lo > hi).any()):
            raise ValueError(
                f"{where}: no {x.dtype} value lies in [min, max] (the range is narrower than "
                f"the dtype's spacing), got min={_short(self.min)}, max={_short(self.max)}"
            )

    def _check_shapes(self, x: Tensor, where: str) -> None:
        for name in ("min", "max"):
            bound = getattr(self, name)
            if not isinstance(bound, Tensor):
                continue
            try:
                shape = torch.broadcast_shapes(bound.shape, x.shape)  # type: ignore[no-untyped-call]
            except RuntimeError:
                shape = None
            if shape != x.shape:
                raise ValueError(
                    f"{where}: {name} of shape {tuple(bound.shape)} does not broadcast to "
                    f"the tensor's shape {tuple(x.shape)}"
                )
            if bound.device != x.device:
                raise ValueError(
                    f"{where}: {name} is on {bound.device} but the tensor is on {x.device}; "
                    f"move the bound with .to({str(x.device)!r}) first"
                )

    def bind(self, x: Tensor) -> None:
        super().bind(x)
        for name in ("min", "max"):
            bound = getattr(self, name)
            if isinstance(bound, Tensor):
                setattr(self, name, inward_tensor(bound, x.dtype, lower=name == "min"))

    def fusion_key(self) -> Hashable | None:
        if isinstance(self.min, Tensor) or isinstance(self.max, Tensor):
            return None
        return ("box", self.min, self.max)

    def _check_state_dict(self, state_dict: Mapping[str, Any], prefix: str) -> None:
        """Raise unless the bounds ``state_dict`` would load into this box are valid.

        Reads the entries ``prefix + "min"`` and ``prefix + "max"`` of the tensor
        bounds (a missing entry stands for the current bound) and checks them as the
        constructor does, and their shapes against the current ones. Changes nothing.

        Raises:
            TypeError: for an entry that is not a real tensor.
            ValueError: for a wrong shape, NaN, ``min = +inf``, ``max = -inf`` or
                ``min > max``; the message names the entry.
        """
        where = prefix[:-1] or type(self).__name__
        bounds: dict[str, Bound] = {}
        for name, forbidden in (("min", math.inf), ("max", -math.inf)):
            current = getattr(self, name)
            bounds[name] = current
            key = prefix + name
            if not isinstance(current, Tensor) or key not in state_dict:
                continue  # a number bound is no state: an entry is PyTorch's "unexpected"
            value = state_dict[key]
            if not isinstance(value, Tensor):
                raise TypeError(f"{key}: expected a tensor bound, got {type(value).__name__}")
            if value.shape != current.shape:
                raise ValueError(
                    f"{key}: the checkpoint's bound has shape {tuple(value.shape)}, the "
                    f"constraint's has shape {tuple(current.shape)}"
                )
            try:
                bounds[name] = _validated(value, name, forbidden=forbidden)
            except (TypeError, ValueError) as error:
                raise type(error)(f"{key}: {error}") from None
        try:
            _check_ordered(bounds["min"], bounds["max"])
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Refuse invalid bounds before writing them (also when this box loads alone).
        self._check_state_dict(state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _apply(self, fn: Any, recurse: bool = True) -> Box:
        # module.to(dtype) rounds buffers to nearest; re-round tensor bounds inward.
        before = {name: b for name, b in self._buffers.items() if b is not None}
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        for name, old in before.items():
            new = self._buffers[name]
            if new is not None and new.dtype != old.dtype:
                converted = inward_tensor(old.to(new.device), new.dtype, lower=name == "min")
                self._buffers[name] = converted
        return self


class NonNeg(Box):
    r"""Keep every element nonnegative: :math:`P_C(x) = \max(x, 0)`.

    Example:
        >>> import torch
        >>> from torch_constraints import NonNeg
        >>> NonNeg().project(torch.tensor([-1.0, 2.0]))
        tensor([0., 2.])
    """

    def __init__(self) -> None:
        super().__init__(min=0.0)


def _validated(value: object, name: str, *, forbidden: float) -> Bound:
    if value is None:
        return None
    if isinstance(value, Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be a real tensor, got dtype {value.dtype}")
        value = value.detach().clone()
        if not value.is_floating_point():
            value = value.to(torch.float64)
        if value.device.type == "meta":
            return value  # no values to check
        nan = torch.isnan(value)
        if nan.any():
            raise ValueError(f"{name} must not contain NaN, got {int(nan.sum())} NaN element(s)")
        if (value == forbidden).any():
            raise ValueError(f"{name} must not contain {forbidden}")
        return value
    number = _validation.real(value)
    if number is None:
        described = _validation.refusal(value)
        if described is not None:
            raise TypeError(f"{name} must be a real number, a real tensor or None, got {described}")
        raise TypeError(f"{name} must be a number, a tensor or None, got {value!r}")
    value = number
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN, got {value}")
    if value == forbidden:
        raise ValueError(f"{name} must not be {forbidden}, got {value}")
    return value


def _short(bound: Bound) -> str:
    return f"tensor of shape {tuple(bound.shape)}" if isinstance(bound, Tensor) else str(bound)


def _set_bound(box: Box, name: str, value: Bound) -> None:
    """Store a validated bound: a tensor as a buffer, anything else as an attribute."""
    if isinstance(value, Tensor):
        box.register_buffer(name, value)
    else:
        Constraint.__setattr__(box, name, value)  # type: ignore[arg-type]  # validated: skip Box's


def _check_ordered(lo: Bound, hi: Bound) -> None:
    if (
        lo is None
        or hi is None
        or any(isinstance(b, Tensor) and b.device.type == "meta" for b in (lo, hi))
    ):
        return
    if not isinstance(lo, Tensor) and not isinstance(hi, Tensor):
        if lo > hi:
            raise ValueError(f"min must be <= max, got min={lo}, max={hi}")
        return
    lo_t = torch.as_tensor(lo).detach().to("cpu", torch.float64)
    hi_t = torch.as_tensor(hi).detach().to("cpu", torch.float64)
    try:
        bad = lo_t > hi_t
    except RuntimeError:
        raise ValueError(
            f"min of shape {tuple(lo_t.shape)} and max of shape {tuple(hi_t.shape)} "
            "do not broadcast together"
        ) from None
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        lo_v = lo_t.expand_as(bad)[index].item()
        hi_v = hi_t.expand_as(bad)[index].item()
        raise ValueError(f"min must be <= max everywhere, got min={lo_v} > max={hi_v} at {index}")
