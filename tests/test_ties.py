"""Tied weights: one Parameter under several names (as Hugging Face ties embeddings)."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from torch_constraints import (
    MaxNorm,
    constrain,
    constrain_all,
    hard_project,
    named_constraints,
    project_after_step,
    unconstrain,
)


class TiedLM(nn.Module):
    """An embedding and an output layer sharing one weight, as GPT-2's do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens))


def test_parametrize_false_constrains_what_every_name_sees() -> None:
    model = TiedLM()
    weight = model.embed.weight
    constrain(model, "head.weight", -0.05, 0.05, parametrize=False)
    assert model.head.weight is model.embed.weight is weight
    assert weight.abs().max() <= 0.05
    with torch.no_grad():
        weight.mul_(10)
    hard_project(model)
    assert model.embed.weight.abs().max() <= 0.05 and model.head.weight.abs().max() <= 0.05


def test_the_same_constraint_under_both_names_is_accepted_and_projected_once() -> None:
    model = TiedLM()
    names = constrain_all(model, MaxNorm(0.5, dim=0), include={"weight"}, parametrize=False)
    assert names == ["embed.weight", "head.weight"]
    with torch.no_grad():
        model.embed.weight.mul_(10)
    hard_project(model)
    norms = model.embed.weight.norm(dim=1)
    assert torch.allclose(norms, torch.full((10,), 0.5))


def test_a_different_constraint_under_the_other_name_is_refused() -> None:
    model = TiedLM()
    constrain(model, "embed.weight", -0.05, 0.05, parametrize=False)
    before = model.embed.weight.detach().clone()
    with pytest.raises(ValueError, match=r"'embed.weight'.*two names of one tensor"):
        constrain(model, "head.weight", -0.5, 0.5, parametrize=False)
    with pytest.raises(ValueError, match=r"'embed.weight'.*two names of one tensor"):
        constrain(model, "head.weight", MaxNorm(1.0), parametrize=False)
    assert torch.equal(model.embed.weight, before)
    assert [name for name, _ in named_constraints(model)] == ["embed.weight"]


@pytest.mark.parametrize("name", ["embed.weight", "head.weight"])
def test_a_parametrization_of_a_tied_weight_is_refused_naming_the_aliases(name: str) -> None:
    model = TiedLM()
    before = model.embed.weight.detach().clone()
    other = "head.weight" if name == "embed.weight" else "embed.weight"
    with pytest.raises(ValueError, match=rf"one Parameter with '{other}'.*parametrize=False"):
        constrain(model, name, -0.05, 0.05)
    with pytest.raises(ValueError, match="tied weights"):
        constrain_all(model, -0.05, 0.05, include={"weight"})
    assert type(model.head) is nn.Linear and type(model.embed) is nn.Embedding
    assert model.head.weight is model.embed.weight
    assert torch.equal(model.embed.weight, before)


# --------------------------------------------------------------------- Hugging Face
def tiny_gpt2() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=16, tie_word_embeddings=True
    )
    return transformers.GPT2LMHeadModel(config).eval()


def test_hugging_face_tied_model_round_trips_with_parametrize_false(tmp_path: object) -> None:
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    constrain(model, "transformer.wte.weight", -0.05, 0.05, parametrize=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    tokens = torch.randint(0, 64, (2, 8))
    model(tokens, labels=tokens).loss.backward()
    optimizer.step()
    hard_project(model)
    assert model.lm_head.weight.abs().max() <= 0.05
    model.save_pretrained(str(tmp_path))
    loaded = type(model).from_pretrained(str(tmp_path)).eval()
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, model(tokens).logits)


def test_hugging_face_resize_and_tie_weights_keep_the_constraint() -> None:
    model = tiny_gpt2()
    constrain(model, "transformer.wte.weight", -0.05, 0.05, parametrize=False)
    model.resize_token_embeddings(80)
    model.tie_weights()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.wte.weight.shape == (80, 16)
    with torch.no_grad():
        model.lm_head.weight.mul_(100)
    hard_project(model)
    assert model.transformer.wte.weight.abs().max() <= 0.05  # the new rows too


