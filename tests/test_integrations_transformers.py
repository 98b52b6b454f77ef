"""The Hugging Face ``Trainer`` callback: the same weights as a hand-written loop.

A real ``transformers.Trainer`` on the CPU, a few steps of a model of about a
hundred parameters. The hand loop is what the ``Trainer`` runs with these
arguments: ``torch.optim.AdamW`` at a constant learning rate, no gradient
clipping, no weight decay, the batches in order, the loss divided by the number
of accumulated batches.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import CountingBox, assert_same, projections
from torch import nn

from torch_constraints import constrain, constrain_all, hard_project, saturation, violation

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from torch_constraints.integrations.transformers import ProjectionCallback  # noqa: E402

LR = 0.05
BOUND = 0.2


class Regressor(nn.Module):
    """A plain module with the ``Trainer``'s interface: keyword inputs, a ``loss`` output."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.net(x)
        return {"loss": nn.functional.mse_loss(out, labels), "logits": out}


def dataset(n: int = 8) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=generator)
    y = 3 * torch.randn(n, 1, generator=generator)  # large targets: weights hit the bounds
    return [{"x": x[i], "labels": y[i]} for i in range(n)]


def arguments(out: Path, max_steps: int, **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "output_dir": str(out),
        "max_steps": max_steps,
        "per_device_train_batch_size": 2,
        "learning_rate": LR,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 0.0,  # no clipping
        "optim": "adamw_torch",
        "train_sampling_strategy": "sequential",
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "disable_tqdm": True,
        "logging_steps": 1,
    }
    return transformers.TrainingArguments(**{**options, **kwargs})


def train(model: nn.Module, args: Any, callbacks: list[Any], **kwargs: Any) -> Any:
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=dataset(), callbacks=callbacks
    )
    trainer.train(**kwargs)
    return trainer


def hand_loop(model: Regressor, steps: int, accumulate: int = 1) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    data = dataset()
    for i in range(steps * accumulate):
        batch = data[2 * (i % 4) : 2 * (i % 4) + 2]
        x = torch.stack([b["x"] for b in batch])
        y = torch.stack([b["labels"] for b in batch])
        (model(x, y)["loss"] / accumulate).backward()
        if (i + 1) % accumulate == 0:
            optimizer.step()
            hard_project(model)
            optimizer.zero_grad()


def feasible(model: nn.Module) -> bool:
    return all(bool(p.abs().max() <= BOUND) for p in model.parameters())


@pytest.mark.parametrize("parametrize", [False, True], ids=["plain", "parametrized"])
def test_training_matches_the_hand_loop(parametrize: bool, tmp_path: Path) -> None:
    model = Regressor()
    constrain_all(model, -BOUND, BOUND, parametrize=parametrize)
    reference = copy.deepcopy(model)
    train(model, arguments(tmp_path, 4), [ProjectionCallback()])
    hand_loop(reference, 4)
    assert_same(model, reference)
    assert feasible(model)


def test_without_the_callback_the_weights_leave_the_set(tmp_path: Path) -> None:
    model = Regressor()
    constrain_all(model, -BOUND, BOUND, parametrize=False)
    train(model, arguments(tmp_path, 4), [])
    assert not feasible(model)


def test_gradient_accumulation_projects_after_real_steps_only(tmp_path: Path) -> None:
    model = Regressor()
    constrain_all(model, CountingBox(-BOUND, BOUND), parametrize=False)
    reference = copy.deepcopy(model)
    before = projections(model)
    train(model, arguments(tmp_path, 2, gradient_accumulation_steps=2), [ProjectionCallback()])
    assert projections(model) - before == 2  # 4 batches, 2 optimizer steps
    hand_loop(reference, 2, accumulate=2)
    assert_same(model, reference)


