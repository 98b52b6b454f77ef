"""DDP and FSDP2 on the CPU: two gloo processes each, with a deadline instead of a hang.

DDP: the model is constrained before it is wrapped; after every optimizer step
(``project_after_step``) all ranks hold identical parameters, every constrained
raw value is feasible, and the result is that of one process on the whole batch.
``hard_project`` packs the raw tensors into flat buffers under DDP too, before or
after wrapping.

FSDP2: the raw tensors are DTensors sharded on dim 0; ``hard_project`` clamps each
shard (tensor bounds included) and norm-like projections written with ordinary
torch operations reduce across shards, so the result equals the projection of the
full tensor in one process.
"""

from __future__ import annotations

import copy
import gc
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from torch_constraints import (
    PSD,
    Box,
    Constraint,
    L1Ball,
    L2Ball,
    L2Sphere,
    LinfBall,
    MaxNorm,
    MinMaxNorm,
    NonNeg,
    Orthogonal,
    PackedProjection,
    Simplex,
    SpectralBall,
    UnitNorm,
    constrain,
    constrain_all,
    hard_project,
    project_after_step,
    saturation,
    violation,
)
from torch_constraints._rounding import inward_scalar

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"
    ),
]

WORLD = 2
DEADLINE_S = 90.0
STEPS = 5


def run_workers(worker: Any, tmp_path: Path, *args: Any) -> None:
    """Run ``worker(rank, store, *args)`` in WORLD processes; fail on error or past the deadline."""
    store = str(tmp_path / "store")
    context = mp.start_processes(
        worker, args=(store, *args), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=1.0):  # raises if a worker failed
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"{worker.__name__} did not finish within {DEADLINE_S:.0f} s (a hang?)")


def init(rank: int, store: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=30),
    )


def shutdown() -> None:
    """Destroy the process group once nothing holds it: the DDP reducer and FSDP state are gone.

    (Destroying it first leaves the reducer with the last reference; freeing the
    reducer then joins gloo's thread while holding the GIL, which deadlocks.) On a
    failure a worker exits without this: the parent stops the other rank.
    """
    gc.collect()
    dist.destroy_process_group()


def batch(step: int, rank: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(8, 6, generator=generator) * 3
    return x, torch.sin(x.sum(1, keepdim=True))


def global_batch(step: int) -> tuple[Tensor, Tensor]:
    parts = [batch(step, rank) for rank in range(WORLD)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    reference: nn.Module,
    ref_optimizer: torch.optim.Optimizer,
    step: int,
    rank: int,
) -> None:
    """One step of the distributed model on this rank's batch, and of the reference on all."""
    x, y = batch(step, rank)
    optimizer.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    gx, gy = global_batch(step)
    ref_optimizer.zero_grad()
    nn.functional.mse_loss(reference(gx), gy).backward()
    ref_optimizer.step()


def assert_same_on_all_ranks(tensors: list[Tensor], what: str) -> None:
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    gathered = [torch.empty_like(flat) for _ in range(WORLD)]
    dist.all_gather(gathered, flat)
    for rank, other in enumerate(gathered):
        assert torch.equal(other, gathered[0]), f"{what}: rank {rank} differs from rank 0"


# ----------------------------------------------------------------------------- DDP
ROW_UPPER = torch.linspace(0.05, 0.4, 16, dtype=torch.float64).unsqueeze(1)


def ddp_model(parametrize: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)
    )
    constrain_all(
        model,
        -0.1,
        0.1,
        include=lambda name, module, tensor: name != "0.weight",
        parametrize=parametrize,
    )
    constrain(model[0], "weight", Box(min=-ROW_UPPER, max=ROW_UPPER), parametrize=parametrize)
    return model


def assert_feasible_ddp(model: nn.Sequential) -> None:
    raw = {
        n.replace("parametrizations.", "").replace(".original", ""): p.detach().double()
        for n, p in model.named_parameters()
    }
    first = raw.pop("0.weight")
    assert (first.abs() <= ROW_UPPER).all()
    assert all((t.abs() <= 0.1).all() for t in raw.values())


def ddp_worker(rank: int, store: str) -> None:
    init(rank, store)
    for mode, bucket_view in [("default", False), ("packed", True), ("recorded", False)]:
        train_ddp(rank, mode, bucket_view)
    shutdown()


