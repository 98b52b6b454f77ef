"""What the framework callbacks log, and the check of their flags."""

from __future__ import annotations

from torch import nn

from ..monitoring import saturation, violation

__all__ = ["logged_values", "require_bools"]


def logged_values(
    module: nn.Module, *, log_saturation: bool, log_violation: bool
) -> dict[str, float]:
    """``saturation/<name>`` and ``violation/<name>`` of ``module``, as asked.

    Each part asked for costs one device synchronisation per device (see
    :func:`~torch_constraints.saturation` and :func:`~torch_constraints.violation`).
    """
    values: dict[str, float] = {}
    if log_saturation:
        values.update((f"saturation/{k}", v) for k, v in saturation(module).items())
    if log_violation:
        values.update((f"violation/{k}", v) for k, v in violation(module).items())
    return values


def require_bools(**flags: object) -> None:
    """Raise ``TypeError`` naming the first flag that is not a bool."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"ProjectionCallback: {name} must be a bool, got {value!r}")
