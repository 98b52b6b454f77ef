"""Per-call costs on this machine's CPU side, to read the benchmark's absolute times.

    PYTHONPATH=. python3 .ci/gpu_probe.py

Prints medians of: a pure-Python loop, one tiny CUDA kernel launch (``add_`` on one
element), reading a constrained weight (plain and right after ``hard_project``),
and ``hard_project`` of one small layer. CUDA times include the launch, not the kernel.
Without a GPU it runs on the CPU, for comparison.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import torch_constraints as tc


def median_us(fn: Callable[[], object], number: int = 2000, repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        begin = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - begin) / number)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return statistics.median(times) * 1e6


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__}, device {device}")
    one = torch.zeros(1, device=device)
    plain = tc.constrain(nn.Linear(64, 64).to(device), "weight", -0.05, 0.05)
    recorded = tc.constrain(nn.Linear(64, 64).to(device), "weight", -0.05, 0.05, parametrize=False)
    rows = {
        "python: sum(range(100))": lambda: sum(range(100)),
        f"{device}: one add_ on one element": lambda: one.add_(1),
        "constrained weight, clamp": lambda: plain.weight,
        "hard_project, one layer": lambda: tc.hard_project(plain),
        "hard_project, parametrize=False": lambda: tc.hard_project(recorded),
    }
    for name, fn in rows.items():
        print(f"{name:<30}{median_us(fn):8.2f} us")


if __name__ == "__main__":
    main()
