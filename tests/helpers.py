"""Small helpers shared by the tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from torch_constraints import Box, named_constraints


def raw(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The stored raw tensor behind ``module.<name>`` (the tensor itself if not parametrized)."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original  # type: ignore[no-any-return]
    return getattr(module, name)  # type: ignore[no-any-return]


class Double(nn.Module):
    """A parametrization from elsewhere, with a right_inverse."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    def right_inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x / 2


class Shift(nn.Module):
    """A parametrization from elsewhere, without a right_inverse."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


class CountingBox(Box):
    """A box that counts its projections (a real constraint: the generic path calls project)."""

    def __init__(self, min: float, max: float) -> None:
        super().__init__(min, max)
        self.calls = 0

    def project(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().project(x)


def projections(model: nn.Module) -> int:
    """How many times each constrained tensor was projected (all are projected together)."""
    constraints = [c for _, c in named_constraints(model) if isinstance(c, CountingBox)]
    return sum(c.calls for c in constraints) // len(constraints)


def assert_same(a: nn.Module, b: nn.Module) -> None:
    """The two modules' state_dicts have the same keys, in order, and equal values."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
