"""Parts 3 and 4 of ``python -m torch_constraints.bench``: the matrix and norm sets.

Each against what PyTorch offers for the same job, side by side in one process:

3. **Matrix constraints** (CPU): ``SpectralBall`` by ``hard_project`` against a loop
   of ``torch.linalg.svd``, the feasible case (certified without an SVD), and the
   certified rescaling.
4. **Norm sets**: ``hard_project`` with ``MaxNorm`` against a ``renorm_`` loop on
   every parameter set (float64 too), EEGNet's 16x22 weight timed warm, ``L1Ball``
   and ``Simplex`` against plain sort-based code, and the training step of part 2
   with ``MaxNorm``.

The timing, the parameter sets and the report format are :mod:`torch_constraints.bench`'s.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from . import (
    L1Ball,
    MaxNorm,
    Simplex,
    SpectralBall,
    constrain,
    constrain_all,
    hard_project,
    project_after_step,
)
from .bench import (
    NORM,
    TRAINING_CASES,
    _cache_flusher,
    _check,
    _Holder,
    _interleaved_medians,
    _mlp,
    _resnet50_shapes,
    parameter_set,
)

__all__ = ["MATRIX_SETS", "MATRIX_TARGETS", "matrix_main", "norm_main"]


# ----------------------------------------------------------------------------- part 3: matrices
#: Weight shapes for the matrix rows (CPU): the decompositions cost O(m^2 n) each, so
#: one GPT-2-small transformer block's Linear weights (not the 50257x768 embedding,
#: whose SVD alone takes seconds) and ResNet-50's convolutions before the first with
#: 1024 output channels (stages 1 and 2, the first block of stage 3).
MATRIX_SETS: dict[str, Callable[[], list[tuple[int, ...]]]] = {
    "gpt2-small-block": lambda: [(3 * 768, 768), (768, 768), (4 * 768, 768), (768, 4 * 768)],
    "resnet50-early-convs": lambda: [
        s
        for s in itertools.takewhile(lambda s: s[0] < 1024, _resnet50_shapes())
        if len(s) == 4 and s[1] > 3
    ],
}
#: Targets of issue 13, as (row, reference row, largest allowed time ratio).
MATRIX_TARGETS = [
    ("hard_project exact", "svd loop", 1.0),
    ("hard_project feasible", "hard_project exact", 0.2),
    ("hard_project rescale", "hard_project exact", 0.2),
]


@dataclass
class MatrixResult:
    parameter_set: str
    tensors: int
    seconds: dict[str, float]
    checks: list[str] = field(default_factory=list)


def bench_matrix(name: str, rounds: int = 3) -> MatrixResult:
    """Time ``hard_project`` with ``SpectralBall(1.0)`` against a per-tensor SVD loop (CPU).

    Rows: the hand-written loop (``torch.linalg.svd`` of each ``weight.reshape(out, -1)``,
    singular values clipped); ``hard_project`` on the same infeasible weights (the
    certified bound, then the SVD); on feasible weights (the bound only); and with
    ``method="rescale"``. Every candidate restores its infeasible (or feasible) start
    values before each timed call, so each call does the same work.
    """
    shapes = MATRIX_SETS[name]()
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(shape, generator=generator) / math.sqrt(shape[0]) for shape in shapes]
    outside = [w * 3 for w in start]  # sigma_max about 3 * (1 + sqrt(n / m)): outside
    inside = []
    for w in start:
        sigma = float(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2))
        inside.append(w * (0.5 / sigma))

    def holders(values: list[Tensor], constraint: SpectralBall | None) -> nn.ModuleList:
        modules = nn.ModuleList(_Holder(v.clone()) for v in values)
        if constraint is not None:
            constrain_all(modules, constraint)
        return modules

    def raws(modules: nn.ModuleList) -> list[Tensor]:
        return list(modules.parameters())  # the raw tensors, in module order

    loop_tensors = [w.clone() for w in outside]
    exact = holders(outside, SpectralBall(1.0))
    feasible = holders(inside, SpectralBall(1.0))
    rescale = holders(outside, SpectralBall(1.0, method="rescale"))

    def restored(
        targets: list[Tensor], values: list[Tensor], fn: Callable[[], None]
    ) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                for t, v in zip(targets, values, strict=True):
                    t.copy_(v)
            fn()

        return run

    @torch.no_grad()
    def svd_loop() -> None:
        for w in loop_tensors:
            u, s, vh = torch.linalg.svd(w.reshape(w.shape[0], -1), full_matrices=False)
            w.copy_(((u * s.clamp_max(1.0)[None, :]) @ vh).reshape(w.shape))

    candidates = {
        "svd loop": restored(loop_tensors, outside, svd_loop),
        "hard_project exact": restored(raws(exact), outside, lambda: hard_project(exact)),
        "hard_project feasible": restored(raws(feasible), inside, lambda: hard_project(feasible)),
        "hard_project rescale": restored(raws(rescale), outside, lambda: hard_project(rescale)),
    }
    seconds = _interleaved_medians(candidates, "cpu", rounds, warmup=1)
    checks = [
        _check(f"{row} / {ref}", seconds[row] / seconds[ref], "<=", limit)
        for row, ref, limit in MATRIX_TARGETS
    ]
    return MatrixResult(name, len(shapes), seconds, checks)


def _format_matrix(result: MatrixResult) -> Iterator[str]:
    shapes = sorted({s for s in MATRIX_SETS[result.parameter_set]()}, key=str)
    yield (
        f"\n{result.parameter_set}: {result.tensors} weights as (out, -1) matrices, "
        f"SpectralBall(1.0); shapes {', '.join('x'.join(map(str, s)) for s in shapes[:4])}"
        f"{', ...' if len(shapes) > 4 else ''}"
    )
    exact = result.seconds["hard_project exact"]
    yield f"  {'candidate':<24}{'ms':>10}{'x exact':>9}"
    for row, value in result.seconds.items():
        yield f"  {row:<24}{value * 1e3:>10.1f}{value / exact:>9.2f}"
    for check in result.checks:
        yield f"  {check}"


# ----------------------------------------------------------------------------- part 4: norm sets
#: Targets of issue 18: (row, reference row, largest allowed time ratio), per part.
NORM_TARGETS = {
    "gpt2-small": 1.25,
    "resnet50": 1.25,
    "small-2000": 1.5,
    "float64": 2.0,
}
#: One GPT-2-small block's Linear weights: L1Ball and Simplex per row, sorting each row.
SORT_SHAPES: list[tuple[int, ...]] = [(768, 3 * 768), (768, 768), (768, 4 * 768), (4 * 768, 768)]


@dataclass
class NormResult:
    part: str
    seconds: dict[str, float]
    ratios: dict[str, float]
    checks: list[str] = field(default_factory=list)


def _renorm_views(tensors: list[Tensor]) -> list[Tensor]:
    """What ``renorm_`` takes for each tensor: 1-D ones (each element a slice) as a column."""
    return [t if t.ndim > 1 else t.unsqueeze(-1) for t in tensors]


def bench_norm_sets(name: str, device: str, dtype: torch.dtype, rounds: int) -> NormResult:
    """``hard_project`` with ``MaxNorm(0.5)`` beside a ``renorm_`` loop over the same tensors.

    Both start from the same values, already in the ball after the warm-up calls (as
    after every step but the few that move a slice); a 256 MiB write evicts the caches
    before each timed call.
    """
    normed = parameter_set(name, device, dtype)
    constrain_all(normed, MaxNorm(NORM))
    views = _renorm_views([p.detach() for p in parameter_set(name, device, dtype).parameters()])

    def renorm_loop() -> None:
        for t in views:
            t.renorm_(2, 0, NORM)

    with torch.no_grad():
        seconds = _interleaved_medians(
            {"renorm_ loop": renorm_loop, "hard_project MaxNorm": lambda: hard_project(normed)},
            device,
            rounds,
            flush=_cache_flusher(device),
        )
    ratio = seconds["hard_project MaxNorm"] / seconds["renorm_ loop"]
    limit = NORM_TARGETS["float64" if dtype == torch.float64 else name]
    part = f"{name} {str(dtype).removeprefix('torch.')}"
    return NormResult(
        part,
        seconds,
        {"hard_project MaxNorm": ratio},
        [_check("hard_project MaxNorm / renorm_ loop", ratio, "<=", limit)],
    )


def _warm_ratio(base: Callable[[], object], ours: Callable[[], object], rounds: int) -> float:
    """Median over ``rounds`` of (time of 100 calls of ``ours``) / (100 of ``base``), alternating.

    For microsecond calls: each round times many repeated, warm calls of each, one
    right after the other, so that a change in the machine's load hits both.
    """
    for fn in (base, ours, base, ours):
        for _ in range(100):
            fn()
    ratios = []
    for _ in range(rounds):
        pair = []
        for fn in (base, ours):
            begin = time.perf_counter()
            for _ in range(100):
                fn()
            pair.append(time.perf_counter() - begin)
        ratios.append(pair[1] / pair[0])
    return statistics.median(ratios)


class _RenormModule(nn.Module):
    """A stock parametrization, as braindecode's ``MaxNormParametrize``: one ``renorm``."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.renorm(x, 2, 0, 1.0)


