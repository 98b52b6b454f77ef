"""The multi-tensor Triton clamp (``torch_constraints._triton``), without a GPU.

* tests/triton_interpreted.py runs the kernel under Triton's interpreter on CPU
  tensors, bit for bit against ``torch.clamp``: in a subprocess, because
  ``TRITON_INTERPRET=1`` must be set before Triton is imported;
* the kernel compiles for NVIDIA GPUs here (Triton ships ``ptxas``), with 16-byte
  vector loads and stores where the addresses are aligned and no floating-point
  instruction;
* on the CPU, without the interpreter, nothing takes the kernel.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from torch_constraints import _kernels, _triton

ROOT = Path(__file__).resolve().parent.parent


def test_the_interpreter_runs_the_kernel_bit_for_bit(tmp_path: Path) -> None:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    env[_triton.ENV] = "1"  # the opt-in
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [*command, str(ROOT / "tests" / "triton_interpreted.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def compile_for_nvidia(dtype: torch.dtype, *, aligned: bool, capability: int) -> str:
    """The PTX of the kernel for ``dtype``, compiled here for an NVIDIA GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if "constexprs" not in inspect.signature(ASTSource).parameters:
        pytest.skip("an older Triton: ASTSource takes the constants otherwise")
    form = _triton._FORMATS[dtype]
    constants = {
        "ELEM": _triton._ELEM[form.int_type],
        "M": form.magnitude,
        "INF": form.inf,
        "HAS_LO": True,
        "HAS_HI": True,
        "LO_TIE": True,
        "HI_TIE": True,
        "BLOCK": _triton.BLOCK_BYTES // (form.width // 8),
        "ALIGNED": aligned,
    }
    signature = {"rows": "*i64", "lo": "i32", "hi": "i32", "lo_tie": "i32", "hi_tie": "i32"}
    signature |= dict.fromkeys(constants, "constexpr")
    source = ASTSource(fn=_triton.multi_tensor_clamp, signature=signature, constexprs=constants)
    options = {"num_warps": _triton.NUM_WARPS, "enable_fp_fusion": False}
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
    return str(compiled.asm["ptx"])


@pytest.mark.skipif(_triton.INTERPRETED, reason="TRITON_INTERPRET=1: no compiler")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_the_kernel_compiles_for_nvidia_gpus(
    dtype: torch.dtype, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    for capability in (80, 90):
        aligned = compile_for_nvidia(dtype, aligned=True, capability=capability)
        vector = "v2.b64" if dtype == torch.float64 else "v4.b32"  # 16 bytes
        assert f"ld.global.{vector}" in aligned and f"st.global.{vector}" in aligned
        assert not re.search(r"\.(f16|bf16|f32|f64)\b", aligned), "a floating-point instruction"
    unaligned = compile_for_nvidia(dtype, aligned=False, capability=90)
    assert "ld.global.v" not in unaligned


@pytest.mark.skipif(
    not torch.cuda.is_available() or _triton.INTERPRETED, reason="needs a CUDA device"
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_the_kernel_on_cuda_is_torch_clamp_bit_for_bit(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_triton.ENV, "1")
    int_type = _triton._FORMATS[dtype].int_type
    width = 8 * torch.empty((), dtype=int_type).element_size()
    generator = torch.Generator().manual_seed(0)
    sizes = [0, 1, 5, 1023, 1024, 1025, 70001]
    low, high = -(1 << (width - 1)), (1 << (width - 1)) - 1
    for lo, hi in [(-1.0, 2.0), (0.0, None), (None, -0.0), (-0.0, 0.0), (0.0, 0.0)]:
        tensors = [
            torch.randint(low, high, (n,), generator=generator).to(int_type).view(dtype).cuda()
            for n in sizes
        ]
        for t in tensors[1:]:
            t[:4] = torch.tensor([0.0, -0.0, float("inf"), float("nan")], dtype=dtype)[: t.numel()]
        before = [t.clone() for t in tensors]
        expected = [t.clone().clamp_(lo, hi) for t in tensors]
        assert _triton.clamp_(tensors, lo, hi)
        for got, old, want in zip(tensors, before, expected, strict=True):
            nan = want.isnan()
            assert torch.equal(got.isnan(), nan)
            assert torch.equal(got.view(int_type)[~nan], want.view(int_type)[~nan])
            assert torch.equal(got.view(int_type)[nan], old.view(int_type)[nan])


def test_cpu_tensors_never_take_the_kernel_without_the_interpreter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.tensor([-2.0, 2.0])
    assert not _kernels._triton_clamp_([x], -1.0, 1.0)
    if not _triton.INTERPRETED:
        assert _triton.prepare([x]) is None
    assert x.tolist() == [-2.0, 2.0]


@pytest.mark.parametrize("setting", [None, "0"])
def test_the_kernel_is_off_unless_opted_in(
    monkeypatch: pytest.MonkeyPatch, setting: str | None
) -> None:
    if setting is None:
        monkeypatch.delenv(_triton.ENV, raising=False)
    else:
        monkeypatch.setenv(_triton.ENV, setting)
    assert not _triton._usable(torch.device("cuda"))
    assert not _triton._usable(torch.device("cpu"))
