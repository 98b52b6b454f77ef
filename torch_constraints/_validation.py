"""Argument checks that name the argument, the value received and, where there is one, the tensor.

Constructor arguments of the constraints (:func:`number`, :func:`dims`) and the
arguments of the public functions (:func:`require_module`, :func:`resolve`,
:func:`selector`): each raises ``TypeError``/``ValueError`` before anything changes.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Collection
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrize import ParametrizationList

from ._tree import raw_tensor

__all__ = [
    "Include",
    "describe",
    "dims",
    "is_internal",
    "number",
    "real",
    "refusal",
    "require_bool",
    "require_module",
    "resolve",
    "selector",
    "type_name",
]


def real(value: object) -> float | None:
    """Return ``value`` as a float if it is a real number, else ``None``.

    Real numbers are Python ``int`` and ``float``, every :class:`numbers.Real`
    (NumPy's ``float16``/``float32``/``float64`` and integer scalars,
    :class:`fractions.Fraction`), and 0-d real tensors (their value, read once).
    ``bool`` (Python's, NumPy's, a bool tensor) and complex numbers are not.

    Example:
        >>> import torch
        >>> real(2), real(torch.tensor(0.5)), real(True), real(1j), real("1")
        (2.0, 0.5, None, None, None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, Tensor):
        if value.ndim != 0 or value.is_complex() or value.dtype == torch.bool:
            return None
        if value.device.type == "meta":
            return None
        return float(value.item())
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def refusal(value: object) -> str | None:
    """Describe ``value`` if it is a bool, complex or a tensor (not a real number), else None."""
    if type(value).__name__ in ("bool", "bool_"):
        return f"{value!r} (a bool)"
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
        return repr(value)
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return None


def number(
    owner: str,
    name: str,
    value: object,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
) -> float:
    """Return ``value`` as a finite float, or raise naming ``owner``, ``name`` and ``value``.

    Accepts what :func:`real` accepts.
    """
    result = real(value)
    if result is None:
        described = refusal(value)
        if described is not None:
            raise TypeError(f"{owner}: {name} must be a real number, got {described}")
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    if not math.isfinite(result):
        raise ValueError(f"{owner}: {name} must be finite, got {value}")
    if at_least is not None and result < at_least:
        raise ValueError(f"{owner}: {name} must be >= {at_least:g}, got {value}")
    if above is not None and result <= above:
        raise ValueError(f"{owner}: {name} must be > {above:g}, got {value}")
    if at_most is not None and result > at_most:
        raise ValueError(f"{owner}: {name} must be <= {at_most:g}, got {value}")
    return result


def dims(owner: str, value: object) -> int | tuple[int, ...] | None:
    """Return a valid ``dim`` argument: an int, a tuple of distinct ints, or None."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, (tuple, list)) and all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        if len(set(value)) != len(value):
            raise ValueError(f"{owner}: dim must not repeat a dimension, got {value!r}")
        return tuple(value)
    raise TypeError(f"{owner}: dim must be an int, a tuple of ints or None, got {value!r}")


# ----------------------------------------------------------------- arguments of the API
def require_module(module: object, function: str) -> None:
    """Refuse anything but an eager ``nn.Module``, naming ``function`` and what it got."""
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError(
            f"{function}: TorchScript modules cannot carry constraints; constrain the eager "
            "module, then script or export it"
        )
    if not isinstance(module, nn.Module):
        raise TypeError(f"{function}: expected an nn.Module, got {type(module).__name__}")


def require_bool(value: object, name: str) -> None:
    """Refuse a flag that is not ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def type_name(obj: object) -> str:
    """The class name of ``obj``; for a parametrized module, of the module before."""
    if isinstance(obj, nn.Module):
        return parametrize.type_before_parametrizations(obj).__name__
    return type(obj).__name__


def describe(module: nn.Module, tensor_name: str) -> str:
    """``"Linear.weight"``: where a tensor is, for error messages."""
    return f"{type_name(module)}.{tensor_name}"