def bench_small_weight(rounds: int) -> NormResult:
    """EEGNet's max-norm weight (16 x 22, float32 on the CPU), timed warm as repeated calls.

    ``MaxNorm(1.0).project`` against ``torch.renorm`` (rows inside: every step but the
    first; rows outside: the first), the parametrized weight's read against a stock
    ``register_parametrization`` calling ``renorm``, and ``hard_project`` of a model
    with two such weights against a ``renorm_`` loop over them.
    """
    from torch.nn.utils import parametrize

    generator = torch.Generator().manual_seed(0)
    outside = torch.randn(16, 22, generator=generator)  # row norms about 4.7
    inside = MaxNorm(1.0).project(outside)
    constraint = MaxNorm(1.0)

    def layers(stock: bool) -> nn.Sequential:
        model = nn.Sequential(nn.Linear(22, 16), nn.Linear(22, 16))
        with torch.no_grad():
            for layer in model:
                layer.get_parameter("weight").copy_(outside)
                if stock:
                    parametrize.register_parametrization(layer, "weight", _RenormModule())
                else:
                    constrain(layer, "weight", MaxNorm(1.0))
        return model

    ours, stock = layers(False), layers(True)
    hand = [t.detach().clone() for t in ours.parameters() if t.ndim == 2]

    def hand_loop() -> None:
        for t in hand:
            t.renorm_(2, 0, 1.0)

    ratios = {
        "MaxNorm.project, rows inside": _warm_ratio(
            lambda: torch.renorm(inside, 2, 0, 1.0), lambda: constraint.project(inside), rounds
        ),
        "MaxNorm.project, rows outside": _warm_ratio(
            lambda: torch.renorm(outside, 2, 0, 1.0), lambda: constraint.project(outside), rounds
        ),
        "parametrized read": _warm_ratio(lambda: stock[0].weight, lambda: ours[0].weight, rounds),
    }
    with torch.no_grad():
        ratios["hard_project of two"] = _warm_ratio(hand_loop, lambda: hard_project(ours), rounds)
    limits = {
        "MaxNorm.project, rows inside": 5.0,
        "MaxNorm.project, rows outside": 5.0,
        "parametrized read": 2.5,
        "hard_project of two": 5.0,
    }
    checks = [_check(f"{row} / renorm", ratios[row], "<=", lim) for row, lim in limits.items()]
    return NormResult("eegnet 16x22 float32, warm", {}, ratios, checks)


