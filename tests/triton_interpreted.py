"""The multi-tensor Triton clamp run by Triton's interpreter on CPU tensors.

Every result is compared bit for bit with ``torch.clamp`` (a NaN: still NaN, its
bits left as they were). tests/test_triton.py runs this file in a subprocess with
``TRITON_INTERPRET=1``, set before Triton is imported; its name keeps it out of the
normal collection.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover - run by test_triton.py
    pytest.skip("needs TRITON_INTERPRET=1 before Triton is imported", allow_module_level=True)
pytest.importorskip("triton")

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import torch_constraints as tc
from torch_constraints import _kernels, _triton
from torch_constraints.functional import box_bounds

# Small blocks and chunks, so that small tensors span several of each (the
# interpreter runs every program in Python).
BLOCK, CHUNK = 16, 64
SIZES = [0, 1, 2, 15, 16, 17, 63, 64, 65, 130, 0, 3]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

assert _triton.INTERPRETED


def bits(t: Tensor) -> Tensor:
    return t.view(_triton._FORMATS[t.dtype].int_type)


def special_bits(dtype: torch.dtype) -> list[int]:
    """Zeros, subnormals, the smallest normal, the extremes, infinities and NaNs, both signs."""
    form = _triton._FORMATS[dtype]
    tiny = bits(torch.tensor(torch.finfo(dtype).tiny, dtype=dtype)).item()
    mantissa = (form.inf & -form.inf).bit_length() - 1  # bits below the exponent
    quiet = form.inf | 1 << (mantissa - 1)
    positive = [0, 1, 2, tiny - 1, tiny, tiny + 1, form.inf - 1, form.inf, form.inf + 1]
    positive += [form.magnitude, form.inf | 1 << 3, quiet, quiet | 5]
    one = bits(torch.tensor(1.0, dtype=dtype)).item()
    positive += [one - 1, one, one + 1]
    sign = -(1 << (form.width - 1))
    return positive + [b + sign for b in positive]


def filled(dtype: torch.dtype, size: int, seed: int) -> Tensor:
    """Special values first, then random bit patterns (any float, NaNs included)."""
    form = _triton._FORMATS[dtype]
    generator = torch.Generator().manual_seed(seed)
    low, high = -(1 << (form.width - 1)), (1 << (form.width - 1)) - 1
    random = torch.randint(low, high, (size,), dtype=torch.int64, generator=generator)
    specials = torch.tensor(special_bits(dtype), dtype=torch.int64)
    shift = seed % len(specials)
    values = torch.cat([specials.roll(shift), random])[:size]
    return values.to(form.int_type).view(dtype)


def rounded(value: float, dtype: torch.dtype) -> float:
    return float(torch.tensor(value, dtype=dtype).item())


def assert_clamped(got: Tensor, before: Tensor, expected: Tensor) -> None:
    nan = expected.isnan()
    assert torch.equal(got.isnan(), nan), "NaN where torch.clamp has none, or the reverse"
    assert torch.equal(bits(got)[~nan], bits(expected)[~nan]), (before, got, expected)
    assert torch.equal(bits(got)[nan], bits(before)[nan]), "a NaN's bits changed"


def run_and_compare(
    tensors: list[Tensor],
    lo: float | None,
    hi: float | None,
    reference: Callable[[Tensor, float | None, float | None], Tensor] | None = None,
) -> None:
    before = [t.clone() for t in tensors]
    clamp = reference or (lambda x, a, b: x.clamp_(a, b))
    expected = [clamp(t.clone(), lo, hi) for t in tensors]
    plan = _triton.prepare(tensors, block=BLOCK, chunk=CHUNK)
    assert plan is not None
    assert plan.run(lo, hi)
    for got, old, want in zip(tensors, before, expected, strict=True):
        assert_clamped(got, old, want)


BOUNDS = [
    (-1.5, 2.0),
    (-1.0, None),
    (None, 0.25),
    (0.0, None),
    (None, -0.0),
    (-0.0, 0.0),
    (0.0, 0.0),
    (-0.0, -0.0),
    ("tiny", "max"),  # a subnormal lower bound and the largest finite value
    ("-max", "-tiny"),
    (1.0, 1.0),
]


def resolve(bound: float | str | None, dtype: torch.dtype) -> float | None:
    if not isinstance(bound, str):
        return bound
    info = torch.finfo(dtype)
    sign = -1.0 if bound.startswith("-") else 1.0
    if bound.endswith("tiny"):
        subnormal = torch.tensor(1, dtype=_triton._FORMATS[dtype].int_type).view(dtype)
        return sign * float(subnormal.item())
    return sign * info.max


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bounds", BOUNDS, ids=str)
def test_many_tensors_of_mixed_sizes_bit_for_bit(
    dtype: torch.dtype, bounds: tuple[float | str | None, float | str | None]
) -> None:
    lo, hi = (resolve(b, dtype) for b in bounds)
    tensors = [filled(dtype, size, seed) for seed, size in enumerate(SIZES)]
    run_and_compare(tensors, lo, hi)


@settings(max_examples=25, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    sizes=st.lists(st.integers(0, 150), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
    lo_index=st.one_of(st.none(), st.integers(0, 10**6)),
    hi_index=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_random_bits_and_bounds_taken_from_the_data(
    dtype: torch.dtype, sizes: list[int], seed: int, lo_index: int | None, hi_index: int | None
) -> None:
    tensors = [filled(dtype, size, seed + i) for i, size in enumerate(sizes)]
    flat = torch.cat([t.double() for t in tensors])
    finite = flat[flat.isfinite()].tolist() or [0.0]

    def pick(index: int | None) -> float | None:
        return None if index is None else rounded(finite[index % len(finite)], dtype)

    lo, hi = pick(lo_index), pick(hi_index)
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    if lo is None and hi is None:
        lo = 0.0
    run_and_compare(tensors, lo, hi)


def test_default_blocks_and_chunks() -> None:
    tensors = [filled(torch.float32, size, size) for size in (5000, 1024, 1, 0)]
    expected = [t.clone().clamp_(-1.0, 1.0) for t in tensors]
    before = [t.clone() for t in tensors]
    assert _triton.clamp_(tensors, -1.0, 1.0)
    for got, old, want in zip(tensors, before, expected, strict=True):
        assert_clamped(got, old, want)


def test_an_unaligned_tensor_is_clamped_too() -> None:
    base = filled(torch.float32, 200, 7)
    view = base[1:]  # contiguous, 4 bytes past a 16-byte boundary
    expected = view.clone().clamp_(-0.5, 0.5)
    plan = _triton.prepare([view], block=BLOCK, chunk=CHUNK)
    assert plan is not None and not plan.aligned
    assert plan.run(-0.5, 0.5)
    assert torch.equal(bits(view), bits(expected))


def test_only_empty_tensors() -> None:
    tensors = [torch.empty(0), torch.empty(0, 3)]
    plan = _triton.prepare(tensors)
    assert plan is not None and plan.rows.shape[0] == 0
    assert plan.run(-1.0, 1.0)


# ----------------------------------------------------------------------------- ties of zeros
def ordered_clamp(x: Tensor, lo: float | None, hi: float | None) -> Tensor:
    """``isnan(x) ? x : fminf(fmaxf(x, lo), hi)`` with ``-0.0 < +0.0`` (IEEE maximum)."""
    total = bits(x).to(torch.int64)
    width = _triton._FORMATS[x.dtype].width
    magnitude = (1 << (width - 1)) - 1
    key = torch.where(total < 0, total ^ magnitude, total)  # a total order, -0 < +0
    nan = x.isnan()
    out = x.clone()
    if lo is not None:
        bound = torch.tensor(lo, dtype=x.dtype)
        bound_key = int(bits(bound).to(torch.int64).item())
        bound_key = bound_key ^ magnitude if bound_key < 0 else bound_key
        out = torch.where(~nan & (key < bound_key), bound, out)
        key = torch.where(~nan & (key < bound_key), bound_key, key)
    if hi is not None:
        bound = torch.tensor(hi, dtype=x.dtype)
        bound_key = int(bits(bound).to(torch.int64).item())
        bound_key = bound_key ^ magnitude if bound_key < 0 else bound_key
        out = torch.where(~nan & (key > bound_key), bound, out)
    return x.copy_(out)


def bound_wins_clamp(x: Tensor, lo: float | None, hi: float | None) -> Tensor:
    """PyTorch's CUDA foreach functors: ``(isnan(x) || x > lo) ? x : lo``, then for ``hi``."""
    nan = x.isnan()
    if lo is not None:
        x.copy_(torch.where(nan | (x > lo), x, torch.tensor(lo, dtype=x.dtype)))
    if hi is not None:
        x.copy_(torch.where(nan | (x < hi), x, torch.tensor(hi, dtype=x.dtype)))
    return x


