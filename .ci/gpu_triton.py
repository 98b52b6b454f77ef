"""GPU check and timing of the multi-tensor Triton clamp (``torch_constraints._triton``).

    PYTHONPATH=. python3 .ci/gpu_triton.py [--out DIR] [--rounds N]
    PYTHONPATH=. python3 .ci/gpu_triton.py --dry-run   # no GPU: the interpreter, tiny sets

(.ci/gpu_session.sh runs it.) Needs torch and Triton, not pytest.

1. Checks, on the GPU: the kernel against ``torch.clamp`` on the same device, bit for
   bit (a NaN stays NaN with its bits), for every float dtype, many tensors of mixed
   sizes holding special values and random bits, two- and one-sided bounds and zero
   bounds of both signs. Prints the ties of zeros learnt from ``torch.clamp`` there.
2. Timing, round-robin medians with the L2 cache flushed, for 5000 x (64, 64) and the
   GPT-2-medium shapes, float32 and bfloat16: a copy of the same bytes (ceiling), one
   ``clamp_`` over a flat tensor (floor), the foreach pair on detached tensors (as in
   ``torch_constraints.bench``), ``_kernels.clamp_`` (the hook: validation and a fresh
   table each call) and ``Plan.run`` (the launch alone, the plan prepared once); then a
   few block/chunk/warp settings on GPT-2-medium, and the host time of ``prepare``.

Targets (marked ok/MISS, not failures): the hook 4x faster than the foreach pair on
5000 x (64, 64); 85% of the copy's bandwidth on GPT-2-medium. Writes ``triton.json``
to ``--out``. Exits 1 on a failed check, 2 without CUDA or Triton.
"""

from __future__ import annotations

import os
import sys

DRY_RUN = "--dry-run" in sys.argv
os.environ["TORCH_CONSTRAINTS_TRITON"] = "1"  # the kernel is an opt-in until measured here
if DRY_RUN:  # before anything imports Triton
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from torch_constraints import _kernels, _triton, bench  # noqa: E402

LOW, HIGH = bench.LOW, bench.HIGH
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
#: (block bytes, blocks per chunk, warps) tried on GPT-2-medium; the first is the default.
SETTINGS = [
    (_triton.BLOCK_BYTES, _triton.BLOCKS_PER_CHUNK, _triton.NUM_WARPS),
    (2048, 32, 4),
    (8192, 8, 4),
    (8192, 16, 8),
    (16384, 8, 8),
    (4096, 64, 4),
]


def bits(t: Tensor) -> Tensor:
    return t.view(_triton._FORMATS[t.dtype].int_type)