def _sort_simplex(v: Tensor, s: float) -> Tensor:
    """The plain sort-based projection of each row onto the simplex (Duchi et al., 2008)."""
    u = v.sort(dim=-1, descending=True).values
    excess = u.cumsum(dim=-1) - s
    k = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    rho = (u - excess / k > 0).sum(dim=-1, keepdim=True)
    return (v - excess.gather(-1, rho - 1) / rho).clamp_min(0)


def _sort_l1(v: Tensor, r: float) -> Tensor:
    """The plain sort-based projection of each row onto the L1 ball (Duchi et al., 2008)."""
    inside = v.abs().sum(dim=-1, keepdim=True) <= r
    return torch.where(inside, v, v.sign() * _sort_simplex(v.abs(), r))


def bench_sorted_sets(device: str, rounds: int) -> NormResult:
    """``L1Ball(1.0, dim=0)`` and ``Simplex(1.0, dim=0)`` against plain float32 sort-based code.

    On one GPT-2-small block's Linear weights, every row outside the set (values in
    ``[-0.02, 0.02]``, rows of 768 to 3072): each call sorts every row.
    """
    generator = torch.Generator(device=device).manual_seed(0)
    weights = [
        torch.empty(shape, device=device).uniform_(-0.02, 0.02, generator=generator)
        for shape in SORT_SHAPES
    ]
    l1, simplex = L1Ball(1.0, dim=0), Simplex(1.0, dim=0)
    with torch.no_grad():
        seconds = _interleaved_medians(
            {
                "plain L1 (sort)": lambda: [_sort_l1(w, 1.0) for w in weights],
                "L1Ball.project": lambda: [l1.project(w) for w in weights],
                "plain simplex (sort)": lambda: [_sort_simplex(w, 1.0) for w in weights],
                "Simplex.project": lambda: [simplex.project(w) for w in weights],
            },
            device,
            rounds,
            warmup=1,
        )
    ratios = {
        "L1Ball.project": seconds["L1Ball.project"] / seconds["plain L1 (sort)"],
        "Simplex.project": seconds["Simplex.project"] / seconds["plain simplex (sort)"],
    }
    checks = [_check(f"{row} / plain", value, "<=", 1.5) for row, value in ratios.items()]
    return NormResult("gpt2-small block, L1 and simplex per row", seconds, ratios, checks)


