"""Run ``hard_project`` after every optimizer step."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from . import _ties, _tree
from ._validation import type_name
from .packing import PackedProjection
from .projection import hard_project

__all__ = ["project_after_step", "require_projectable"]


def project_after_step(
    optimizer: torch.optim.Optimizer | Any, module: nn.Module | PackedProjection
) -> RemovableHandle:
    """Call :func:`~torch_constraints.hard_project` on ``module`` after each ``optimizer.step()``.

    This is the post-step projection of Keras' ``kernel_constraint`` and of WGAN's
    weight clipping. With ``parametrize=False`` constraints it is the whole
    mechanism; with parametrized ones it keeps the raw weights feasible too, so
    the forward pass's projection changes nothing and its gradient is the
    identity inside the set.

    Optimizer wrappers that keep the real optimizer in ``.optimizer`` (Accelerate's
    ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``, the Hugging Face
    Trainer's) are unwrapped: the hook goes on the optimizer that updates the
    weights, and so runs after every real update, and only then.

    Args:
        optimizer: a :class:`torch.optim.Optimizer`, or a wrapper of one.
        module: the root of the constrained module tree, or a
            :class:`~torch_constraints.PackedProjection` (the explicit opt-in).

    Returns:
        A handle; ``handle.remove()`` stops the projection.

    Raises:
        TypeError: if ``optimizer`` is not (a wrapper of) an Optimizer, or
            ``module`` neither a Module nor a PackedProjection.
        ValueError: if ``module`` has no tensor whose raw value this library can
            project (nothing constrained, or only constraints stacked after another
            library's parametrization), or a parametrized tensor of it is also read,
            unconstrained, under another name (tied weights).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_constraints import constrain_all, project_after_step
        >>> critic = nn.Linear(2, 1)
        >>> _ = constrain_all(critic, -0.01, 0.01, parametrize=False)
        >>> optimizer = torch.optim.SGD(critic.parameters(), lr=1.0)
        >>> handle = project_after_step(optimizer, critic)
        >>> critic(torch.ones(1, 2)).sum().backward()
        >>> optimizer.step()
        >>> bool(critic.weight.abs().max() <= 0.01)
        True
        >>> handle.remove()
    """
    inner = _unwrap(optimizer)
    if isinstance(module, PackedProjection):
        packed = module

        def project_packed(_optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
            packed()

        return inner.register_step_post_hook(project_packed)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"project_after_step: expected an nn.Module or a PackedProjection, got "
            f"{type_name(module)}"
        )
    require_projectable(module, "project_after_step")

    def project(_optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        hard_project(module)

    return inner.register_step_post_hook(project)


def require_projectable(module: nn.Module, caller: str) -> None:
    """Raise ``ValueError`` unless ``hard_project(module)`` has something to write.

    Also refuses a tree with a tie no projection can honour (see ``_ties``).
    """
    _ties.check_tree(module)
    found = _tree.constrained(module)
    if any(entry.constraints and entry.raw is not None for entry in found):
        return
    if found:
        entry = found[0]
        raise ValueError(
            f"{caller}: {entry.qualname} ({type_name(entry.owner)}) carries "
            f"{', '.join(map(repr, entry.stacked))} stacked after another library's "
            "parametrization: it acts on that parametrization's output in the forward pass, "
            "and there is no stored tensor of that value to project after a step. Keep the "
            "forward constraint alone (no projection needed), or remove the other "
            "parametrization and constrain the raw tensor"
        )
    raise ValueError(
        f"{caller}: {type_name(module)} has no tensor constrained by torch_constraints; "
        "call constrain() or constrain_all() first (a hook that projects nothing is "
        "almost certainly a mistake, while hard_project itself does nothing on such a model)"
    )


def _unwrap(optimizer: Any) -> torch.optim.Optimizer:
    """The optimizer that updates the weights, under any wrappers exposing ``.optimizer``."""
    seen: set[int] = set()
    current = optimizer
    while id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "optimizer", None)
        if inner is None or inner is current:
            break
        current = inner
    if not isinstance(current, torch.optim.Optimizer):
        raise TypeError(
            "project_after_step: expected a torch.optim.Optimizer, or a wrapper exposing one "
            f"as .optimizer, got {type_name(optimizer)}"
        )
    return current
