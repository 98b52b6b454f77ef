"""Constraints by name or config: :func:`get` and :func:`serialize`, as in Keras."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

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
            :func:`serialize` returns.
        custom_objects: your own constraint classes by name, so that their names and
            configs resolve too. Default: ``None``.

    Returns:
        A constraint.

    Raises:
        ValueError: for an unknown name or a malformed config dict.
        TypeError: for any other kind of identifier.

    Example:
        >>> from torch_constraints import get, serialize
        >>> get("max_norm")
        MaxNorm(max_value=2.0, dim=0)
        >>> get({"class_name": "UnitNorm", "config": {"dim": 1}})
        UnitNorm(dim=1)
        >>> get(serialize(get("NonNeg")))
        NonNeg()
    """
    if isinstance(identifier, Constraint):
        return identifier
    classes = {**_BUILTIN, **(custom_objects or {})}
    by_name = {**classes, **{_snake(name): cls for name, cls in classes.items()}}
    if isinstance(identifier, str):
        return _lookup(identifier, by_name)()
    if isinstance(identifier, Mapping):
        if set(identifier) != {"class_name", "config"} or not isinstance(
            identifier["config"], Mapping
        ):
            raise ValueError(
                "a constraint config must be {'class_name': ..., 'config': {...}}, "
                f"got {dict(identifier)!r}"
            )
        return _lookup(identifier["class_name"], by_name).from_config(dict(identifier["config"]))
    raise TypeError(
        f"cannot interpret {identifier!r} as a constraint: expected a Constraint, a name such "
        "as 'max_norm', or a dict {'class_name': ..., 'config': {...}}"
    )


def serialize(constraint: Constraint) -> dict[str, Any]:
    """Return ``{"class_name": ..., "config": ...}``, which :func:`get` turns back.

    Example:
        >>> from torch_constraints import MaxNorm, serialize
        >>> serialize(MaxNorm(3.0))
        {'class_name': 'MaxNorm', 'config': {'max_value': 3.0, 'dim': 0}}
    """
    return {"class_name": type(constraint).__name__, "config": constraint.get_config()}


def _lookup(name: object, by_name: Mapping[str, type[Constraint]]) -> type[Constraint]:
    if isinstance(name, str) and name in by_name:
        return by_name[name]
    known = ", ".join(sorted(n for n in by_name if "_" in n or n.islower()))
    raise ValueError(f"unknown constraint {name!r}; known names: {known}")