#: The training row of a hand-written ``renorm_`` of every weight after each step.
HAND_HOOK = "renorm_ of each weight after the step"


def _norm_step(
    mode: str, width: int, depth: int, batch: int, device: str, dtype: torch.dtype
) -> Callable[[], None]:
    model = _mlp(width, depth, device, dtype)
    if mode in ("plain forward", "parametrize=False + project_after_step"):
        parametrized = mode == "plain forward"
        constrain_all(model, MaxNorm(NORM), include={"weight"}, parametrize=parametrized)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    if mode.endswith("project_after_step"):
        project_after_step(optimizer, model)
    if mode == HAND_HOOK:  # the hand-written floor: a renorm_ of each weight after the step
        weights = [p.detach() for name, p in model.named_parameters() if name.endswith("weight")]

        def renorm_weights(*_: object) -> None:
            for w in weights:
                w.renorm_(2, 0, NORM)

        optimizer.register_step_post_hook(renorm_weights)
    x = torch.randn(batch, width, device=device, dtype=dtype)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(x).float().square().mean().backward()
        optimizer.step()

    return step


def bench_norm_training(device: str, rounds: int) -> NormResult:
    """The first training case of part 2 with ``MaxNorm(0.5)`` on every weight, not the box.

    The initial rows (norm about 0.58) are outside: the constraint is active, and
    steps keep moving some of them out again. The hand-written ``renorm_`` after each
    step is what any post-step projection pays at least: it reads every weight, which
    the step has just pushed out of the caches.
    """
    name, width, depth, batch, dtype = TRAINING_CASES[
        "cuda" if device.startswith("cuda") else "cpu"
    ][0]
    modes = ["unconstrained", HAND_HOOK, "parametrize=False + project_after_step", "plain forward"]
    steps = {m: _norm_step(m, width, depth, batch, device, dtype) for m in modes}
    seconds = _interleaved_medians(steps, device, rounds, warmup=3)
    ratios = {m: seconds[m] / seconds["unconstrained"] for m in modes}
    limits = {"parametrize=False + project_after_step": 1.05, "plain forward": 1.25}
    checks = [_check(f"{m} vs unconstrained", ratios[m], "<=", v) for m, v in limits.items()]
    part = f"training step, {name} {str(dtype).removeprefix('torch.')} batch {batch}, MaxNorm"
    return NormResult(part, seconds, ratios, checks)


def _format_norms(result: NormResult) -> Iterator[str]:
    yield f"\n{result.part}"
    for row, value in result.seconds.items():
        ratio = f"{result.ratios[row]:>8.2f}x" if row in result.ratios else ""
        yield f"  {row:<42}{value * 1e3:>10.3f} ms{ratio}"
    for row, value in result.ratios.items():
        if row not in result.seconds:
            yield f"  {row:<42}{value:>8.2f}x renorm"
    for check in result.checks:
        yield f"  {check}"


def norm_main(device: str, sets: list[str], rounds: int) -> list[NormResult]:
    """Part 4, norm sets: each table printed as it is measured (``--skip-norms`` skips it)."""
    results: list[NormResult] = []

    def show(result: NormResult) -> None:
        results.append(result)
        print("\n".join(_format_norms(result)), flush=True)

    if device == "cpu":
        show(bench_small_weight(rounds))
    for name in sets:
        show(bench_norm_sets(name, device, torch.float32, rounds))
    for name in sets:
        if not name.startswith("gpt2"):  # a float64 GPT-2 is 1 GB per copy
            show(bench_norm_sets(name, device, torch.float64, rounds))
    show(bench_sorted_sets(device, max(3, rounds // 5)))
    show(bench_norm_training(device, max(rounds, 20)))
    return results


def matrix_main() -> list[MatrixResult]:
    """Part 3, matrix sets (CPU): each table printed as it is measured."""
    results: list[MatrixResult] = []
    for name in MATRIX_SETS:
        results.append(bench_matrix(name, rounds=3))
        print("\n".join(_format_matrix(results[-1])), flush=True)
    return results