def train_ddp(rank: int, mode: str, bucket_view: bool) -> None:
    from torch.nn.parallel import DistributedDataParallel

    model = ddp_model(parametrize=mode != "recorded")
    reference = copy.deepcopy(model)
    raws = list(model.parameters())
    ptrs = [p.data_ptr() for p in raws]
    packed = PackedProjection(model) if mode == "packed" else None  # before wrapping
    ddp = DistributedDataParallel(model, gradient_as_bucket_view=bucket_view)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.3, momentum=0.9)
    project_after_step(optimizer, packed if packed is not None else ddp)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.3, momentum=0.9)
    project_after_step(ref_optimizer, reference)
    for step in range(STEPS):
        train_step(ddp, optimizer, reference, ref_optimizer, step, rank)
        assert_same_on_all_ranks(list(model.parameters()), f"{mode}, step {step}")
        assert_feasible_ddp(model)
        for a, b in zip(model.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    storages = {p.untyped_storage().data_ptr() for p in raws}
    if mode == "packed":
        assert len(storages) == 1, "PackedProjection packs the raw tensors under DDP"
    else:
        assert [p.data_ptr() for p in raws] == ptrs, "hard_project changed a storage"
    bound = inward_scalar(0.1, torch.float32, lower=False)
    assert sum(int((p.abs() == bound).sum()) for p in raws[1:]) > 0, "clipping was active"


def test_ddp_keeps_ranks_identical_and_constrained(tmp_path: Path) -> None:
    run_workers(ddp_worker, tmp_path)


# ----------------------------------------------------------------------------- FSDP2
class ColumnNormBall(Constraint):
    """Test-only: every column (a reduction over dim 0, across FSDP2 shards) of norm <= 1."""

    def project(self, x: Tensor) -> Tensor:
        norms = torch.linalg.vector_norm(x, dim=0, keepdim=True)
        return x * torch.clamp(1.0 / norms, max=1.0)


class FrobeniusBall(Constraint):
    """Test-only: the whole tensor of norm <= radius."""

    def __init__(self, radius: float) -> None:
        super().__init__()
        self.radius = radius

    def project(self, x: Tensor) -> Tensor:
        return x * torch.clamp(self.radius / torch.linalg.vector_norm(x), max=1.0)


FSDP_ROW_UPPER = torch.linspace(0.05, 0.4, 8, dtype=torch.float64).unsqueeze(1)


def fsdp_model(parametrize: bool) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    mode = {"parametrize": parametrize}
    constrain(model[0], "weight", Box(min=-FSDP_ROW_UPPER, max=FSDP_ROW_UPPER), **mode)
    constrain(model[0], "bias", -0.1, 0.1, **mode)
    # Straight through: the gradient of a projection onto a sphere has a kink right at
    # the sphere, where sharded and unsharded norms differ by rounding.
    if parametrize:
        mode["straight_through"] = True
    constrain(model[2], "weight", ColumnNormBall(), **mode)
    constrain(model[4], "weight", FrobeniusBall(0.5), **mode)  # rank 1: no rows
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)  # start outside every set
    return model


def full(tensor: Tensor) -> Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def plain_names(model: nn.Module) -> dict[str, Tensor]:
    """The full raw tensors by plain name (``0.weight``), in either registration mode."""
    return {
        n.replace("parametrizations.", "").replace(".original", ""): full(p).detach()
        for n, p in model.named_parameters()
    }


def assert_feasible_fsdp(named: dict[str, Tensor]) -> None:
    assert (named["0.weight"].double().abs() <= FSDP_ROW_UPPER).all()
    assert (named["0.bias"].double().abs() <= 0.1).all()
    columns = torch.linalg.vector_norm(named["2.weight"].double(), dim=0)
    assert (columns <= 1 + 1e-6).all(), columns
    assert torch.linalg.vector_norm(named["4.weight"]) <= 0.5 + 1e-6


