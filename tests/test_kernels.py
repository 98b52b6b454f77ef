"""The multi-tensor kernels: each path equal to the plain one, Parameters kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torch_constraints import _kernels


def test_foreach_is_for_devices_with_fused_kernels_unless_asked() -> None:
    assert not _kernels.foreach_supported(torch.device("cpu"), None)
    assert _kernels.foreach_supported(torch.device("cuda"), None)
    assert _kernels.foreach_supported(torch.device("cpu"), True)
    assert not _kernels.foreach_supported(torch.device("cuda"), False)


@pytest.mark.parametrize("foreach", [True, False])
def test_clamp_paths_agree_and_keep_parameters(foreach: bool) -> None:
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(shape) * 3) for shape in [(4, 5), (7,), (2, 3, 2)]]
    expected = [p.detach().clamp(-1.0, 0.5) for p in params]
    ptrs = [p.data_ptr() for p in params]
    with torch.no_grad():
        _kernels.clamp_(params, -1.0, 0.5, foreach=foreach)
    assert all(torch.equal(p.detach(), e) for p, e in zip(params, expected, strict=True))
    assert [p.data_ptr() for p in params] == ptrs


def test_copy_writes_into_the_destinations() -> None:
    params = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, 2))]
    sources = [torch.arange(3.0), torch.ones(2, 2)]
    ptrs = [p.data_ptr() for p in params]
    with torch.no_grad():
        _kernels.copy_(params, sources)
    assert torch.equal(params[0].detach(), sources[0]) and torch.equal(
        params[1].detach(), sources[1]
    )
    assert [p.data_ptr() for p in params] == ptrs


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().view(-1).view(torch.uint8)


def _mixed(dtype: torch.dtype) -> list[torch.Tensor]:
    """Tensors on both sides of the CPU size split, some of them not contiguous."""
    generator = torch.Generator().manual_seed(0)
    size = torch.empty((), dtype=dtype).element_size()
    small = min(_kernels.CPU_SMALL_NUMEL, _kernels.CPU_SMALL_BYTES // size)
    numels = [0, 1, 7, small - 1, small, small + 1, 3 * small, 5, 64, 2 * small]
    numels += [small // 3] * (3 * _kernels.CPU_CHUNK_BYTES // size // (small // 3))  # 3 chunks
    tensors = [
        (torch.randn(n, generator=generator, dtype=torch.float64) * 3).to(dtype) for n in numels
    ]
    wide = (torch.randn(2 * small, 4, generator=generator) * 3).to(dtype)
    tensors += [wide[:, 1], wide.t(), wide[: small // 8].t()]  # strided views, small and large
    special = torch.tensor([float("nan"), -0.0, 0.0, float("inf"), -float("inf"), 0.5])
    return [*tensors, special.to(dtype)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bounds", [(-1.0, 0.5), (0.0, None), (None, 0.25), (0.0, 0.0)])
@pytest.mark.parametrize("parameters", [True, False])
def test_the_cpu_default_equals_a_clamp_per_tensor(
    dtype: torch.dtype, bounds: tuple[float | None, float | None], parameters: bool
) -> None:
    lo, hi = bounds
    tensors = _mixed(dtype)
    if parameters:
        tensors = [nn.Parameter(t) if t.is_contiguous() else t for t in tensors]
    expected = [t.detach().clone().clamp_(lo, hi) for t in tensors]
    ptrs = [t.data_ptr() for t in tensors]
    with torch.no_grad():
        _kernels.clamp_(tensors, lo, hi, foreach=None)
    for got, want in zip(tensors, expected, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(bits(got), bits(want))  # -0.0 and NaN payloads too
    assert [t.data_ptr() for t in tensors] == ptrs


def test_the_cpu_default_leaves_tensor_subclasses_to_their_own_clamp() -> None:
    calls: list[str] = []

    class Logged(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            calls.append(getattr(func, "__name__", str(func)))
            return super().__torch_function__(func, types, args, kwargs or {})

    logged = torch.full((3,), 5.0).as_subclass(Logged)
    plain = torch.full((3,), 5.0)
    with torch.no_grad():
        _kernels.clamp_([plain, logged], -1.0, 1.0, foreach=None)
    assert "clamp_" in calls and not any(name.startswith("_foreach") for name in calls)
    assert torch.equal(plain, torch.ones(3)) and torch.equal(torch.Tensor(logged), torch.ones(3))
