"""The gradient at a bound, end to end: saturated weights keep learning.

After ``hard_project`` a clipped weight sits exactly on its bound. The library's
own clamp passes the gradient wherever ``min <= x <= max`` (bounds included), so
such a weight still receives the gradient, in particular the part pointing back
inside; only raw values strictly outside the set get zero (in the plain mode).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torch_constraints import Box, constrain, hard_project
from torch_constraints.functional import box_bounds

BOUNDS = ["scalar", "tensor"]


def saturated_layer(bounds: str, dtype: torch.dtype, straight_through: bool) -> nn.Linear:
    """A layer whose weights were pushed far outside, then projected onto the bounds."""
    torch.manual_seed(0)
    layer = nn.Linear(6, 4).to(dtype)
    constraint = (
        Box(-0.05, 0.05)
        if bounds == "scalar"
        else Box(min=-torch.tensor([[0.05], [0.1], [0.2], [0.3]], dtype=torch.float64), max=0.05)
    )
    constrain(layer, "weight", constraint, straight_through=straight_through)
    with torch.no_grad():
        raw = layer.parametrizations.weight.original
        raw.mul_(100.0)
    hard_project(layer)
    return layer


def bounds_of(layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """The bounds the projection applies: the requested ones, rounded inward to the dtype."""
    box = layer.parametrizations.weight[0]
    raw = layer.parametrizations.weight.original.detach()
    lo, hi = box_bounds(raw, box.min, box.max)
    lo_t = torch.as_tensor(lo, dtype=raw.dtype).expand_as(raw)
    hi_t = torch.as_tensor(hi, dtype=raw.dtype).expand_as(raw)
    assert (hi_t.double() <= 0.05).all() and (lo_t.double() >= -0.3).all()
    return lo_t, hi_t


@pytest.mark.parametrize("straight_through", [False, True], ids=["plain", "straight_through"])
@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_saturated_weights_sit_on_the_bound_and_still_get_the_gradient(
    bounds: str, dtype: torch.dtype, straight_through: bool
) -> None:
    layer = saturated_layer(bounds, dtype, straight_through)
    raw = layer.parametrizations.weight.original
    lo, hi = bounds_of(layer)
    on_upper, on_lower = raw.detach() == hi, raw.detach() == lo
    assert on_upper.sum() >= 4 and on_lower.sum() >= 4  # most weights are saturated
    assert ((raw >= lo) & (raw <= hi)).all()
    # A loss whose gradient is +1 on every weight at the upper bound and -1 at the
    # lower one: gradient descent moves every saturated weight back inside.
    direction = on_upper.to(dtype) - on_lower.to(dtype)
    (layer.weight * direction).sum().backward()
    assert raw.grad is not None
    assert torch.equal(raw.grad, direction)  # passed through unchanged, bounds included
    with torch.no_grad():
        raw.sub_(0.5 * raw.grad)
    assert (raw[on_upper] < hi[on_upper]).all() and (raw[on_lower] > lo[on_lower]).all()


@pytest.mark.parametrize("straight_through", [False, True], ids=["plain", "straight_through"])
@pytest.mark.parametrize("bounds", BOUNDS)
def test_at_the_bound_the_gradient_is_that_of_the_unconstrained_layer(
    bounds: str, straight_through: bool
) -> None:
    layer = saturated_layer(bounds, torch.float32, straight_through)
    plain = nn.Linear(6, 4)
    with torch.no_grad():
        plain.weight.copy_(layer.weight)
        plain.bias.copy_(layer.bias)
    x = torch.randn(32, 6)
    layer(x).tanh().sum().backward()
    plain(x).tanh().sum().backward()
    raw = layer.parametrizations.weight.original
    assert raw.grad is not None and plain.weight.grad is not None
    assert torch.equal(raw.grad, plain.weight.grad)
    assert (raw.grad != 0).all()


@pytest.mark.parametrize("bounds", BOUNDS)
def test_outside_the_set_plain_mode_stops_the_gradient_and_straight_through_passes_it(
    bounds: str,
) -> None:
    grads = {}
    for straight_through in (False, True):
        layer = saturated_layer(bounds, torch.float32, straight_through)
        raw = layer.parametrizations.weight.original
        with torch.no_grad():
            raw[0].fill_(1.0)  # outside every upper bound, not projected
        layer.weight.sum().backward()
        assert raw.grad is not None
        grads[straight_through] = raw.grad
    assert grads[False][0].eq(0).all() and grads[False][1:].eq(1).all()
    assert grads[True].eq(1).all()


@pytest.mark.parametrize("straight_through", [False, True], ids=["plain", "straight_through"])
def test_an_outward_step_is_undone_by_the_next_projection(straight_through: bool) -> None:
    layer = saturated_layer("scalar", torch.float32, straight_through)
    raw = layer.parametrizations.weight.original
    _, hi = bounds_of(layer)
    on_upper = raw.detach() == hi
    (-(layer.weight * on_upper)).sum().backward()  # descent pushes upper weights outward
    assert raw.grad is not None and raw.grad[on_upper].eq(-1).all()
    with torch.no_grad():
        raw.sub_(raw.grad)
    assert (raw[on_upper] > hi[on_upper]).all()
    hard_project(layer)
    assert torch.equal(raw[on_upper], hi[on_upper])


def test_the_compiled_boundary_gradient_is_the_eager_one() -> None:
    torch._dynamo.reset()
    layer = saturated_layer("tensor", torch.float32, straight_through=False)
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        for model in (layer, twin):
            model.parametrizations.weight.original[0, :3].fill_(1.0)  # some outside, unprojected
    x = torch.randn(8, 6)
    layer(x).sum().backward()
    torch.compile(twin, fullgraph=True, backend="aot_eager")(x).sum().backward()
    a = layer.parametrizations.weight.original.grad
    b = twin.parametrizations.weight.original.grad
    assert a is not None and b is not None
    assert torch.equal(a, b) and a[0, :3].eq(0).all() and (a[1:] != 0).all()
    torch._dynamo.reset()