def filled(dtype: torch.dtype, size: int, seed: int, device: str) -> Tensor:
    """Zeros, infinities, NaNs, extremes and subnormals of both signs, then random bits."""
    form = _triton._FORMATS[dtype]
    sign = -(1 << (form.width - 1))
    one = int(bits(torch.tensor(1.0, dtype=dtype)).item())
    tiny = int(bits(torch.tensor(torch.finfo(dtype).tiny, dtype=dtype)).item())
    positive = [0, 1, tiny - 1, tiny, form.inf - 1, form.inf, form.inf + 1, form.magnitude]
    positive += [one - 1, one, one + 1]
    specials = torch.tensor(positive + [b + sign for b in positive], dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    low, high = sign, -sign - 1
    random = torch.randint(low, high, (size,), dtype=torch.int64, generator=generator)
    values = torch.cat([specials.roll(seed), random])[:size]
    return values.to(form.int_type).view(dtype).to(device)


def check(device: str) -> list[str]:
    failures = []
    sizes = [0, 1, 7, 1000, 1023, 1024, 1025, 4096, 70001, 3, 0, 65536 * 3 + 5]
    if DRY_RUN:
        sizes = [0, 1, 7, 300, 3]
    bounds = [(-1.5, 2.0), (-1.0, None), (None, 0.25), (0.0, None), (None, -0.0)]
    bounds += [(-0.0, 0.0), (0.0, 0.0), (-0.0, -0.0), (1.0, 1.0)]
    for dtype in DTYPES:
        ties = _triton._ties(torch.device(device), dtype)
        print(f"ties of zeros learnt from torch.clamp, {dtype}: {ties}")
        for lo, hi in bounds:
            tensors = [filled(dtype, n, seed, device) for seed, n in enumerate(sizes)]
            before = [t.clone() for t in tensors]
            expected = [t.clone().clamp_(lo, hi) for t in tensors]
            if not _triton.clamp_(tensors, lo, hi):
                failures.append(f"{dtype} [{lo}, {hi}]: the kernel did not apply")
                continue
            for i, (got, old, want) in enumerate(zip(tensors, before, expected, strict=True)):
                nan = want.isnan()
                same = (
                    torch.equal(got.isnan(), nan)
                    and torch.equal(bits(got)[~nan], bits(want)[~nan])
                    and torch.equal(bits(got)[nan], bits(old)[nan])
                )
                if not same:
                    wrong = int((bits(got) != bits(want)).sum())
                    failures.append(f"{dtype} [{lo}, {hi}] tensor {i}: {wrong} element(s) differ")
    return failures


def median_ms(fn: Callable[[], object], device: str, rounds: int) -> float:
    return 1e3 * bench._interleaved_medians({"": fn}, device, rounds)[""]


def timing(device: str, rounds: int) -> list[dict[str, object]]:
    sets = {
        "small-5000": bench.PARAMETER_SETS["small-5000"](),
        "gpt2-medium": bench.PARAMETER_SETS["gpt2-medium"](),
    }
    if DRY_RUN:
        sets = {"small-50": [(8, 8)] * 50, "mixed": [(100,), (33, 7), (5,), (0,)]}
    results: list[dict[str, object]] = []
    flush = bench._cache_flusher(device)
    for set_name, shapes in sets.items():
        for dtype in (torch.float32, torch.bfloat16):
            params = [nn.Parameter(torch.randn(s, device=device, dtype=dtype) / 50) for s in shapes]
            tensors = [p.detach() for p in params]
            nbytes = sum(t.numel() for t in tensors) * tensors[0].element_size()
            flat = torch.cat([t.reshape(-1) for t in tensors])
            target = torch.empty_like(flat)
            plan = _triton.prepare(params)
            assert plan is not None, "the kernel does not apply"

            def foreach_pair(ts: list[Tensor] = tensors) -> None:
                torch._foreach_clamp_min_(ts, LOW)
                torch._foreach_clamp_max_(ts, HIGH)

            candidates: dict[str, Callable[[], object]] = {
                "copy (ceiling)": lambda t=target, f=flat: t.copy_(f),
                "flat clamp_ (floor)": lambda f=flat: f.clamp_(LOW, HIGH),
                "foreach pair": foreach_pair,
                "hook: _kernels.clamp_": lambda ps=params: _kernels.clamp_(
                    ps, LOW, HIGH, foreach=True
                ),
                "Plan.run (prepared)": lambda p=plan: p.run(LOW, HIGH),
            }
            if (set_name == "gpt2-medium" and dtype == torch.float32) or DRY_RUN:
                for block_bytes, per_chunk, warps in SETTINGS[1:]:
                    block = block_bytes // tensors[0].element_size()
                    other = _triton.prepare(
                        params, block=block, chunk=block * per_chunk, num_warps=warps
                    )
                    assert other is not None
                    name = f"Plan.run {block_bytes} B x {per_chunk}, {warps} warps"
                    candidates[name] = lambda p=other: p.run(LOW, HIGH)
            with torch.no_grad():
                medians = bench._interleaved_medians(candidates, device, rounds, flush=flush)
            begin = time.perf_counter()
            for _ in range(10):
                _triton.prepare(params)
            if device == "cuda":
                torch.cuda.synchronize()
            prepare_ms = (time.perf_counter() - begin) / 10 * 1e3
            copy = medians["copy (ceiling)"]
            pair = medians["foreach pair"]
            print(f"\n{set_name}, {dtype}: {len(tensors)} tensors, {nbytes / 1e6:.1f} MB")
            print(f"  host time of prepare (checks and table): {prepare_ms:.3f} ms")
            print(f"  {'':44}{'ms':>9}{'GB/s':>9}{'of copy':>9}{'vs pair':>9}")
            rows = []
            for name, seconds in medians.items():
                gbps = 2 * nbytes / seconds / 1e9
                row = {"name": name, "ms": seconds * 1e3, "gbps": gbps}
                row |= {"of_copy": copy / seconds, "speedup_vs_foreach_pair": pair / seconds}
                rows.append(row)
                print(
                    f"  {name:44}{seconds * 1e3:9.3f}{gbps:9.1f}"
                    f"{copy / seconds:9.2f}{pair / seconds:9.2f}"
                )
            hook = medians["hook: _kernels.clamp_"]
            targets = []
            if set_name == "small-5000":
                targets.append(("hook 4x faster than the foreach pair", pair / hook, 4.0))
                targets.append(
                    (
                        "Plan.run 4x faster than the foreach pair",
                        pair / medians["Plan.run (prepared)"],
                        4.0,
                    )
                )
            if set_name == "gpt2-medium":
                targets.append(("hook at 85% of the copy's bandwidth", copy / hook, 0.85))
            for label, value, limit in targets:
                print(f"  {'ok  ' if value >= limit else 'MISS'} {label}: {value:.2f} (>= {limit})")
            results.append(
                {
                    "set": set_name,
                    "dtype": str(dtype),
                    "tensors": len(tensors),
                    "bytes": nbytes,
                    "prepare_host_ms": prepare_ms,
                    "rows": rows,
                    "targets": [{"label": lb, "value": v, "limit": li} for lb, v, li in targets],
                }
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--dry-run", action="store_true", help="no GPU: the interpreter, tiny sets")
    args = parser.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    if not _triton._usable(torch.device(device)):
        print(
            f"the Triton kernel is not usable on {device} (is Triton installed?)", file=sys.stderr
        )
        return 2
    import triton

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter)"
    print(f"torch {torch.__version__}, triton {triton.__version__}, {name}")
    start = time.perf_counter()
    failures = check(device)
    print(f"checks: {len(failures)} failure(s) in {time.perf_counter() - start:.1f} s")
    for failure in failures:
        print("FAIL", failure)
    results = timing(device, 3 if args.dry_run else args.rounds)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "triton.json"), "w") as f:
        json.dump({"failures": failures, "timing": results}, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
