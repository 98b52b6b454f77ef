"""Properties of box constraints over random shapes, dtypes and bounds."""

from __future__ import annotations

import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

from torch_constraints import constrain, hard_project

dtypes = st.sampled_from([torch.float32, torch.float64, torch.bfloat16])
shapes = st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple)
numbers = st.floats(-2, 2, allow_nan=False, width=32)


@st.composite
def bounds(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[object, object]:
    kind = draw(st.sampled_from(["both", "min", "max", "per-channel"]))
    lo, hi = sorted([draw(numbers), draw(numbers)])
    if kind == "min":
        return lo, None
    if kind == "max":
        return None, hi
    if kind == "per-channel":
        channel = (shape[0],) + (1,) * (len(shape) - 1)
        width = torch.rand(
            channel, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))
        )
        return lo - width.double(), hi + width.double()
    return lo, hi


def in_range(value: torch.Tensor, lo: object, hi: object) -> bool:
    v = value.double()
    ok = torch.ones_like(v, dtype=torch.bool)
    if lo is not None:
        ok &= v >= torch.as_tensor(lo, dtype=torch.float64)
    if hi is not None:
        ok &= v <= torch.as_tensor(hi, dtype=torch.float64)
    return bool(ok.all())


def has_a_bfloat16_value(lo: object, hi: object) -> torch.Tensor:
    """Whether some bfloat16 number lies in [lo, hi], elementwise, by enumerating them all."""
    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    every = every[every.isfinite()].double().sort().values
    lo_t = torch.as_tensor(lo, dtype=torch.float64).reshape(-1)
    hi_t = torch.as_tensor(hi, dtype=torch.float64).reshape(-1)
    smallest_above_lo = every[torch.searchsorted(every, lo_t).clamp(max=every.numel() - 1)]
    return (smallest_above_lo >= lo_t) & (smallest_above_lo <= hi_t)


@given(data=st.data(), shape=shapes, dtype=dtypes)
def test_forward_is_feasible_idempotent_and_keeps_inside_points(
    data: st.DataObject, shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    lo, hi = data.draw(bounds(shape))
    module = nn.Module()
    seed = data.draw(st.integers(0, 2**16))
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3).to(dtype)
    module.register_parameter("w", nn.Parameter(x.clone()))
    try:
        constrain(module, "w", lo, hi)
    except ValueError as error:
        # Only a range that holds no value of the dtype may be refused.
        assert f"no {dtype} value lies in [min, max]" in str(error)
        assert dtype == torch.bfloat16 and lo is not None and hi is not None
        assert not has_a_bfloat16_value(lo, hi).all()
        return
    box = module.parametrizations.w[0]

    value = module.w
    assert value.dtype == dtype and value.shape == shape
    assert in_range(value, lo, hi), "forward value outside the requested range"
    assert torch.equal(box.project(value), value), "projecting twice differs from once"
    inside = box.project(x) == x
    assert torch.equal(value[inside], x[inside]), "a feasible value was moved"

    raw = module.parametrizations.w.original
    with torch.no_grad():
        raw.copy_(x)
    hard_project(module)
    assert torch.equal(raw.detach(), value.detach()), "hard_project differs from the forward map"
    hard_project(module)
    assert torch.equal(raw.detach(), value.detach()), "hard_project is not idempotent"


@given(
    x=st.lists(numbers, min_size=2, max_size=2),
    y=st.lists(numbers, min_size=2, max_size=2),
    lo=numbers,
    hi=numbers,
)
def test_box_projection_is_non_expansive(
    x: list[float], y: list[float], lo: float, hi: float
) -> None:
    assume(lo <= hi)
    from torch_constraints import Box

    box = Box(lo, hi)
    a, b = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    assert (box.project(a) - box.project(b)).norm() <= (a - b).norm() + 1e-12
