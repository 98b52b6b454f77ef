"""Compile-time benchmark: ``python -m torch_constraints.bench_compile``.

Measures how long ``torch.compile`` takes to produce the first training step
(forward and backward) of a deep MLP, with every weight and bias constrained to a
box and without constraints, in two ways of compiling:

* ``whole``: the model at once, ``fullgraph=True`` (one graph);
* ``regional``: each block on its own (``torch.compile(block)``), the way large
  models are often compiled; a recompilation per block would show here.

Every repeat starts from ``torch._dynamo.reset()`` with the compile caches off, and
the candidates run round-robin, so the medians and their ratio hold on a noisy
machine; the absolute times hold only for the machine they were measured on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from . import constrain_all

__all__ = ["main", "measure", "mlp"]

MODES = ("whole", "regional")
VARIANTS = ("unconstrained", "constrained")


def mlp(layers: int, width: int, *, constrained: bool) -> nn.Sequential:
    """Return ``layers`` blocks of ``Linear(width, width)`` + GELU, optionally all boxed."""
    torch.manual_seed(0)
    model = nn.Sequential(
        *[nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(layers)]
    )
    if constrained:
        constrain_all(model, -0.5, 0.5)
    return model


def measure(
    layers: int, width: int, *, constrained: bool, mode: str, backend: str
) -> dict[str, float]:
    """Compile and run one training step; return the seconds it took and the graphs made."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = mlp(layers, width, constrained=constrained)
    x = torch.randn(8, width)
    start = time.perf_counter()
    if mode == "whole":
        compiled = torch.compile(model, fullgraph=True, backend=backend)
        out = compiled(x)
    else:
        out = x
        for block in model:
            out = torch.compile(block, backend=backend)(out)
    out.sum().backward()
    seconds = time.perf_counter() - start
    graphs = float(counters["stats"]["unique_graphs"])
    return {"seconds": seconds, "graphs": graphs}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a table (or JSON) and return the results."""
    parser = argparse.ArgumentParser(prog="python -m torch_constraints.bench_compile")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    import torch._inductor.config

    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    # Measure compiling, not hits in the on-disk caches of earlier runs.
    with torch._inductor.config.patch(force_disable_caches=True):
        for _ in range(args.repeats):
            for mode in args.modes:
                for variant in VARIANTS:
                    result = measure(
                        args.layers,
                        args.width,
                        constrained=variant == "constrained",
                        mode=mode,
                        backend=args.backend,
                    )
                    samples.setdefault((mode, variant), []).append(result)

    rows = []
    for mode in args.modes:
        base = statistics.median(s["seconds"] for s in samples[(mode, "unconstrained")])
        for variant in VARIANTS:
            runs = samples[(mode, variant)]
            median = statistics.median(s["seconds"] for s in runs)
            rows.append(
                {
                    "mode": mode,
                    "variant": variant,
                    "median_s": median,
                    "ratio": median / base,
                    "graphs": runs[-1]["graphs"],
                }
            )
    results = {
        "layers": args.layers,
        "width": args.width,
        "repeats": args.repeats,
        "backend": args.backend,
        "torch": torch.__version__,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(
            f"time to the first compiled training step, {args.layers} x Linear({args.width}) "
            f"+ GELU, backend={args.backend}, median of {args.repeats}, torch {torch.__version__}"
        )
        print(f"{'mode':<10}{'variant':<15}{'median s':>10}{'ratio':>8}{'graphs':>8}")
        for row in rows:
            print(
                f"{row['mode']:<10}{row['variant']:<15}{row['median_s']:>10.2f}"
                f"{row['ratio']:>8.2f}{row['graphs']:>8.0f}"
            )
    return results


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
