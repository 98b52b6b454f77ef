"""The Lightning callback: the same weights as a hand-written loop, in every stepping mode.

Real ``pytorch_lightning`` trainers on the CPU, a few steps on a model of about a
hundred parameters. Each test compares with the loop Lightning runs, written out:
the same optimizer, the same batches in the same order, ``hard_project`` after each
``optimizer.step()``.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import CountingBox, assert_same, projections
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torch_constraints import constrain, constrain_all, hard_project, saturation, violation

pl = pytest.importorskip("pytorch_lightning")

from torch_constraints.integrations.lightning import ProjectionCallback  # noqa: E402

LR = 0.05
BOUND = 0.2


def make_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


def batches(n: int = 4, size: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n * size, 4, generator=generator)
    y = 3 * torch.randn(n * size, 1, generator=generator)  # large targets: weights hit the bounds
    return [(x[i : i + size], y[i : i + size]) for i in range(0, n * size, size)]


def loader(n: int = 4) -> DataLoader[Any]:
    xs, ys = zip(*batches(n), strict=True)
    return DataLoader(TensorDataset(torch.cat(xs), torch.cat(ys)), batch_size=2, shuffle=False)


class Regressor(pl.LightningModule):  # type: ignore[misc]
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=LR)


class TwoOptimizers(pl.LightningModule):  # type: ignore[misc]
    """Manual optimization: the second loss reads the first net right after its step."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.first, self.second = first, second

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        opt1, opt2 = self.optimizers()
        loss1 = nn.functional.mse_loss(self.first(x), y)
        opt1.zero_grad()
        self.manual_backward(loss1)
        opt1.step()
        loss2 = nn.functional.mse_loss(self.second(x) + self.first(x).detach(), y)
        opt2.zero_grad()
        self.manual_backward(loss2)
        opt2.step()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.Adam(self.first.parameters(), lr=LR),
            torch.optim.SGD(self.second.parameters(), lr=LR),
        ]


def trainer(max_steps: int, **kwargs: Any) -> Any:
    return pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def hand_loop(net: nn.Module, steps: int, accumulate: int = 1) -> None:
    """What Lightning runs, written out, with ``hard_project`` after each step."""
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    data = batches()
    for i in range(steps * accumulate):
        x, y = data[i % len(data)]
        (nn.functional.mse_loss(net(x), y) / accumulate).backward()
        if (i + 1) % accumulate == 0:
            optimizer.step()
            hard_project(net)
            optimizer.zero_grad()


def feasible(net: nn.Module) -> bool:
    return all(bool(p.abs().max() <= BOUND) for p in net.parameters())


@pytest.mark.parametrize("parametrize", [False, True], ids=["plain", "parametrized"])
def test_training_matches_the_hand_loop(parametrize: bool) -> None:
    net = make_net()
    constrain_all(net, -BOUND, BOUND, parametrize=parametrize)
    reference = copy.deepcopy(net)
    trainer(4, callbacks=[ProjectionCallback()]).fit(Regressor(net), loader())
    hand_loop(reference, 4)
    assert_same(net, reference)
    assert feasible(net)  # the raw weights, both modes


def test_without_the_callback_the_weights_leave_the_set() -> None:
    # What the test above would see without the callback.
    net = make_net()
    constrain_all(net, -BOUND, BOUND, parametrize=False)
    trainer(4).fit(Regressor(net), loader())
    assert not feasible(net)


def test_gradient_accumulation_projects_after_real_steps_only() -> None:
    net = make_net()
    constrain_all(net, CountingBox(-BOUND, BOUND), parametrize=False)
    reference = copy.deepcopy(net)
    before = projections(net)
    trainer(2, accumulate_grad_batches=2, callbacks=[ProjectionCallback()]).fit(
        Regressor(net), loader(4)
    )
    assert projections(net) - before == 2  # 4 batches, 2 optimizer steps
    hand_loop(reference, 2, accumulate=2)
    assert_same(net, reference)


def test_several_optimizers_with_manual_optimization() -> None:
    first, second = make_net(0), make_net(1)
    constrain_all(first, CountingBox(-BOUND, BOUND), parametrize=False)
    constrain_all(second, -BOUND, BOUND)
    ref_first, ref_second = copy.deepcopy(first), copy.deepcopy(second)
    before = projections(first)
    # In manual optimization, max_steps counts the steps of all optimizers: 3 batches.
    trainer(6, callbacks=[ProjectionCallback()]).fit(TwoOptimizers(first, second), loader())
    assert projections(first) - before == 6  # after each of the 2 steps of each batch
    opt1 = torch.optim.Adam(ref_first.parameters(), lr=LR)
    opt2 = torch.optim.SGD(ref_second.parameters(), lr=LR)
    both = nn.ModuleList([ref_first, ref_second])
    for x, y in batches()[:3]:
        opt1.zero_grad()
        nn.functional.mse_loss(ref_first(x), y).backward()
        opt1.step()
        hard_project(both)
        opt2.zero_grad()
        nn.functional.mse_loss(ref_second(x) + ref_first(x).detach(), y).backward()
        opt2.step()
        hard_project(both)
    assert_same(first, ref_first)
    assert_same(second, ref_second)


