"""Small helpers shared by the tests."""

from __future__ import annotations

import torch
from torch import nn


def raw(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The stored raw tensor behind a parametrized ``module.<name>``."""
    return module.parametrizations[name].original  # type: ignore[no-any-return]


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
