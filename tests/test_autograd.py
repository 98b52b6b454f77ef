"""The library's own clamp and straight-through gradients.

``clamp`` takes two paths: ``torch.clamp`` below ``FUSED_BACKWARD_NUMEL`` elements,
its own one-pass backward from there on; every property is checked on both.
"""

from __future__ import annotations

import pytest
import torch

from torch_constraints._autograd import FUSED_BACKWARD_NUMEL, clamp, straight_through

PATHS = pytest.mark.parametrize("repeat", [1, FUSED_BACKWARD_NUMEL], ids=["small", "fused"])


def tiled(values: list[float], repeat: int) -> torch.Tensor:
    return torch.tensor(values).repeat(repeat).requires_grad_()


@PATHS
def test_clamp_gradient_passes_inside_and_on_the_bounds_and_stops_outside(repeat: int) -> None:
    x = tiled([-2.0, -1.0, 0.0, 1.0, 2.0, float("nan")], repeat)
    y = clamp(x, -1.0, 1.0)
    assert torch.equal(y[:5], torch.clamp(x[:5], -1.0, 1.0)) and y[5].isnan()
    y.backward(torch.ones_like(x))
    assert x.grad is not None
    assert x.grad[:6].tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert torch.equal(x.grad, x.grad[:6].repeat(repeat))


@PATHS
def test_clamp_gradient_on_a_bound_is_not_zero_in_either_direction(repeat: int) -> None:
    # A weight saturated by hard_project sits exactly on the bound; a loss that
    # pushes it back inside must reach it.
    x = tiled([1.0], repeat)
    clamp(x, -1.0, 1.0).sum().mul(-1).backward()  # gradient descent moves x toward 2
    assert x.grad is not None and x.grad.eq(-1.0).all()
    x.grad = None
    clamp(x, -1.0, 1.0).sum().backward()  # gradient descent moves x toward 0 (inside)
    assert x.grad is not None and x.grad.eq(1.0).all()


def test_both_paths_give_the_same_values_and_gradients() -> None:
    torch.manual_seed(0)
    x = (torch.randn(FUSED_BACKWARD_NUMEL) * 2).requires_grad_()
    with torch.no_grad():
        x[::7] = 1.0  # some entries exactly on a bound
    up = torch.randn(FUSED_BACKWARD_NUMEL)
    fused = clamp(x, -1.0, 1.0)
    assert fused.grad_fn is not None and "Clamp" in type(fused.grad_fn).__name__
    (grad_fused,) = torch.autograd.grad(fused, x, up)
    small = torch.cat([clamp(part, -1.0, 1.0) for part in x.split(1024)])
    (grad_small,) = torch.autograd.grad(small, x, up)
    assert torch.equal(fused, small) and torch.equal(grad_fused, grad_small)


@PATHS
def test_clamp_value_is_torch_clamp_exactly(repeat: int) -> None:
    x = tiled([-2.0, -0.05, 0.2, 5.0], repeat)
    assert torch.equal(clamp(x, -0.1, 0.3), torch.clamp(x, -0.1, 0.3))


def test_clamp_with_tensor_bounds() -> None:
    x = torch.tensor([[2.0, -2.0], [0.5, 0.5]], requires_grad=True)
    hi = torch.tensor([[1.0], [0.25]])
    y = clamp(x, -hi, hi)
    assert torch.equal(y, torch.tensor([[1.0, -1.0], [0.25, 0.25]]))
    y.sum().backward()
    assert x.grad is not None and x.grad.sum() == 0


def test_clamp_gradcheck_away_from_kinks() -> None:
    x = torch.tensor([-3.0, -0.5, 0.2, 0.7, 3.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: clamp(t, -1.0, 1.0), (x,))


def test_straight_through_is_exact_in_value_and_identity_in_gradient() -> None:
    x = torch.tensor([1.0, -3.0, 0.05], requires_grad=True)
    projected = x.detach().clamp(-0.1, 0.1)
    y = straight_through(x, projected)
    # x + (clamp(x) - x).detach() would give 0.100000024 for 1.0
    assert torch.equal(y, projected)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad is not None and x.grad.tolist() == [1.0, 2.0, 3.0]


def test_without_grad_both_return_plain_values() -> None:
    x = torch.randn(4)
    assert torch.equal(clamp(x, -0.1, 0.1), x.clamp(-0.1, 0.1))
    assert straight_through(x, x.clamp(0, 1)).grad_fn is None


@PATHS
def test_under_functorch_transforms_the_gradients_are_the_eager_ones(repeat: int) -> None:
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]).repeat(repeat)
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]).repeat(repeat)
    eager = x.clone().requires_grad_()
    (clamp(eager, -1.0, 1.0) * weights).sum().backward()
    transformed = torch.func.grad(lambda t: (clamp(t, -1.0, 1.0) * weights).sum())(x)
    assert eager.grad is not None and torch.equal(transformed, eager.grad)

    projected = x.clamp(-0.5, 0.5)
    through = torch.func.grad(lambda t: (straight_through(t, projected) * weights).sum())(x)
    assert torch.equal(through, weights)


def test_vmap_over_clamp_and_straight_through() -> None:
    x = torch.randn(3, 4)
    assert torch.equal(torch.vmap(lambda t: clamp(t, -0.1, 0.1))(x), x.clamp(-0.1, 0.1))
    values = x.clamp(0, 1)
    assert torch.equal(torch.vmap(straight_through)(x, values), values)