def test_hugging_face_tied_model_refuses_parametrizations_before_changing_anything() -> None:
    model = tiny_gpt2()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="parametrize=False"):
        constrain_all(model, -0.05, 0.05, include={"weight"})
    assert {k: v for k, v in model.state_dict().items()}.keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    model.resize_token_embeddings(80)  # still a plain, working model


# --------------------------------------------------------------------- through submodules
def test_a_different_set_through_another_submodule_is_refused_and_changes_nothing() -> None:
    # The tie belongs to the Parameter: calls through two submodules see it too.
    model = TiedLM()
    constrain(model.embed, "weight", -0.03, 0.03, parametrize=False)
    before = model.embed.weight.detach().clone()
    with pytest.raises(ValueError, match=r"Embedding\.weight.*two names of one tensor"):
        constrain(model.head, "weight", -0.01, 0.01, parametrize=False)
    assert torch.equal(model.embed.weight, before)
    assert [name for name, _ in named_constraints(model)] == ["embed.weight"]
    constrain(model.head, "weight", -0.03, 0.03, parametrize=False)  # the same set: accepted
    assert [name for name, _ in named_constraints(model)] == ["embed.weight", "head.weight"]


def test_a_constraint_through_another_submodule_on_a_parametrized_tie_is_refused() -> None:
    model = TiedLM()
    constrain(model.embed, "weight", -0.03, 0.03)  # the submodule cannot see the head
    before = model.embed.parametrizations.weight.original.detach().clone()
    with pytest.raises(ValueError, match=r"Embedding\.weight, which carries a parametrization"):
        constrain(model.head, "weight", MaxNorm(0.05, dim=1), parametrize=False)
    with pytest.raises(ValueError, match="tied weights"):
        constrain(model.head, "weight", MaxNorm(0.05, dim=1))
    assert type(model.head) is nn.Linear and not hasattr(model.head, "_torch_constraints")
    assert torch.equal(model.embed.parametrizations.weight.original, before)


def test_every_entry_point_that_sees_both_names_reports_the_unconstrained_reader() -> None:
    model = TiedLM()
    constrain(model.embed, "weight", -0.03, 0.03)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reader = r"embed\.weight \(Embedding\) is parametrized, but .*'head\.weight'"
    with pytest.raises(ValueError, match=reader):
        list(named_constraints(model))
    with pytest.raises(ValueError, match=reader):
        project_after_step(optimizer, model)
    with pytest.raises(ValueError, match=reader):
        constrain_all(model, -1, 1, include={"bias"})
    with pytest.raises(ValueError, match=reader):
        constrain(model, "head.weight", -0.03, 0.03, parametrize=False)
    unconstrain(model.embed)
    constrain(model, "embed.weight", -0.03, 0.03, parametrize=False)  # the way out
    assert model.head.weight.abs().max() <= 0.03


def test_the_mark_survives_pickling_and_a_stale_one_is_ignored() -> None:
    model = TiedLM()
    constrain(model.embed, "weight", -0.03, 0.03, parametrize=False)
    copy = pickle.loads(pickle.dumps(model))
    with pytest.raises(ValueError, match="two names of one tensor"):
        constrain(copy.head, "weight", -0.01, 0.01, parametrize=False)
    unconstrain(model.embed)  # through this library: the mark goes too
    constrain(model.head, "weight", -0.01, 0.01, parametrize=False)
    layer = nn.Linear(2, 2)
    other = nn.Linear(2, 2)
    constrain(layer, "weight", -1, 1)
    weight = layer.parametrizations.weight.original
    parametrize.remove_parametrizations(layer, "weight")  # PyTorch's own: the mark is stale
    other.weight = weight
    constrain(other, "weight", MaxNorm(0.5), parametrize=False)  # not refused
