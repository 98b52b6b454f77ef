"""One short script for a machine with a CUDA GPU: check the GPU paths, then benchmark.

Run from the repository root, with or without the package installed:

    PYTHONPATH=. python3 .ci/gpu_check.py [--out DIR] [--quick]

(.ci/gpu_session.sh runs it, then the test suite, in one device session.)

It needs only torch (no pytest: GPU machines may lack it). Checks, each against
the plain per-tensor reference on the same device:

* hard_project on CUDA (foreach and loop paths, and a PackedProjection), float32 and bfloat16,
  Box and MaxNorm, a model with tensors on the CPU and the GPU;
* the forward pass stays feasible across training steps with project_after_step;

then runs ``python -m torch_constraints.bench --device cuda`` for float32 and
bfloat16 and writes the JSON results to ``--out``. Exits non-zero on a failed check.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch import nn

import torch_constraints as tc
from torch_constraints import bench
from torch_constraints._tree import constrained


def reference_after_projection(model: nn.Module) -> list[torch.Tensor]:
    expected = []
    for entry in constrained(model):
        value = entry.raw.detach().clone()
        for constraint in entry.constraints:
            constraint.project_(value)
        expected.append(value)
    return expected


def raws(model: nn.Module) -> list[torch.Tensor]:
    return [entry.raw.detach().clone() for entry in constrained(model)]


def scramble(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for entry in constrained(model):
            original = entry.raw
            noise = torch.randn(original.shape, generator=generator) * 3
            original.copy_(noise.to(original.device, original.dtype))


def model(dtype: torch.dtype, devices: tuple[str, ...]) -> nn.Module:
    torch.manual_seed(0)
    layers = nn.ModuleList()
    for i in range(12):
        layer = nn.Linear(64, 64 if i % 3 else 32).to(device=devices[i % len(devices)], dtype=dtype)
        layers.append(layer)
    tc.constrain_all(layers[:8], -0.05, 0.05)
    tc.constrain_all(layers[8:], tc.MaxNorm(0.5), include={"weight"})
    return layers


def check_paths() -> list[str]:
    failures = []
    cases = [
        (torch.float32, ("cuda",)),
        (torch.bfloat16, ("cuda",)),
        (torch.float32, ("cuda", "cpu")),
    ]
    paths = ["default", "foreach", "loop", "packed"]
    for dtype, devices in cases:
        for path in paths:
            m = model(dtype, devices)
            packed = tc.PackedProjection(m) if path == "packed" else None
            for seed in range(3):
                scramble(m, seed)
                expected = reference_after_projection(m)
                if packed is not None:
                    packed()
                else:
                    tc.hard_project(
                        m, foreach={"default": None, "foreach": True, "loop": False}[path]
                    )
                got = raws(m)
                if not all(torch.equal(a, b) for a, b in zip(got, expected, strict=True)):
                    failures.append(f"hard_project {path} {dtype} {devices} round {seed}")
    return failures


def check_training() -> list[str]:
    failures = []
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 1)).cuda()
    tc.constrain_all(net, -0.05, 0.05)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1, fused=True)
    tc.project_after_step(optimizer, net)
    x = torch.randn(128, 32, device="cuda")
    for step in range(10):
        optimizer.zero_grad()
        net(x).square().mean().backward()
        optimizer.step()
        for layer in (net[0], net[2]):
            if (
                layer.weight.abs().max() > 0.05
                or layer.parametrizations.weight.original.abs().max() > 0.05
            ):
                failures.append(f"training step {step}: value outside [-0.05, 0.05]")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--quick", action="store_true", help="fewer benchmark rounds")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    start = time.perf_counter()
    failures = check_paths() + check_training()
    print(f"checks: {len(failures)} failure(s) in {time.perf_counter() - start:.1f} s")
    for failure in failures:
        print("FAIL", failure)
    rounds = ["--rounds", "20"] if args.quick else []
    for dtype in ("float32", "bfloat16"):
        sets = ["--sets", "gpt2-medium", "small-5000"]
        out = os.path.join(args.out, f"bench-cuda-{dtype}.json")
        skip = ["--skip-training"] if dtype == "bfloat16" else []
        bench.main(["--device", "cuda", "--dtype", dtype, *sets, *rounds, *skip, "--json", out])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