def is_internal(module: nn.Module) -> bool:
    """Whether ``module`` is part of a parametrization (a chain or a constraint), not the model."""
    from .base import Constraint

    return isinstance(module, (ParametrizationList, Constraint))


def resolve(module: nn.Module, name: object) -> tuple[nn.Module, str]:
    """The module owning the tensor ``name`` (a dotted path from ``module``) and its name.

    Raises:
        TypeError: if ``name`` is not a string.
        ValueError: for a path through a submodule that does not exist (listing those
            that do), a path into a parametrization, or a tensor the owner does not have.
    """
    if not isinstance(name, str):
        raise TypeError(f"expected a tensor name (str), got {name!r}")
    parts = name.split(".")
    if "parametrizations" in parts[:-1]:
        at = parts.index("parametrizations")
        public = ".".join(parts[:at] + parts[at + 1 : at + 2])
        raise ValueError(
            f"{name!r} names the inside of a parametrization, not a tensor of the model; "
            f"constrain the tensor by its public name, {public!r}"
        )
    owner = module
    for depth, part in enumerate(parts[:-1]):
        try:
            owner = owner.get_submodule(part)
        except AttributeError:
            where = ".".join(parts[:depth]) or "the root"
            children = [n for n, _ in owner.named_children() if n != "parametrizations"]
            raise ValueError(
                f"{type_name(module)} has no submodule {'.'.join(parts[: depth + 1])!r} "
                f"(from {name!r}); the submodules of {where} ({type_name(owner)}) are: "
                f"{', '.join(children) or 'none'}"
            ) from None
    if is_internal(owner):
        raise ValueError(
            f"{name!r} belongs to a {type(owner).__name__}, part of a parametrization, not "
            "to the model; constrain the model's tensors by their public names"
        )
    tensor_name = parts[-1]
    if raw_tensor(owner, tensor_name) is None:
        available = [n for n, _ in owner.named_parameters(recurse=False)]
        available += [n for n, _ in owner.named_buffers(recurse=False)]
        if parametrize.is_parametrized(owner):
            available += list(cast(nn.ModuleDict, owner.parametrizations))
        raise ValueError(
            f"{describe(owner, tensor_name)}: {type_name(owner)} has no parameter or buffer "
            f"named {tensor_name!r}; it has: {', '.join(available) or 'none'}"
        )
    return owner, tensor_name


#: What ``include`` of :func:`~torch_constraints.constrain_all` accepts.
Include = (
    type[nn.Module]
    | tuple[type[nn.Module], ...]
    | str
    | Collection[str]
    | Callable[[str, nn.Module, str], bool]
    | None
)


def selector(include: Include) -> Callable[[str, nn.Module, str], bool]:
    """``include`` of ``constrain_all`` as a predicate ``(qualname, module, tensor_name)``."""
    if include is None:
        return lambda qualname, module, tensor_name: True
    if isinstance(include, nn.Module) or (
        isinstance(include, tuple) and any(isinstance(c, nn.Module) for c in include)
    ):
        raise TypeError(
            "include takes module classes, such as nn.Linear, not module instances; "
            f"got {include!r}"
        )
    if isinstance(include, type) and issubclass(include, nn.Module):
        include = (include,)
    if isinstance(include, tuple) and include and all(isinstance(c, type) for c in include):
        classes = include
        return lambda qualname, module, tensor_name: isinstance(module, classes)
    if isinstance(include, str):
        include = {include}
    if isinstance(include, Collection) and all(isinstance(n, str) for n in include):
        names = set(include)
        return lambda qualname, module, tensor_name: tensor_name in names or qualname in names
    if callable(include):
        predicate = cast(Callable[[str, nn.Module, str], bool], include)
        return lambda qualname, module, tensor_name: bool(predicate(qualname, module, tensor_name))
    raise TypeError(
        "include must be module classes, tensor names, or a predicate "
        f"(qualified_name, module, tensor_name) -> bool; got {include!r}"
    )
