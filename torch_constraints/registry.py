"""Constraints by name or config: :func:`get` and :func:`serialize`, as in Keras."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .base import Constraint
from .box import Box, NonNeg
from .matrix import PSD, Orthogonal, SpectralBall
from .norm import MaxNorm, MinMaxNorm, UnitNorm
from .sets import L1Ball, L2Ball, L2Sphere, LinfBall, Simplex

__all__ = ["get", "serialize"]

_BUILTIN: dict[str, type[Constraint]] = {
    cls.__name__: cls
    for cls in (
        Box,
        NonNeg,
        MaxNorm,
        MinMaxNorm,
        UnitNorm,
        Simplex,
        L1Ball,
        L2Ball,
        LinfBall,
        L2Sphere,
        SpectralBall,
        Orthogonal,
        PSD,
    )
}


_BASE_FROM_CONFIG = Constraint.__dict__["from_config"].__func__


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def get(
    identifier: Constraint | str | Mapping[str, Any],
    custom_objects: Mapping[str, type[Constraint]] | None = None,
) -> Constraint:
    """Return the constraint an identifier names.

    Args:
        identifier: a :class:`~torch_constraints.Constraint` (returned as it is); a
            class name or its snake-case form (``"MaxNorm"``, ``"max_norm"``,
            ``"non_neg"``), built with its defaults; or a config dict
            ``{"class_name": "MaxNorm", "config": {"max_value": 3.0}}`` as
            :func:`serialize` returns (optionally with ``"straight_through": True``,
            which sets that attribute of the result; tensors encoded by
            :func:`serialize` are decoded).
        custom_objects: your own constraint classes by name, so that their names and
            configs resolve too. Default: ``None``.

    Returns:
        A constraint.

    Raises:
        ValueError: for an unknown name, or a malformed config dict: other keys
            than ``class_name``, ``config`` and ``straight_through``, a config key
            the class's constructor does not take, or a required one missing.
        TypeError: for any other kind of identifier, a ``custom_objects`` entry
            that is not a :class:`~torch_constraints.Constraint` subclass, or (from
            the constructor) a config value of the wrong type.

    Example:
        >>> from torch_constraints import get, serialize
        >>> get("max_norm")
        MaxNorm(max_value=2.0, dim=0)
        >>> get({"class_name": "UnitNorm", "config": {"dim": 1}})
        UnitNorm(dim=1)
        >>> get(serialize(get("NonNeg")))
        NonNeg()
        >>> get({"class_name": "MaxNorm", "config": {"max_value": 3.0, "axis": 0}})
        Traceback (most recent call last):
        ...
        ValueError: the config of MaxNorm has the key 'axis', which MaxNorm does not take; ...
    """
    if isinstance(identifier, Constraint):
        return identifier
    classes = {**_BUILTIN, **_custom(custom_objects)}
    by_name = {**classes, **{_snake(name): cls for name, cls in classes.items()}}
    if isinstance(identifier, str):
        return _lookup(identifier, by_name)()
    if isinstance(identifier, Mapping):
        return _from_dict(identifier, by_name)
    raise TypeError(
        f"cannot interpret {identifier!r} as a constraint: expected a Constraint, a name such "
        "as 'max_norm', or a dict {'class_name': ..., 'config': {...}}"
    )


def serialize(constraint: Constraint) -> dict[str, Any]:
    """Return ``{"class_name": ..., "config": ...}``, which :func:`get` turns back.

    The result is JSON-serialisable when the config's values are numbers, tuples
    and tensors: a tensor (a :class:`~torch_constraints.Box` bound) becomes
    ``{"class_name": "__tensor__", "config": {"value": nested list, "dtype":
    "float32", "shape": [...]}}``, which :func:`get` decodes to a tensor of the
    same values, dtype and shape (on the CPU). A constraint with
    ``straight_through`` set (as :func:`~torch_constraints.constrain` sets it on
    the copy it registers) gets the key ``"straight_through": True``.

    Args:
        constraint: the constraint.

    Returns:
        A ``dict`` with ``class_name``, ``config`` and, if set, ``straight_through``.

    Raises:
        TypeError: if ``constraint`` is not a :class:`~torch_constraints.Constraint`.

    Example:
        >>> import json
        >>> import torch
        >>> from torch_constraints import Box, MaxNorm, get, serialize
        >>> serialize(MaxNorm(3.0))
        {'class_name': 'MaxNorm', 'config': {'max_value': 3.0, 'dim': 0}}
        >>> box = Box(max=torch.tensor([0.5, 1.0]))
        >>> get(json.loads(json.dumps(serialize(box)))).max
        tensor([0.5000, 1.0000])
    """
    if not isinstance(constraint, Constraint):
        raise TypeError(f"serialize: expected a Constraint, got {_describe(constraint)}")
    config = {key: _encode(value) for key, value in constraint.get_config().items()}
    result: dict[str, Any] = {"class_name": type(constraint).__name__, "config": config}
    if constraint.straight_through:
        result["straight_through"] = True
    return result


_TENSOR = "__tensor__"
_KEYS = frozenset({"class_name", "config"})
_OPTIONAL_KEYS = frozenset({"straight_through"})


def _from_dict(
    identifier: Mapping[str, Any], by_name: Mapping[str, type[Constraint]]
) -> Constraint:
    keys = set(identifier)
    if not _KEYS <= keys <= _KEYS | _OPTIONAL_KEYS or not isinstance(identifier["config"], Mapping):
        raise ValueError(
            "a constraint config must be {'class_name': ..., 'config': {...}} (and optionally "
            f"'straight_through': bool), got {dict(identifier)!r}"
        )
    straight_through = identifier.get("straight_through", False)
    if not isinstance(straight_through, bool):
        raise ValueError(
            f"a constraint config's 'straight_through' must be a bool, got {straight_through!r}"
        )
    cls = _lookup(identifier["class_name"], by_name)
    config = {key: _decode(key, value) for key, value in identifier["config"].items()}
    _check_keys(cls, config)
    constraint = cls.from_config(config)
    if not isinstance(constraint, Constraint):
        raise TypeError(
            f"{cls.__name__}.from_config returned {_describe(constraint)}, not a Constraint"
        )
    constraint.straight_through = straight_through
    return constraint


def _custom(custom_objects: object) -> dict[str, type[Constraint]]:
    if custom_objects is None:
        return {}
    if not isinstance(custom_objects, Mapping):
        raise TypeError(
            "custom_objects must be a mapping from names to Constraint subclasses, got "
            f"{_describe(custom_objects)}"
        )
    for name, cls in custom_objects.items():
        if not isinstance(name, str):
            raise TypeError(f"custom_objects: names must be strings, got {name!r}")
        if not (isinstance(cls, type) and issubclass(cls, Constraint)):
            raise TypeError(
                f"custom_objects[{name!r}] must be a Constraint subclass, got {_describe(cls)}"
            )
    return dict(custom_objects)


def _check_keys(cls: type[Constraint], config: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for config keys the constructor does not take, or lacks."""
    if getattr(cls.from_config, "__func__", None) is not _BASE_FROM_CONFIG:
        return  # the class reads its config itself
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    named = [p for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    accepted = ", ".join(repr(p.name) for p in named) or "none"
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        names = {p.name for p in named}
        for key in config:
            if key not in names:
                raise ValueError(
                    f"the config of {cls.__name__} has the key {key!r}, which "
                    f"{cls.__name__} does not take; accepted keys: {accepted}"
                )
    for p in named:
        if p.default is p.empty and p.name not in config:
            raise ValueError(
                f"the config of {cls.__name__} lacks the required key {p.name!r}; "
                f"accepted keys: {accepted}"
            )


def _encode(value: Any) -> Any:
    if isinstance(value, Tensor):
        cpu = value.detach().cpu()
        return {
            "class_name": _TENSOR,
            "config": {
                "value": cpu.tolist(),
                "dtype": str(cpu.dtype).removeprefix("torch."),
                "shape": list(cpu.shape),
            },
        }
    return value


def _decode(key: str, value: Any) -> Any:
    if not (isinstance(value, Mapping) and value.get("class_name") == _TENSOR):
        return value
    spec = value.get("config")
    dtype = getattr(torch, spec.get("dtype", ""), None) if isinstance(spec, Mapping) else None
    if not isinstance(spec, Mapping) or not isinstance(dtype, torch.dtype):
        raise ValueError(
            f"the config's {key!r} is not an encoded tensor: expected {{'class_name': "
            f"'{_TENSOR}', 'config': {{'value': ..., 'dtype': ..., 'shape': [...]}}}}, "
            f"got {value!r}"
        )
    try:
        return torch.tensor(spec["value"], dtype=dtype).reshape(spec["shape"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"the config's {key!r} is not an encoded tensor: {error}") from None


def _describe(obj: object) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__qualname__}"
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"the {type(obj).__name__} {obj.__qualname__}"
    return f"{obj!r} ({type(obj).__name__})"


def _lookup(name: object, by_name: Mapping[str, type[Constraint]]) -> type[Constraint]:
    if isinstance(name, str) and name in by_name:
        return by_name[name]
    known = ", ".join(sorted(n for n in by_name if "_" in n or n.islower()))
    raise ValueError(f"unknown constraint {name!r}; known names: {known}")
