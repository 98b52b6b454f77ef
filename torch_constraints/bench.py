"""Benchmark: ``python -m torch_constraints.bench``.

Two parts, each run in one process with every candidate measured side by side
(round-robin, medians), so that ratios hold on a noisy shared machine:

1. **Post-step projection** of every tensor of a parameter set into
   ``[-0.01, 0.01]``: the blog recipe (``model.apply``, an allocating clamp and a
   ``.data`` reassignment), the WGAN authors' loop (``p.data.clamp_`` over
   ``model.parameters()``, read on every call), a ``clamp_`` loop and PyTorch's
   foreach pair (``_foreach_clamp_min_`` + ``_foreach_clamp_max_``) over a list of
   the tensors made in advance, one ``clamp_`` over a
   single flat tensor of the same size (the floor), a copy of the same bytes (the
   bandwidth ceiling), :func:`~torch_constraints.hard_project` (the default: no
   storage changes, the model read afresh on every call; on parametrized tensors,
   and on the same tensors constrained with ``parametrize=False``, whose module
   tree is the plain model's) and the explicit opt-in
   :class:`~torch_constraints.PackedProjection`.
2. **Training steps** (forward + backward + SGD) of an MLP with every weight
   constrained, against the same MLP unconstrained: ``parametrize=False`` with
   :func:`~torch_constraints.project_after_step` (the constraint after each step
   only), the parametrized forward constraint with and without
   ``project_after_step``, and the straight-through one; then **reads** of a
   constrained weight against stock ``register_parametrization`` with a one-line
   clamp module.
3. **Matrix constraints** and 4. **norm sets** against PyTorch's own (SVD loops,
   ``renorm_``, sort-based projections): :mod:`torch_constraints.bench_sets`.

Each row is checked against its target and marked ``ok`` or ``MISS``.
Absolute times hold only for the machine they were measured on; on a CPU shared
with other work, compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import (
    MaxNorm,
    PackedProjection,
    _compat,
    constrain,
    constrain_all,
    hard_project,
    project_after_step,
)

__all__ = ["PARAMETER_SETS", "main", "parameter_set"]

LOW, HIGH = -0.01, 0.01
NORM = 0.5


# ----------------------------------------------------------------------------- parameter sets
def _gpt2_shapes(
    width: int, layers: int, vocab: int = 50257, context: int = 1024
) -> list[tuple[int, ...]]:
    block = [
        (width,),
        (width,),  # ln_1
        (width, 3 * width),
        (3 * width,),  # attention qkv
        (width, width),
        (width,),  # attention projection
        (width,),
        (width,),  # ln_2
        (width, 4 * width),
        (4 * width,),  # mlp in
        (4 * width, width),
        (width,),  # mlp out
    ]
    return [(vocab, width), (context, width), *block * layers, (width,), (width,)]


def _resnet50_shapes() -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    channels = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            shapes += [(width, channels, 1, 1), (width,), (width,)]
            shapes += [(width, width, 3, 3), (width,), (width,)]
            shapes += [(4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if block == 0:
                shapes += [(4 * width, channels, 1, 1), (4 * width,), (4 * width,)]
            channels = 4 * width
    return [*shapes, (1000, 2048), (1000,)]


PARAMETER_SETS: dict[str, Callable[[], list[tuple[int, ...]]]] = {
    "gpt2-small": lambda: _gpt2_shapes(768, 12),
    "gpt2-medium": lambda: _gpt2_shapes(1024, 24),
    "resnet50": _resnet50_shapes,
    "small-2000": lambda: [(64, 64)] * 2000,
    "small-5000": lambda: [(64, 64)] * 5000,
}
DEFAULT_SETS = {
    "cpu": ["gpt2-small", "resnet50", "small-2000"],
    "cuda": ["gpt2-medium", "small-5000"],
}


class _Holder(nn.Module):
    def __init__(self, tensor: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(tensor)


def parameter_set(name: str, device: str, dtype: torch.dtype, seed: int = 0) -> nn.ModuleList:
    """Build the named parameter set: one module per tensor, values in ``[-0.02, 0.02]``."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return nn.ModuleList(
        _Holder(
            torch.empty(shape, device=device, dtype=dtype).uniform_(
                -0.02, 0.02, generator=generator
            )
        )
        for shape in PARAMETER_SETS[name]()
    )


