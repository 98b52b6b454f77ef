"""Process-wide counters that tell cached projection plans when they may be stale.

``hard_project`` caches, per root module, the list of constrained tensors and how
they are laid out in memory, so that a call costs a few kernels and no tree walk.
The cache is keyed on two counters:

* ``generation`` moves whenever a module, parameter or buffer is registered
  anywhere (PyTorch's global registration hooks), whenever this library adds or
  removes a constraint, and whenever a constraint sees ``module.to()`` or an
  assignment ``module.weight = W``. A plan built at an older generation is rebuilt.
* ``optimizer_steps`` counts the steps of optimizers that may write parameters
  without moving their version counters (a global step pre-hook): PyTorch's
  ``fused=True`` implementations, and any optimizer from outside ``torch.optim``.
  A constraint trusts "already projected" only while no such step has run since
  the projection. (PyTorch's for-loop and foreach implementations use in-place
  tensor ops, which move the counters; a test checks this for every optimizer.)

The hooks are installed the first time a plan is built, not at import.
"""

from __future__ import annotations

from typing import Any

from torch.nn.modules import module as _module
from torch.optim import optimizer as _optimizer

__all__ = ["generation", "install_hooks", "layout_changed", "may_write_silently", "optimizer_steps"]

_generation = 0
_optimizer_steps = 0
_installed = False


def generation() -> int:
    """Return the current layout generation."""
    return _generation


def optimizer_steps() -> int:
    """Return how many steps of :func:`may_write_silently` optimizers have started."""
    return _optimizer_steps


def layout_changed(*_: Any) -> None:
    """Invalidate every cached plan (also usable directly as a registration hook)."""
    global _generation
    _generation += 1


def _count_step(optimizer: Any, *_: Any) -> None:
    global _optimizer_steps
    if may_write_silently(optimizer):
        _optimizer_steps += 1


def may_write_silently(optimizer: Any) -> bool:
    """Whether ``optimizer.step()`` may change parameters without moving their versions."""
    if not type(optimizer).__module__.startswith("torch.optim."):
        return True
    return any(group.get("fused") for group in optimizer.param_groups)


def install_hooks() -> None:
    """Install the global registration and optimizer hooks once per process."""
    global _installed
    if _installed:
        return
    # Both functions return None, which tells PyTorch to keep the registered object.
    _module.register_module_module_registration_hook(layout_changed)
    _module.register_module_parameter_registration_hook(layout_changed)
    _module.register_module_buffer_registration_hook(layout_changed)
    _optimizer.register_optimizer_step_pre_hook(_count_step)
    _installed = True
