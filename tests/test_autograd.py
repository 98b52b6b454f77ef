"""The library's own clamp and straight-through gradients."""

from __future__ import annotations

import torch

from torch_constraints._autograd import clamp, straight_through


def test_clamp_gradient_passes_inside_and_on_the_bounds_and_stops_outside() -> None:
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0], requires_grad=True)
    clamp(x, -1.0, 1.0).backward(torch.ones(5))
    assert x.grad is not None
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_clamp_gradient_on_a_bound_is_not_zero_in_either_direction() -> None:
    # A weight saturated by hard_project sits exactly on the bound; a loss that
    # pushes it back inside must reach it.
    x = torch.tensor([1.0], requires_grad=True)
    clamp(x, -1.0, 1.0).sum().mul(-1).backward()  # gradient descent moves x toward 2
    assert x.grad is not None and x.grad.item() == -1.0
    x.grad = None
    clamp(x, -1.0, 1.0).sum().backward()  # gradient descent moves x toward 0 (inside)
    assert x.grad is not None and x.grad.item() == 1.0


def test_clamp_value_is_torch_clamp_exactly() -> None:
    x = torch.randn(1000, requires_grad=True)
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


def test_under_functorch_transforms_the_gradients_are_the_eager_ones() -> None:
    # Eager calls use classic Functions; torch.func transforms need the
    # setup_context forms. Both must give the same pinned gradients.
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
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