@pytest.mark.parametrize("reference", [ordered_clamp, bound_wins_clamp])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ties_of_zeros_follow_what_the_device_clamp_does(
    reference: Callable[[Tensor, float | None, float | None], Tensor],
    dtype: torch.dtype,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ties = _triton._learn_ties(dtype, torch.device("cpu"), reference)
    assert ties is not None and any(rule is not None for rule in ties.values())
    monkeypatch.setattr(_triton, "_ties", lambda device, dtype: ties)
    for lo in (0.0, -0.0, None):
        for hi in (0.0, -0.0, None):
            if lo is None and hi is None:
                continue
            tensors = [filled(dtype, 40, seed) for seed in range(3)]
            run_and_compare(tensors, lo, hi, reference)


def test_torch_clamp_on_the_cpu_keeps_the_element_on_ties() -> None:
    for dtype in DTYPES:
        ties = _triton._learn_ties(dtype, torch.device("cpu"))
        assert ties == {(side, sign): None for side in ("lo", "hi") for sign in (False, True)}


def test_ties_it_cannot_model_turn_the_kernel_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def flipping(x: Tensor, lo: float | None, hi: float | None) -> Tensor:
        return x.neg_() if x.eq(0).all() else x.clamp_(lo, hi)  # -0 <-> +0

    assert _triton._learn_ties(torch.float32, torch.device("cpu"), flipping) is None
    monkeypatch.setattr(_triton, "_ties", lambda device, dtype: None)
    x = torch.tensor([-2.0, 0.5, 2.0])
    assert not _triton.clamp_([x], -1.0, 1.0)
    assert x.tolist() == [-2.0, 0.5, 2.0]


# ----------------------------------------------------------------------------- the hook
def spy(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each call of ``_triton.clamp_`` returned (``True``: the kernel ran)."""
    taken: list[bool] = []
    clamp = _triton.clamp_

    def recording(*args: object) -> bool:
        taken.append(clamp(*args))  # type: ignore[arg-type]
        return taken[-1]

    monkeypatch.setattr(_triton, "clamp_", recording)
    return taken


def test_kernels_clamp_takes_the_kernel_for_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = spy(monkeypatch)
    params = [nn.Parameter(filled(torch.float32, n, n)) for n in (30, 7, 0)]
    expected = [p.detach().clone().clamp_(-0.5, 0.5) for p in params]
    ptrs = [p.data_ptr() for p in params]
    versions = [p._version for p in params]
    _kernels.clamp_(params, -0.5, 0.5, foreach=True)  # no torch.no_grad needed
    assert taken == [True]
    for p, want in zip(params, expected, strict=True):
        assert torch.equal(bits(p.detach()), bits(want))
    assert [p.data_ptr() for p in params] == ptrs
    assert all(p._version > v for p, v in zip(params, versions, strict=True))
    with torch.no_grad():
        _kernels.clamp_(params, -0.5, 0.5, foreach=False)  # the loop: no kernel
    assert taken == [True]


def test_hard_project_with_foreach_runs_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = spy(monkeypatch)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    tc.constrain_all(model, -0.05, 0.05)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10)
    raw = list(model.parameters())
    lo, hi = box_bounds(raw[0], -0.05, 0.05)  # rounded to float32, inward
    expected = [p.detach().clone().clamp_(lo, hi) for p in raw]
    tc.hard_project(model, foreach=True)
    assert taken == [True]  # one group: one launch
    for p, want in zip(raw, expected, strict=True):
        assert torch.equal(p.detach(), want)


def test_autograd_refuses_a_saved_tensor_the_kernel_changed() -> None:
    w = nn.Parameter(torch.tensor([2.0, -3.0]))
    out = (w * w).sum()  # saves w
    assert _triton.clamp_([w], -1.0, 1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


@pytest.mark.parametrize(
    "case",
    [
        "not contiguous",
        "mixed dtypes",
        "a subclass",
        "integers",
        "lo > hi",
        "NaN bound",
        "no bound",
    ],
)
def test_where_it_does_not_apply_nothing_is_touched(case: str) -> None:
    class Sub(Tensor):
        pass

    a, b = torch.randn(4, 6) * 3, torch.randn(5) * 3
    lo, hi = -1.0, 1.0
    if case == "not contiguous":
        a = a.t()
    elif case == "mixed dtypes":
        b = b.double()
    elif case == "a subclass":
        b = b.as_subclass(Sub)
    elif case == "integers":
        a, b = a.int(), b.int()
    elif case == "lo > hi":
        lo, hi = 1.0, -1.0
    elif case == "NaN bound":
        lo = math.nan
    elif case == "no bound":
        lo = hi = None
    before = [a.clone(), b.clone()]
    assert not _triton.clamp_([a, b], lo, hi)
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])


def test_a_failing_launch_warns_once_and_hands_over_to_pytorch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Broken:
        def __getitem__(self, grid: object) -> Callable[..., None]:
            def launch(*args: object, **kwargs: object) -> None:
                raise RuntimeError("no compiler here")

            return launch

    monkeypatch.setattr(_triton, "multi_tensor_clamp", Broken())
    monkeypatch.setattr(_triton, "_failed", False)
    params = [nn.Parameter(torch.tensor([-2.0, 0.5, 2.0]))]
    versions = params[0]._version
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        assert not _triton.clamp_(params, -1.0, 1.0)
    assert params[0]._version == versions
    assert not _triton._usable(torch.device("cpu"))
    _kernels.clamp_(params, -1.0, 1.0, foreach=True)  # the foreach pair, without a warning
    assert params[0].tolist() == [-1.0, 0.5, 1.0]