def fsdp_worker(rank: int, store: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    init(rank, store)
    for parametrize in (True, False):
        train_fsdp(rank, init_device_mesh("cpu", (WORLD,)), parametrize)
    shutdown()


def train_fsdp(rank: int, mesh: Any, parametrize: bool) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard

    model = fsdp_model(parametrize)
    reference = copy.deepcopy(model)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for name, p in model.named_parameters():
        assert isinstance(p, DTensor) and p.placements == (Shard(0),), name
    # hard_project on the shards equals hard_project on the full tensors
    hard_project(model)
    hard_project(reference)
    for (name, p), ref in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(full(p), ref.detach(), rtol=1e-6, atol=1e-7, msg=name)
    named = plain_names(model)
    assert_feasible_fsdp(named)
    assert torch.allclose(torch.linalg.vector_norm(named["2.weight"], dim=0), torch.ones(8)), (
        "every column was scaled back onto the sphere"
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    project_after_step(optimizer, model)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.3)
    project_after_step(ref_optimizer, reference)
    for step in range(STEPS):
        train_step(model, optimizer, reference, ref_optimizer, step, rank)
        named = plain_names(model)
        assert_feasible_fsdp(named)
        for (name, value), ref in zip(named.items(), reference.parameters(), strict=True):
            torch.testing.assert_close(value, ref.detach(), rtol=1e-5, atol=1e-6, msg=name)


def test_fsdp2_hard_project_on_sharded_parameters(tmp_path: Path) -> None:
    pytest.importorskip("torch.distributed.fsdp", reason="needs FSDP2")
    run_workers(fsdp_worker, tmp_path)


# ----------------------------------------------------------------------------- every family
def families() -> list[Constraint]:
    """One constraint of every built-in family, for (8, 8) weights."""
    return [
        Box(-0.1, 0.1),
        Box(min=-FSDP_ROW_UPPER, max=FSDP_ROW_UPPER),
        NonNeg(),
        LinfBall(0.2),
        MaxNorm(0.5),
        MinMaxNorm(0.5, 1.0),
        UnitNorm(dim=1),
        L2Ball(0.7),
        L2Sphere(2.0, dim=0),
        L1Ball(1.5),
        Simplex(2.0, dim=0),
        SpectralBall(0.5),
        Orthogonal(),
        PSD(),
    ]


class Layers(nn.ModuleList):
    """One (8, 8) layer per family; the forward pass sums their mean squares."""

    def forward(self, x: Tensor) -> Tensor:
        return sum((layer(x).square().mean() for layer in self), torch.zeros(()))


def family_model(parametrize: bool) -> Layers:
    torch.manual_seed(0)
    model = Layers(nn.Linear(8, 8) for _ in families())
    for layer, constraint in zip(model, families(), strict=True):
        constrain(layer, "weight", constraint, parametrize=parametrize)
        with torch.no_grad():
            raw_tensor(layer).mul_(7.0)  # start outside every set
    return model


def raw_tensor(layer: nn.Module) -> Tensor:
    chains = getattr(layer, "parametrizations", None)
    return chains.weight.original if chains is not None else layer.weight


def assert_close_values(got: dict[str, float], want: dict[str, float], what: str) -> None:
    assert got.keys() == want.keys(), what
    for name, value in want.items():
        assert abs(got[name] - value) <= 1e-5 * max(1.0, abs(value)), (what, name, got[name], value)


def families_worker(rank: int, store: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    init(rank, store)
    mesh = init_device_mesh("cpu", (WORLD,))
    for parametrize in (True, False):
        what = f"parametrize={parametrize}"
        # FSDP2: the shards are projected as the whole tensors would be.
        model, reference = family_model(parametrize), family_model(parametrize)
        for layer in model:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        assert_close_values(violation(model), violation(reference), f"FSDP2 {what}")
        assert_close_values(saturation(model), saturation(reference), f"FSDP2 {what}")
        hard_project(model)
        hard_project(reference)
        for i, (layer, ref) in enumerate(zip(model, reference, strict=True)):
            torch.testing.assert_close(
                full(raw_tensor(layer)),
                raw_tensor(ref).detach(),
                rtol=1e-5,
                atol=1e-6,
                msg=f"FSDP2 {what}: {type(families()[i]).__name__}",
            )
        assert max(violation(model).values()) <= 1e-5, (what, violation(model))
        # DDP: every rank projects the same tensors alike after each step.
        model = family_model(parametrize)
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        project_after_step(optimizer, ddp)
        for step in range(2):
            x, _ = batch(step, rank)
            optimizer.zero_grad()
            ddp(x[:, :1].repeat(1, 8)).backward()
            optimizer.step()
            for i, layer in enumerate(model):
                assert_same_on_all_ranks([raw_tensor(layer)], f"DDP {what} {families()[i]!r}")
        assert max(violation(model).values()) <= 1e-5, (what, violation(model))
    shutdown()


def test_every_family_and_the_monitoring_under_fsdp2_and_ddp(tmp_path: Path) -> None:
    pytest.importorskip("torch.distributed.fsdp", reason="needs FSDP2")
    run_workers(families_worker, tmp_path)
