"""Live plans, told when a constraint changes through this library.

A :class:`~torch_constraints.PackedProjection` holds a plan: which tensors sit in
which buffer, projected by which constraints. Comparing all of it with the model
on every call would cost microseconds per tensor, more than projecting small
tensors does. So each call checks only what this library cannot be told of (every
tensor still views its slot), and the places where constraints change tell every
live plan to compare the rest by value on its next call:

* an attribute assigned on a constraint (``box.max = 0.05``, ``ball.radius = 2``),
  in :meth:`Constraint.__setattr__ <torch_constraints.Constraint.__setattr__>`;
* a constraint registered or removed, by this library (``constrain``,
  ``unconstrain``) or by PyTorch's own functions on a module this library
  constrained (they edit its class, whose metaclass is this library's, see
  :mod:`._classes`).

A notification carries no state: it only makes the next call check everything,
so a spurious one costs one full check and a plan that is told nothing is never
wrong about anything this library changed. Plans are held weakly.
"""

from __future__ import annotations

import weakref
from typing import Protocol

__all__ = ["Plan", "changed", "live", "register"]


class Plan(Protocol):
    def invalidate(self) -> None:
        """Compare the whole plan with the model on the next call."""


_live: weakref.WeakSet[Plan] = weakref.WeakSet()


def register(plan: Plan) -> None:
    """Tell ``plan`` of every change from now on (for as long as it lives)."""
    _live.add(plan)


def changed() -> None:
    """A constraint, or which tensors are constrained, may have changed: tell every plan."""
    for plan in list(_live):
        plan.invalidate()


def live() -> list[Plan]:
    """The plans alive now."""
    return list(_live)
