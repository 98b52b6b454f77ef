"""saturation and violation: values against hand computations, one sync per call."""

from __future__ import annotations

import pytest
import torch
from helpers import raw
from torch import nn

from torch_constraints import (
    MaxNorm,
    NonNeg,
    SpectralBall,
    _l2,
    constrain,
    hard_project,
    saturation,
    violation,
)


def model() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    constrain(net[0], "weight", -0.5, 0.5)
    constrain(net[0], "bias", NonNeg())
    constrain(net[2], "weight", MaxNorm(1.0))
    return net


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_saturation_counts_entries_within_one_ulp_of_a_bound(dtype: torch.dtype) -> None:
    net = model().to(dtype)
    lo = torch.tensor(-0.5, dtype=dtype)
    hi = torch.tensor(0.5, dtype=dtype)
    inside_hi = torch.nextafter(hi, torch.tensor(0.0, dtype=dtype))  # one ulp inside: counts
    two_ulps = torch.nextafter(inside_hi, torch.tensor(0.0, dtype=dtype))  # does not
    values = torch.stack([lo, hi, inside_hi, two_ulps, torch.tensor(9.0, dtype=dtype)])
    values = torch.cat([values, torch.zeros(7, dtype=dtype)]).reshape(3, 4)
    with torch.no_grad():
        raw(net[0]).copy_(values)
        raw(net[0], "bias").copy_(torch.tensor([0.0, -1.0, 2.0], dtype=dtype))
    result = saturation(net)
    # lo, hi, hi - 1 ulp and 9 (clipped to hi) of 12; MaxNorm is not a box.
    assert result == {"0.weight": 4 / 12, "0.bias": 2 / 3}


def test_saturation_with_tensor_bounds_and_none_for_unboxed() -> None:
    layer = constrain(nn.Linear(2, 2), "weight", torch.tensor([[-1.0], [0.0]]), 1.0)
    with torch.no_grad():
        raw(layer).copy_(torch.tensor([[-1.0, 0.3], [0.0, 0.2]]))
    assert saturation(layer) == {"weight": 0.5}
    assert saturation(constrain(nn.Linear(2, 2), "weight", SpectralBall())) == {}
    assert saturation(nn.Linear(2, 2)) == {}


def test_violation_is_the_max_distance_to_the_projection() -> None:
    net = model()
    with torch.no_grad():
        raw(net[0]).copy_(torch.full((3, 4), 0.25))
        raw(net[0]).view(-1)[5] = -0.875
        raw(net[0], "bias").copy_(torch.tensor([0.0, -0.125, 0.5]))
        raw(net[2]).copy_(torch.tensor([[3.0, 4.0, 0.0], [0.1, 0.0, 0.0]]))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert violation(net) == pytest.approx(
        {"0.weight": 0.375, "0.bias": 0.125, "2.weight": 3.2}, rel=1e-6
    )
    # Nothing changed.
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    hard_project(net)
    assert max(violation(net).values()) <= 1e-6


def test_violation_of_a_matrix_constraint_drifting_in_straight_through_training() -> None:
    torch.manual_seed(1)
    layer = constrain(nn.Linear(6, 6), "weight", SpectralBall(0.5), straight_through=True)
    assert violation(layer)["weight"] <= 1e-6
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(16, 6)).pow(2).sum().neg().backward()
        opt.step()
    w = raw(layer).detach().double()
    u, s, vh = torch.linalg.svd(w)
    expected = (w - u @ torch.diag(s.clamp_max(0.5)) @ vh).abs().max()
    assert violation(layer)["weight"] == pytest.approx(float(expected), rel=1e-4)
    assert float(expected) > 0.1


def test_one_host_sync_per_call() -> None:
    net = nn.Sequential(*[nn.Linear(3, 3) for _ in range(5)])
    for layer in net:
        constrain(layer, "weight", -0.1, 0.1)
        constrain(layer, "bias", MaxNorm(0.1))
    calls = []
    original = torch.Tensor.tolist

    def counting(self: torch.Tensor) -> object:
        calls.append(self.shape)
        return original(self)

    with pytest.MonkeyPatch.context() as mp:
        # The norm kernels branch on values on the CPU, where reading one is free;
        # on other devices they read none: take that path here.
        mp.setattr(_l2, "branches", lambda t: False)
        mp.setattr(torch.Tensor, "tolist", counting)
        mp.setattr(torch.Tensor, "item", lambda self: pytest.fail("item() syncs"))
        mp.setattr(torch.Tensor, "__bool__", lambda self: pytest.fail("bool() syncs"))
        assert len(saturation(net)) == 5
        assert len(violation(net)) == 10
    assert calls == [(5,), (10,)]