# ----------------------------------------------------------------------------- timing
def _timer(device: str) -> Callable[[Callable[[], object]], float]:
    if device.startswith("cuda"):

        def time_cuda(fn: Callable[[], object]) -> float:
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return float(start.elapsed_time(end)) / 1e3

        return time_cuda

    def time_cpu(fn: Callable[[], object]) -> float:
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin

    return time_cpu


def _interleaved_medians(
    candidates: Mapping[str, Callable[[], object]],
    device: str,
    rounds: int,
    warmup: int = 2,
    flush: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Median seconds per candidate, measured round-robin so drift hits all alike.

    ``flush`` runs before every timed call, so that no candidate finds its data in a
    cache that the one before it happened to warm.
    """
    timer = _timer(device)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            if flush is not None:
                flush()
            samples[name].append(timer(fn))
    return {name: statistics.median(times) for name, times in samples.items()}


def _cache_flusher(device: str) -> Callable[[], object]:
    """Write a buffer larger than any last-level cache (CPU L3, GPU L2)."""
    scratch = torch.empty(256 * 2**20 // 4, dtype=torch.float32, device=device)
    return lambda: scratch.fill_(1.0)


# ----------------------------------------------------------------------------- part 1: projection
class _BlogWeightClipper:
    """The widely copied recipe, with its two bugs fixed (apply passes only the module;
    clamp(min, max), not clamp(max, max)): an allocating clamp and a ``.data`` rebind."""

    def __call__(self, module: nn.Module) -> None:
        for param in module.parameters(recurse=False):
            param.data = param.data.clamp(LOW, HIGH)


@dataclass
class Row:
    name: str
    seconds: float
    gbps: float
    of_copy: float
    vs_floor: float


@dataclass
class ProjectionResult:
    parameter_set: str
    tensors: int
    elements: int
    megabytes: float
    rows: list[Row]
    checks: list[str] = field(default_factory=list)


def bench_projection(name: str, device: str, dtype: torch.dtype, rounds: int) -> ProjectionResult:
    plain = parameter_set(name, device, dtype)
    constrained = parameter_set(name, device, dtype)
    constrain_all(constrained, LOW, HIGH)
    recorded = parameter_set(name, device, dtype)
    constrain_all(recorded, LOW, HIGH, parametrize=False)
    normed = parameter_set(name, device, dtype)
    constrain_all(normed, MaxNorm(NORM))
    norm_tensors = [p.detach() for p in parameter_set(name, device, dtype).parameters()]
    max_norm = MaxNorm(NORM)
    tensors = [p.detach() for p in plain.parameters()]
    elements = sum(t.numel() for t in tensors)
    nbytes = elements * tensors[0].element_size()
    flat = torch.cat([t.reshape(-1) for t in tensors])
    copy_target = torch.empty_like(flat)
    clipper = _BlogWeightClipper()

    wgan = parameter_set(name, device, dtype)

    def wgan_loop() -> None:  # as in the WGAN paper's code: the model read on every call
        for p in wgan.parameters():
            p.data.clamp_(LOW, HIGH)

    def loop() -> None:
        for t in tensors:
            t.clamp_(LOW, HIGH)

    def foreach_pair() -> None:
        _compat.foreach_clamp_(tensors, LOW, HIGH)

    def max_norm_loop() -> None:
        for t in norm_tensors:
            max_norm.project_(t)

    packed_set = parameter_set(name, device, dtype)
    constrain_all(packed_set, LOW, HIGH)
    packed = PackedProjection(packed_set)
    with torch.no_grad():
        medians = _interleaved_medians(
            {
                "copy (ceiling)": lambda: copy_target.copy_(flat),
                "flat clamp_ (floor)": lambda: flat.clamp_(LOW, HIGH),
                "blog recipe": lambda: plain.apply(clipper),
                "WGAN loop": wgan_loop,
                "clamp_ loop": loop,
                "foreach pair": foreach_pair,
                "hard_project": lambda: hard_project(constrained),
                "  parametrize=False": lambda: hard_project(recorded),
                "PackedProjection": packed,
                "MaxNorm loop": max_norm_loop,
                "hard_project MaxNorm": lambda: hard_project(normed),
            },
            device,
            rounds,
            flush=_cache_flusher(device),
        )
    copy_gbps = 2 * nbytes / medians["copy (ceiling)"] / 1e9
    floor = medians["flat clamp_ (floor)"]
    rows = [
        Row(n, s, 2 * nbytes / s / 1e9, 2 * nbytes / s / 1e9 / copy_gbps, s / floor)
        for n, s in medians.items()
    ]
    result = ProjectionResult(name, len(tensors), elements, nbytes / 1e6, rows)
    result.checks = _projection_checks(name, device, medians, copy_gbps, nbytes)
    return result


def _projection_checks(
    name: str, device: str, medians: dict[str, float], copy_gbps: float, nbytes: int
) -> list[str]:
    """The targets: the default against the loop that reads the model on every call (the
    WGAN authors'), the packed opt-in against loops over lists made in advance."""
    ours, floor = medians["hard_project"], medians["flat clamp_ (floor)"]
    packed, wgan = medians["PackedProjection"], medians["WGAN loop"]
    best_by_hand = min(medians["clamp_ loop"], medians["foreach pair"])
    checks = [
        _check(
            "parametrize=False vs the WGAN loop", medians["  parametrize=False"] / wgan, "<=", 1
        ),
        _check("hard_project vs the WGAN loop", ours / wgan, "<=", 1.2),
        _check("PackedProjection vs the best hand-written loop", packed / best_by_hand, "<=", 1),
    ]
    if device == "cpu" and name.startswith("small-"):
        checks.append(_check("PackedProjection vs the floor", packed / floor, "<=", 1.5))
    elif device == "cpu" and name.startswith("gpt2"):
        checks.append(_check("hard_project vs the floor", ours / floor, "<=", 1.15))
    elif device != "cpu" and not name.startswith("small-"):
        fraction = 2 * nbytes / ours / 1e9 / copy_gbps
        checks.append(_check("at least 85% of the copy ceiling", fraction, ">=", 0.85))
    return checks


def _check(label: str, value: float, op: str, limit: float) -> str:
    ok = value <= limit if op == "<=" else value >= limit
    return f"{'ok  ' if ok else 'MISS'} {label}: {value:.2f} (target {op} {limit:g})"


# ----------------------------------------------------------------------------- part 2: training
@dataclass
class TrainingResult:
    case: str
    seconds: dict[str, float]
    ratios: dict[str, float]
    checks: list[str] = field(default_factory=list)


TRAINING_CASES = {
    "cpu": [
        ("mlp-4x1024", 1024, 4, 64, torch.float32),
        ("mlp-4x1024", 1024, 4, 1024, torch.float32),
    ],
    "cuda": [
        ("mlp-8x4096", 4096, 8, 256, torch.bfloat16),
        ("mlp-8x1024", 1024, 8, 64, torch.float32),
    ],
}
MODES = [
    "unconstrained",
    "parametrize=False + project_after_step",
    "forward + project_after_step",
    "plain forward",
    "straight-through forward",
]
#: Not a training mode: hard_project alone, timed beside the steps, to show its share.
PROJECTION_ALONE = "(hard_project alone)"
TRAINING_TARGETS = {
    "parametrize=False + project_after_step": 1.05,
    "plain forward": 1.15,
    "straight-through forward": 1.10,
}


def _mlp(width: int, depth: int, device: str, dtype: torch.dtype) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers).to(device=device, dtype=dtype)


def _training_step(
    mode: str,
    width: int,
    depth: int,
    batch: int,
    device: str,
    dtype: torch.dtype,
    compile_mode: str | None = None,
) -> Callable[[], None]:
    model = _mlp(width, depth, device, dtype)
    if mode != "unconstrained":
        constrain_all(
            model,
            -0.05,
            0.05,
            include={"weight"},
            straight_through=mode.startswith("straight"),
            parametrize=not mode.startswith("parametrize=False"),
        )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    if mode.endswith("project_after_step"):
        project_after_step(optimizer, model)
    x = torch.randn(batch, width, device=device, dtype=dtype)
    forward: Callable[..., Any] = model
    if compile_mode is not None:
        forward = torch.compile(model, mode=compile_mode, fullgraph=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward(x).float().square().mean().backward()
        optimizer.step()

    return step


def _projection_alone(
    width: int, depth: int, device: str, dtype: torch.dtype
) -> Callable[[], None]:
    """hard_project of the MLP's weights: the part of a step project_after_step adds."""
    model = _mlp(width, depth, device, dtype)
    constrain_all(model, -0.05, 0.05, include={"weight"}, parametrize=False)
    return lambda: hard_project(model)


def bench_training(
    device: str, rounds: int, compile_mode: str | None = None
) -> list[TrainingResult]:
    """Time the training cases of ``device``; ``compile_mode``: torch.compile each model."""
    results = []
    for name, width, depth, batch, dtype in TRAINING_CASES[
        "cuda" if device.startswith("cuda") else "cpu"
    ]:
        steps = {
            mode: _training_step(mode, width, depth, batch, device, dtype, compile_mode)
            for mode in MODES
        }
        steps[PROJECTION_ALONE] = _projection_alone(width, depth, device, dtype)
        medians = _interleaved_medians(steps, device, rounds, warmup=3)
        base = medians["unconstrained"]
        ratios = {mode: medians[mode] / base for mode in steps}
        case = f"{name} {str(dtype).removeprefix('torch.')} batch {batch}"
        if compile_mode is not None:
            case += f", torch.compile(mode={compile_mode!r})"
        checks = [
            _check(f"{mode} vs unconstrained", ratios[mode], "<=", limit)
            for mode, limit in TRAINING_TARGETS.items()
        ]
        results.append(TrainingResult(case, medians, ratios, checks))
    return results


# ----------------------------------------------------------------------------- part 2b: reads
@dataclass
class ReadResult:
    case: str
    microseconds: dict[str, float]
    checks: list[str] = field(default_factory=list)


class _OneLineClamp(nn.Module):
    """What a user would write for stock ``register_parametrization``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(LOW, HIGH)


def bench_read(device: str, rounds: int, reads: int = 2000) -> ReadResult:
    """Time ``layer.weight`` of a constrained 64x64 ``Linear``, autograd on, warm.

    Against stock :func:`torch.nn.utils.parametrize.register_parametrization` with a
    one-line clamp module. Each sample is ``reads`` reads in a row: a read costs
    microseconds, which a cache flush before it would swamp.
    """
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    stock = nn.Linear(64, 64, device=device)
    parametrize.register_parametrization(stock, "weight", _OneLineClamp())
    ours = constrain(nn.Linear(64, 64, device=device), "weight", LOW, HIGH)

    def reading(layer: nn.Module) -> Callable[[], None]:
        def read() -> None:
            for _ in range(reads):
                layer.weight  # noqa: B018 - the read is what is timed

        return read

    medians = _interleaved_medians(
        {"stock parametrize, one-line clamp": reading(stock), "constrain": reading(ours)},
        device,
        rounds,
    )
    microseconds = {name: seconds / reads * 1e6 for name, seconds in medians.items()}
    ratio = microseconds["constrain"] / microseconds["stock parametrize, one-line clamp"]
    checks = [_check("constrain vs stock parametrize", ratio, "<=", 1.0)]
    return ReadResult("64x64 float32 weight, autograd on", microseconds, checks)


def _format_read(result: ReadResult) -> Iterator[str]:
    yield f"\nreading a constrained weight, {result.case}: clamp into [{LOW}, {HIGH}]"
    yield f"  {'candidate':<40}{'us':>10}"
    for name, value in result.microseconds.items():
        yield f"  {name:<40}{value:>10.2f}"
    for check in result.checks:
        yield f"  {check}"


# ----------------------------------------------------------------------------- report
def _header(device: str, dtype: torch.dtype) -> str:
    if device.startswith("cuda"):
        where = torch.cuda.get_device_name(torch.device(device))
    else:
        where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return (
        f"torch-constraints benchmark | torch {torch.__version__} | "
        f"Python {platform.python_version()} | {platform.system()} {platform.machine()} | "
        f"device {device} ({where}) | dtype {str(dtype).removeprefix('torch.')}"
    )


def _format_projection(result: ProjectionResult) -> Iterator[str]:
    yield (
        f"\n{result.parameter_set}: {result.tensors} tensors, "
        f"{result.elements / 1e6:.1f}M elements, {result.megabytes:.1f} MB; "
        f"clamp into [{LOW}, {HIGH}]; MaxNorm({NORM}) per output unit"
    )
    yield f"  {'method':<22}{'ms':>10}{'GB/s':>9}{'of copy':>9}{'x floor':>9}"
    for row in result.rows:
        yield (
            f"  {row.name:<22}{row.seconds * 1e3:>10.3f}{row.gbps:>9.1f}"
            f"{row.of_copy:>8.0%} {row.vs_floor:>8.2f}"
        )
    ours = next(r for r in result.rows if r.name == "hard_project")
    speedups = ", ".join(
        f"{r.seconds / ours.seconds:.1f}x faster than {r.name}"
        for r in result.rows
        if r.name in ("blog recipe", "WGAN loop", "clamp_ loop", "foreach pair")
    )
    yield f"  hard_project: {speedups}"
    norm = {r.name: r.seconds for r in result.rows}
    ratio = norm["MaxNorm loop"] / norm["hard_project MaxNorm"]
    yield f"  hard_project MaxNorm: {ratio:.1f}x faster than the MaxNorm loop"
    for check in result.checks:
        yield f"  {check}"


def _format_training(result: TrainingResult) -> Iterator[str]:
    yield f"\ntraining step, {result.case}: forward + backward + SGD, every weight in [-0.05, 0.05]"
    yield f"  {'mode':<40}{'ms':>10}{'x unconstrained':>17}"
    for mode in [*MODES, PROJECTION_ALONE]:
        yield f"  {mode:<40}{result.seconds[mode] * 1e3:>10.3f}{result.ratios[mode]:>17.3f}"
    for check in result.checks:
        yield f"  {check}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one table; return 0 (the marks are informative)."""
    parser = argparse.ArgumentParser(
        prog="python -m torch_constraints.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"]
    )
    parser.add_argument(
        "--sets",
        nargs="*",
        choices=sorted(PARAMETER_SETS),
        help="parameter sets (default: per device)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per candidate")
    parser.add_argument(
        "--skip-training",
        action="store_true",
        help="skip the training steps and the weight reads",
    )
    parser.add_argument("--skip-projection", action="store_true", help="only the training part")
    parser.add_argument(
        "--compile",
        metavar="MODE",
        help="torch.compile the models of the training part with this mode "
        "('default', 'reduce-overhead' for CUDA graphs, ...)",
    )
    parser.add_argument(
        "--skip-matrix", action="store_true", help="skip the matrix part (SpectralBall, CPU)"
    )
    parser.add_argument(
        "--skip-norms", action="store_true", help="skip the norm-set part (MaxNorm, L1, simplex)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    device, dtype = args.device, getattr(torch, args.dtype)
    cuda = device.startswith("cuda")
    sets = args.sets or DEFAULT_SETS["cuda" if cuda else "cpu"]
    rounds = args.rounds or (50 if cuda else 15)

    print(_header(device, dtype))
    projection = []
    for name in [] if args.skip_projection else sets:
        projection.append(bench_projection(name, device, dtype, rounds))
        print("\n".join(_format_projection(projection[-1])), flush=True)
    training = (
        []
        if args.skip_training
        else bench_training(device, rounds=max(rounds, 20), compile_mode=args.compile)
    )
    for case in training:
        print("\n".join(_format_training(case)))
    read = [] if args.skip_training else [bench_read(device, rounds=max(rounds, 20))]
    for reads in read:
        print("\n".join(_format_read(reads)), flush=True)
    from . import bench_sets  # parts 3 and 4 (it imports this module)

    matrix = [] if args.skip_matrix or cuda else bench_sets.matrix_main()
    norms = [] if args.skip_norms else bench_sets.norm_main(device, sets, rounds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "header": _header(device, dtype),
                    "projection": [asdict(r) for r in projection],
                    "training": [asdict(r) for r in training],
                    "read": [asdict(r) for r in read],
                    "matrix": [asdict(r) for r in matrix],
                    "norms": [asdict(r) for r in norms],
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