@pytest.mark.parametrize("parametrize", [False, True], ids=["plain", "parametrized"])
def test_resuming_from_a_checkpoint_continues_exactly(parametrize: bool, tmp_path: Path) -> None:
    def constrained(seed: int = 0) -> Regressor:
        model = Regressor(seed)
        constrain_all(model, -BOUND, BOUND, parametrize=parametrize)
        return model

    straight = constrained()
    train(straight, arguments(tmp_path / "straight", 4), [ProjectionCallback()])

    saving = arguments(tmp_path / "run", 4, save_strategy="steps", save_steps=2)
    train(constrained(), saving, [ProjectionCallback()])
    resumed = constrained(seed=5)  # other initial values: all come from the checkpoint
    checkpoint = tmp_path / "run" / "checkpoint-2"
    train(resumed, saving, [ProjectionCallback()], resume_from_checkpoint=str(checkpoint))
    assert_same(resumed, straight)


def test_log_saturation_adds_to_the_logs_and_the_history(tmp_path: Path) -> None:
    model = Regressor()
    constrain_all(model, -BOUND, BOUND, parametrize=False)
    trainer = train(model, arguments(tmp_path, 3), [ProjectionCallback(log_saturation=True)])
    last_step = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    expected = {f"saturation/{k}": v for k, v in saturation(model).items()}
    names = ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
    assert list(expected) == [f"saturation/{name}" for name in names]
    assert {k: last_step[k] for k in expected} == pytest.approx(expected)
    assert last_step["step"] == 3


def test_log_violation_adds_to_the_logs(tmp_path: Path) -> None:
    model = Regressor()
    constrain_all(model, -BOUND, BOUND, parametrize=False)
    trainer = train(model, arguments(tmp_path, 3), [ProjectionCallback(log_violation=True)])
    last_step = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    expected = {f"violation/{k}": v for k, v in violation(model).items()}
    assert len(expected) == 4
    assert {k: last_step[k] for k in expected} == pytest.approx(expected)
    assert not any(k.startswith("saturation/") for k in last_step)


def test_a_model_without_constraints_fails_when_training_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no tensor constrained"):
        train(Regressor(), arguments(tmp_path, 1), [ProjectionCallback()])


def test_log_saturation_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="log_saturation must be a bool, got 1"):
        ProjectionCallback(log_saturation=1)  # type: ignore[arg-type]


def test_a_tied_gpt2_trains_saves_and_resumes_exactly_with_parametrize_false(
    tmp_path: Path,
) -> None:
    """GPT-2 ties lm_head to wte: constrained once, through either name, it stays one tensor."""
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=16, tie_word_embeddings=True
    )
    tokens = torch.randint(0, 64, (8, 8), generator=torch.Generator().manual_seed(2))
    data = [{"input_ids": t, "labels": t} for t in tokens]

    def tied(seed: int = 0) -> Any:
        torch.manual_seed(seed)
        model = transformers.GPT2LMHeadModel(config)
        constrain(model, "lm_head.weight", -0.02, 0.02, parametrize=False)
        return model

    def run(model: Any, out: Path, **kwargs: Any) -> None:
        args = arguments(out, 4, save_strategy="steps", save_steps=2)
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=data, callbacks=[ProjectionCallback()]
        )
        trainer.train(**kwargs)

    straight = tied()
    run(straight, tmp_path / "straight")
    assert straight.lm_head.weight is straight.transformer.wte.weight
    assert straight.transformer.wte.weight.abs().max() <= 0.02
    run(tied(), tmp_path / "run")
    resumed = tied(seed=5)
    run(resumed, tmp_path / "run", resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert resumed.lm_head.weight is resumed.transformer.wte.weight
    assert_same(resumed, straight)


def test_a_tie_parametrized_through_one_name_fails_when_training_starts(tmp_path: Path) -> None:
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=16, tie_word_embeddings=True
    )
    model = transformers.GPT2LMHeadModel(config)
    constrain(model.transformer.wte, "weight", -0.02, 0.02)  # lm_head reads it raw
    tokens = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(2))
    trainer = transformers.Trainer(
        model=model,
        args=arguments(tmp_path, 1),
        train_dataset=[{"input_ids": t, "labels": t} for t in tokens],
        callbacks=[ProjectionCallback()],
    )
    with pytest.raises(ValueError, match=r"transformer\.wte\.weight.*'lm_head\.weight'"):
        trainer.train()
