"""The private PyTorch calls in ``_kernels``: still there, and each path equal to the plain one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torch_constraints import _kernels


def test_the_private_pytorch_apis_we_use_still_exist() -> None:
    # A PyTorch release that moves one of them must fail here, not silently slow down.
    from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices

    assert "cuda" in _get_foreach_kernels_supported_devices()
    assert hasattr(torch, "_foreach_clamp_min_") and hasattr(torch, "_foreach_clamp_max_")
    assert hasattr(torch, "_foreach_copy_")


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


def test_the_triton_module_imports_and_stands_aside_without_triton(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util
    import sys

    from torch_constraints import _triton

    monkeypatch.setitem(sys.modules, "triton", None)  # import triton now raises ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("_triton_without_triton", _triton.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    assert not module.HAVE_TRITON
    assert not module._usable(torch.device("cuda")) and not module._usable(torch.device("cpu"))
    x = torch.tensor([-2.0, 2.0])
    assert not module.clamp_([x], -1.0, 1.0)
    assert x.tolist() == [-2.0, 2.0]