@pytest.mark.parametrize("parametrize", [False, True], ids=["plain", "parametrized"])
def test_resuming_from_a_checkpoint_continues_exactly(parametrize: bool, tmp_path: Path) -> None:
    def constrained() -> nn.Sequential:
        net = make_net()
        constrain_all(net, -BOUND, BOUND, parametrize=parametrize)
        return net

    # Whole epochs (max_epochs): Lightning 2.6 resumes a run stopped by max_steps at
    # the end of an epoch inside that epoch, with the data loader started afresh.
    straight = constrained()
    trainer(-1, max_epochs=2, callbacks=[ProjectionCallback()]).fit(Regressor(straight), loader(2))

    first_half = trainer(-1, max_epochs=1, callbacks=[ProjectionCallback()])
    first_half.fit(Regressor(constrained()), loader(2))
    path = tmp_path / "half.ckpt"
    first_half.save_checkpoint(path)
    resumed = make_net(seed=5)  # other initial values: all come from the checkpoint
    constrain_all(resumed, -BOUND, BOUND, parametrize=parametrize)
    second_half = trainer(-1, max_epochs=2, callbacks=[ProjectionCallback()])
    second_half.fit(Regressor(resumed), loader(2), ckpt_path=path)
    assert second_half.global_step == 4
    assert_same(resumed, straight)


def test_log_saturation_logs_each_box_constrained_tensor() -> None:
    net = make_net()
    constrain_all(net, -BOUND, BOUND, parametrize=False)
    fitted = trainer(3, callbacks=[ProjectionCallback(log_saturation=True)])
    fitted.fit(Regressor(net), loader())
    logged = {k: float(v) for k, v in fitted.callback_metrics.items()}
    expected = {f"saturation/net.{k}": v for k, v in saturation(net).items()}
    assert logged == pytest.approx(expected)
    assert max(expected.values()) > 0  # some weights sit at a bound


def test_the_hooks_are_removed_when_training_ends() -> None:
    net = make_net()
    constrain_all(net, -BOUND, BOUND, parametrize=False)
    model = Regressor(net)
    fitted = trainer(2, callbacks=[ProjectionCallback(log_saturation=True)])
    fitted.fit(model, loader())
    optimizer = fitted.optimizers[0]
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    optimizer.zero_grad(set_to_none=True)
    optimizer.step()  # no gradients: changes nothing; no projection either
    assert bool((net[0].weight == 1.0).all())


def test_a_model_without_constraints_fails_when_training_starts() -> None:
    with pytest.raises(ValueError, match="no tensor constrained"):
        trainer(1, callbacks=[ProjectionCallback()]).fit(Regressor(make_net()), loader())


def test_log_violation_logs_each_constrained_tensor() -> None:
    net = make_net()
    constrain_all(net, -BOUND, BOUND, parametrize=False)
    fitted = trainer(3, callbacks=[ProjectionCallback(log_violation=True)])
    fitted.fit(Regressor(net), loader())
    logged = {k: float(v) for k, v in fitted.callback_metrics.items()}
    expected = {f"violation/net.{k}": v for k, v in violation(net).items()}
    assert set(logged) == set(expected) and len(expected) == 4
    assert logged == pytest.approx(expected)  # zero: projected after every step


@pytest.mark.parametrize("flag", ["log_saturation", "log_violation"])
def test_log_flags_must_be_bools(flag: str) -> None:
    with pytest.raises(TypeError, match=f"{flag} must be a bool, got 'yes'"):
        ProjectionCallback(**{flag: "yes"})


def test_importing_the_integrations_package_loads_no_framework() -> None:
    # One subprocess (importing torch takes seconds): the package loads no framework;
    # without the frameworks, the submodules import and the callbacks say what to install.
    code = """
import sys
import torch_constraints.integrations
frameworks = {"pytorch_lightning", "lightning", "transformers", "accelerate"}
loaded = frameworks & set(sys.modules)
assert not loaded, loaded
for name in frameworks:
    sys.modules[name] = None  # import raises ImportError
from torch_constraints.integrations import lightning, transformers
for module, extra in ((lightning, "lightning"), (transformers, "transformers")):
    try:
        module.ProjectionCallback()
    except ImportError as error:
        assert f"torch-constraints[{extra}]" in str(error), error
    else:
        raise AssertionError("no ImportError")
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_a_tie_parametrized_through_one_name_fails_when_training_starts() -> None:
    net = make_net()
    net.append(nn.Linear(16, 1))  # never called: it only holds the tie
    net[3].weight = net[2].weight
    constrain(net[2], "weight", -BOUND, BOUND)  # net[3] reads the same tensor raw
    with pytest.raises(ValueError, match=r"net\.2\.weight.*'net\.3\.weight'"):
        trainer(1, callbacks=[ProjectionCallback()]).fit(Regressor(net), loader())
