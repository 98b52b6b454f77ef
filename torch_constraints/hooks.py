"""Run ``hard_project`` after every optimizer step."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .projection import hard_project
from .registration import constrained_slots, type_name

__all__ = ["project_after_step"]


def project_after_step(optimizer: torch.optim.Optimizer, module: nn.Module) -> RemovableHandle:
    """Call :func:`~torch_constraints.hard_project` on ``module`` after each ``optimizer.step()``.

    With the constraint also in the forward pass (as :func:`~torch_constraints.constrain`
    registers it), this is the recommended setup: the raw weights stay feasible,
    and right after each projection the forward pass of box-like constraints skips
    its work.

    Args:
        optimizer: any :class:`torch.optim.Optimizer`.
        module: the root of the constrained module tree.

    Returns:
        A handle; ``handle.remove()`` stops the projection.

    Raises:
        TypeError: if ``optimizer`` is not an Optimizer or ``module`` not a Module.
        ValueError: if ``module`` has no tensor constrained by this library.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_constraints import constrain_all, project_after_step
        >>> critic = nn.Linear(2, 1)
        >>> _ = constrain_all(critic, -0.01, 0.01)
        >>> optimizer = torch.optim.SGD(critic.parameters(), lr=1.0)
        >>> handle = project_after_step(optimizer, critic)
        >>> critic(torch.ones(1, 2)).sum().backward()
        >>> optimizer.step()
        >>> bool(critic.parametrizations.weight.original.abs().max() <= 0.01)
        True
        >>> handle.remove()
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"expected a torch.optim.Optimizer, got {type_name(optimizer)}")
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type_name(module)}")
    if next(constrained_slots(module), None) is None:
        raise ValueError(
            f"{type_name(module)} has no tensor constrained by torch_constraints; "
            "call constrain() or constrain_all() first"
        )

    def hook(_optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        hard_project(module)

    return optimizer.register_step_post_hook(hook)
