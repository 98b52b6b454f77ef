"""A stateful property test of the guarantees: any sequence of calls, any order.

A hypothesis state machine drives a small model with a tied pair of weights
through random sequences of what users do: constrain (either mode, stacked),
unconstrain, forward and backward, ``hard_project``, packing, optimizer steps,
writes through ``.data`` and under ``no_grad``, rebinding ``.data``, changing a
registered constraint's attributes, ``state_dict`` save and load, copies. The test
keeps its own model of what each raw tensor must hold and of each constraint (its
own, separately built constraint objects), and checks after every step that:

1. the forward value and gradient of every constrained tensor are those of the
   constraints applied afresh to the raw tensor, bit for bit;
2. distinct Parameters share no storage unless a live ``PackedProjection`` packed
   them, and library calls keep every storage;
3. every raw tensor holds what the test expects, bit for bit;
4. after a projection every raw tensor is feasible (by the test's own arithmetic,
   in float64) and a second projection changes nothing;
5. no parameter is an inference tensor, and the Parameter objects (and the tie)
   are the ones the model started with.

One documented limit of the packing opt-in is tolerated: a whole-model
``torch.save`` of a packed model loads as Parameters that share the pack's storage
(``tests/test_packing.py`` pins it), so the machine continues on the original then.
"""

from __future__ import annotations

import copy
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from torch import Tensor, nn
from torch.nn.utils import parametrize

from torch_constraints import (
    Box,
    Constraint,
    L1Ball,
    L2Ball,
    LinfBall,
    MaxNorm,
    NonNeg,
    PackedProjection,
    constrain,
    hard_project,
    named_constraints,
    unconstrain,
)

SLOTS = ("a.weight", "a.bias", "b.weight", "b.bias", "c.weight")
TENSORS = ("a.weight", "a.bias", "b.weight", "b.bias")
TIE = {"b.weight": "c.weight", "c.weight": "b.weight"}
NORM_SLACK = 1e-5  # relative: rescaled slices land within a few ulps of the radius


def canon(slot: str) -> str:
    """The tensor behind a slot: ``c.weight`` is ``b.weight``."""
    return "b.weight" if slot == "c.weight" else slot


class Net(nn.Module):
    """Three linear layers; ``c.weight`` is ``b.weight`` (one Parameter, two owners)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 4)
        self.c = nn.Linear(4, 4, bias=False)
        self.c.weight = self.b.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


# ------------------------------------------------------------------ the test's constraints
@dataclass
class Ref:
    """The test's own description of one constraint, and a fresh object built from it."""

    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    straight_through: bool = False

    def build(self) -> Constraint:
        a = self.args
        made: Constraint
        if self.kind in ("box", "box_t"):
            made = Box(a["lo"], a["hi"])
        elif self.kind == "nonneg":
            made = NonNeg()
        elif self.kind == "linf":
            made = LinfBall(a["r"])
        elif self.kind == "maxnorm":
            made = MaxNorm(a["r"], dim=0)
        elif self.kind == "l2ball":
            made = L2Ball(a["r"])
        else:
            made = L1Ball(a["r"])
        return made

    @property
    def cls(self) -> type:
        return type(self.build())

    def solid(self) -> bool:
        """Whether the set contains every point with smaller magnitudes, same signs.

        Projections onto such sets only shrink magnitudes, so stacked ones keep
        each other's sets and a second pass changes nothing.
        """
        if self.kind in ("box", "box_t"):
            lo = torch.as_tensor(self.args["lo"], dtype=torch.float64)
            hi = torch.as_tensor(self.args["hi"], dtype=torch.float64)
            return bool((lo <= 0).all() and (hi >= 0).all())
        return True

    def feasible(self, x: Tensor) -> bool:
        """Whether ``x`` lies in the set, by the test's own arithmetic in float64."""
        x = x.detach().double()
        a = self.args
        if self.kind in ("box", "box_t"):
            lo = torch.as_tensor(a["lo"], dtype=torch.float64)
            hi = torch.as_tensor(a["hi"], dtype=torch.float64)
            return bool(((lo <= x) & (x <= hi)).all())
        if self.kind == "nonneg":
            return bool((x >= 0).all())
        if self.kind == "linf":
            return bool((x.abs() <= a["r"]).all())
        limit = a["r"] * (1 + NORM_SLACK)
        if self.kind == "maxnorm":
            norms = x.abs() if x.ndim == 1 else x.norm(dim=tuple(range(1, x.ndim)))
            return bool((norms <= limit).all())
        if self.kind == "l2ball":
            return bool(x.norm() <= limit)
        return bool(x.abs().sum() <= a["r"] * (1 + NORM_SLACK * x.numel()))


class _Through(torch.autograd.Function):
    """The test's straight-through: the value of ``y``, the gradient of the identity."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor) -> Tensor:
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def apply_chain(refs: list[Ref], x: Tensor) -> Tensor:
    """The forward value of ``refs`` on ``x``, computed afresh with the test's objects."""
    for ref in refs:
        c = ref.build()
        c.bind(x)
        x = _Through.apply(x, c.project(x.detach())) if ref.straight_through else c.project(x)
    return x


@torch.no_grad()
def project_chain(refs: list[Ref], x: Tensor) -> Tensor:
    """What a projection writes: each constraint's projection, in order."""
    for ref in refs:
        c = ref.build()
        c.bind(x)
        x = c.project(x)
    return x.clone()


def inward32(value: float, *, lower: bool) -> float:
    """``value`` rounded to float32 toward the inside of a box."""
    v = torch.tensor(value, dtype=torch.float64)
    r = v.float()
    if lower and r.double() < v:
        r = torch.nextafter(r, torch.tensor(math.inf))
    if not lower and r.double() > v:
        r = torch.nextafter(r, torch.tensor(-math.inf))
    return float(r)


# ------------------------------------------------------------------ strategies
EDGES = st.sampled_from([-1.0, -0.25, 0.0, 0.0625])
LOWS = st.one_of(EDGES, st.floats(-1.0, 0.5))
WIDTHS = st.one_of(st.sampled_from([0.0, 0.125, 1.5]), st.floats(0.01, 1.5))
RADII = st.one_of(st.sampled_from([0.25, 0.5, 1.0]), st.floats(0.05, 2.0))
KINDS = ("box", "box_t", "nonneg", "linf", "maxnorm", "l2ball", "l1ball")
SEEDS = st.integers(0, 2**31 - 1)
CONSTRAIN_ARGS = {
    "slot": st.sampled_from(SLOTS),
    "kind": st.sampled_from(KINDS),
    "record": st.booleans(),
    "through": st.sampled_from([False, False, False, True]),
    "lo": LOWS,
    "width": WIDTHS,
    "r": RADII,
}
OPTIMIZERS = ("sgd", "sgd_momentum", "adam", "adam_loop", "adam_fused")


def make_optimizer(kind: str, params: list[Tensor]) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.1)
    if kind == "sgd_momentum":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, foreach=True)
    if kind == "adam":
        return torch.optim.Adam(params, lr=0.05)
    if kind == "adam_loop":
        return torch.optim.Adam(params, lr=0.05, foreach=False)
    return torch.optim.Adam(params, lr=0.05, fused=True)


def storage(t: Tensor) -> int:
    return int(t.untyped_storage().data_ptr())


# ------------------------------------------------------------------ the machine
class Guarantees(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = Net()
        self.mode: dict[str, str | None] = dict.fromkeys(SLOTS)
        self.refs: dict[str, list[Ref]] = {s: [] for s in SLOTS}
        self.shadow = {t: self.raw(t).detach().clone() for t in TENSORS}
        self.objects = {t: self.raw(t) for t in TENSORS}
        self.packed: PackedProjection | None = None
        self.covered: set[str] = set()  # slots the live pack must project
        self.stale = False  # the pack was unpacked: its next call packs what is constrained
        self.sharing_allowed = False
        self.opts: dict[str, torch.optim.Optimizer] = {}
        self.saved: tuple[bytes, dict[str, Tensor]] | None = None
        self.templates: dict[tuple[Any, ...], Constraint] = {}
        self.gen = torch.Generator().manual_seed(1)

    # -------------------------------------------------------------- helpers
    def owner(self, slot: str, model: nn.Module | None = None) -> tuple[nn.Module, str]:
        prefix, _, name = slot.rpartition(".")
        return (model or self.model).get_submodule(prefix), name

    def raw(self, slot: str, model: nn.Module | None = None) -> Tensor:
        owner, name = self.owner(slot, model)
        if parametrize.is_parametrized(owner, name):
            return owner.parametrizations[name].original  # type: ignore[no-any-return]
        return owner._parameters[name]  # type: ignore[return-value]

    def constrained(self) -> list[str]:
        return [s for s in SLOTS if self.mode[s] is not None]

    def library_constraints(self, model: nn.Module | None = None) -> dict[str, list[Constraint]]:
        model = model or self.model
        found: dict[str, list[Constraint]] = defaultdict(list)
        if any(self.mode[slot] == "param" for slot in TIE):
            # Parametrized through one owner, the tied tensor is read raw by the other:
            # an entry point that sees both names says so, and lists nothing.
            with pytest.raises(ValueError, match="tied weights"):
                named_constraints(model)
            for prefix in ("a", "b", "c"):
                for name, c in named_constraints(getattr(model, prefix)):
                    found[f"{prefix}.{name}"].append(c)
            return found
        for name, c in named_constraints(model):
            found[name].append(c)
        return found

    def storages(self) -> dict[str, tuple[int, int]]:
        return {t: (storage(self.raw(t)), self.raw(t).data_ptr()) for t in TENSORS}

    def assert_storages_kept(self, before: dict[str, tuple[int, int]], *, skip: set[str]) -> None:
        after = self.storages()
        for t in TENSORS:
            if t not in skip:
                assert after[t] == before[t], f"{t}: a library call changed its storage"

    def expect_projected(self, slots: list[str]) -> None:
        for slot in slots:
            self.shadow[canon(slot)] = project_chain(self.refs[slot], self.shadow[canon(slot)])

    def assert_values(self) -> None:
        for t in TENSORS:
            assert torch.equal(self.raw(t).detach(), self.shadow[t]), f"{t} lost its value"

    def assert_feasible(self, slots: list[str]) -> None:
        for slot in slots:
            refs, value = self.refs[slot], self.raw(slot)
            checked = refs if all(r.solid() for r in refs) else refs[-1:]
            for ref in checked:
                assert ref.feasible(value), f"{slot} is outside {ref} after a projection"

    def after_projection(self, projected: list[str], also: Sequence[str] = ()) -> None:
        """Check the values a projection wrote, feasibility, and that a second one is a no-op.

        ``also``: slots the projection was seen to project, whose new values are
        already in the shadow.
        """
        self.expect_projected(projected)
        self.assert_values()
        self.assert_feasible(projected)
        solid = {canon(s) for s in [*projected, *also] if all(r.solid() for r in self.refs[s])}
        first = {t: self.raw(t).detach().clone() for t in TENSORS}
        before = self.storages()
        hard_project(self.model)
        self.assert_storages_kept(before, skip=set())
        self.expect_projected(self.constrained())
        self.assert_values()
        self.assert_feasible(self.constrained())
        for t in solid:
            assert torch.equal(self.raw(t).detach(), first[t]), f"a second projection moved {t}"

    def template(self, ref: Ref) -> Constraint:
        """A template shared by every slot constrained with the same arguments."""
        if ref.kind == "box_t":
            return ref.build()
        key = (ref.kind, tuple(sorted(ref.args.items())))
        return self.templates.setdefault(key, ref.build())

    def draw_ref(self, kind: str, lo: float, width: float, r: float, shape: torch.Size) -> Ref:
        if kind == "box":
            return Ref(kind, {"lo": lo, "hi": lo + width})
        if kind == "box_t":
            rows = (shape[0], 1) if len(shape) == 2 else (shape[0],)
            low = -torch.rand(rows, generator=self.gen, dtype=torch.float64)
            high = torch.rand(rows, generator=self.gen, dtype=torch.float64) * width
            return Ref(kind, {"lo": low, "hi": high})
        if kind == "nonneg":
            return Ref(kind)
        return Ref(kind, {"r": r})

    # -------------------------------------------------------------- registration
    @initialize(
        first=st.fixed_dictionaries(CONSTRAIN_ARGS),
        second=st.fixed_dictionaries(CONSTRAIN_ARGS),
        pack=st.booleans(),
    )
    def start(self, first: dict[str, Any], second: dict[str, Any], pack: bool) -> None:
        """Start with two constraints (at most), and maybe packed."""
        self.constrain_tensor(**first)
        self.constrain_tensor(**second)
        if pack:
            self.packing("call", inference=False)

    @rule(**CONSTRAIN_ARGS)
    def constrain_tensor(
        self, slot: str, kind: str, record: bool, through: bool, lo: float, width: float, r: float
    ) -> None:
        if slot in TIE and self.mode[TIE[slot]] is not None:
            return  # one owner of the tie carries constraints
        mode = "record" if record else "param"
        through = through and not record
        ref = self.draw_ref(kind, lo, width, r, self.shadow[canon(slot)].shape)
        ref.straight_through = through
        owner, name = self.owner(slot)
        current = self.mode[slot]
        refused = (current is not None and current != mode) or any(
            other.cls is ref.cls for other in self.refs[slot]
        )
        if kind == "box" and inward32(lo, lower=True) > inward32(lo + width, lower=False):
            refused = True  # no float32 value lies in the range
        if refused:
            state = {t: self.raw(t).detach().clone() for t in TENSORS}
            with pytest.raises(ValueError):
                constrain(
                    owner,
                    name,
                    self.template(ref),
                    straight_through=through,
                    parametrize=not record,
                )
            for t in TENSORS:  # nothing changed
                assert torch.equal(self.raw(t).detach(), state[t])
            return
        before = self.storages()
        # Constraining a packed tensor unpacks its pack: every tensor gets its own storage.
        released = canon(slot) in {canon(s) for s in self.covered}
        constrain(owner, name, self.template(ref), straight_through=through, parametrize=not record)
        if released:
            self.covered, self.stale, self.sharing_allowed = set(), True, False
        if mode == "record" or current is None:
            self.shadow[canon(slot)] = project_chain([ref], self.shadow[canon(slot)])
        else:  # stacked on a parametrization: each leading constraint projects in turn
            self.shadow[canon(slot)] = project_chain(
                [*self.refs[slot], ref], self.shadow[canon(slot)]
            )
        self.mode[slot] = mode
        self.refs[slot].append(ref)
        self.assert_storages_kept(before, skip=set(TENSORS) if released else set())
        assert self.raw(slot) is self.objects[canon(slot)]

    @rule(
        slot=st.sampled_from([*SLOTS, *SLOTS, None]),
        leave=st.booleans(),
    )
    def unconstrain_tensor(self, slot: str | None, leave: bool) -> None:
        slots = self.constrained() if slot is None else [slot]
        if slot is not None and self.mode[slot] is None:
            with pytest.raises(ValueError):
                unconstrain(self.model, slot)
            return
        before = self.storages()
        if slot is None:
            unconstrain(self.model, leave_constrained=leave)
        else:
            unconstrain(self.model, slot, leave_constrained=leave)
        if leave:
            self.expect_projected(slots)
        released = {s for s in slots if s in self.covered}
        for s in slots:
            self.mode[s] = None
            self.refs[s] = []
        if released:  # the pack gave every tensor its own storage
            self.covered, self.stale, self.sharing_allowed = set(), True, False
        skip = set()
        if self.packed is not None:
            skip = set(TENSORS)  # released tensors move out of the buffers
        self.assert_storages_kept(before, skip=skip)
        for s in slots:  # an unconstrained tensor owns its storage
            t = self.raw(s)
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size()

    @precondition(lambda self: any(m == "param" for m in self.mode.values()))
    @rule(seed=SEEDS, scale=st.sampled_from([0.5, 3.0]))
    def assign_weight(self, seed: int, scale: float) -> None:
        """``module.weight = W`` on a parametrized tensor stores W through the constraints."""
        slot = next(s for s in SLOTS if self.mode[s] == "param")
        owner, name = self.owner(slot)
        g = torch.Generator().manual_seed(seed)
        value = torch.randn(self.shadow[canon(slot)].shape, generator=g) * scale
        setattr(owner, name, value)
        self.shadow[canon(slot)] = project_chain(list(reversed(self.refs[slot])), value)[...]
        # ParametrizationList.right_inverse applies the chain's right_inverses in reverse.

    # -------------------------------------------------------------- training
    @rule(seed=SEEDS, zero_grad=st.sampled_from([None, "to_none", "zero_"]))
    def forward_backward(self, seed: int, zero_grad: str | None) -> None:
        for t in TENSORS:
            p = self.raw(t)
            if zero_grad == "to_none":
                p.grad = None
            elif zero_grad == "zero_" and p.grad is not None:
                p.grad.zero_()
        g = torch.Generator().manual_seed(seed)
        x, up = torch.randn(5, 3, generator=g), torch.randn(5, 4, generator=g)
        before = {
            t: None if self.raw(t).grad is None else self.raw(t).grad.clone() for t in TENSORS
        }
        storages = self.storages()
        y = self.model(x)
        (y * up).sum().backward()
        leaves = {t: self.shadow[t].clone().requires_grad_() for t in TENSORS}

        def eff(slot: str) -> Tensor:
            value = leaves[canon(slot)]
            return apply_chain(self.refs[slot], value) if self.mode[slot] == "param" else value

        h = torch.relu(F.linear(x, eff("a.weight"), eff("a.bias")))
        h = torch.relu(F.linear(h, eff("b.weight"), eff("b.bias")))
        y_ref = F.linear(h, eff("c.weight"))
        assert torch.equal(y.detach(), y_ref.detach()), "the forward pass differs from afresh"
        grads = torch.autograd.grad((y_ref * up).sum(), [leaves[t] for t in TENSORS])
        for t, grad in zip(TENSORS, grads, strict=True):
            old = before[t]
            expected = grad if old is None else old + grad
            assert torch.equal(self.raw(t).grad, expected), f"the gradient of {t} differs"
        self.assert_storages_kept(storages, skip=set())

    @precondition(lambda self: any(self.raw(t).grad is not None for t in TENSORS))
    @rule(kind=st.sampled_from(OPTIMIZERS))
    def optimizer_step(self, kind: str) -> None:
        if kind not in self.opts:
            self.opts[kind] = make_optimizer(kind, list(self.model.parameters()))
        opt = self.opts[kind]
        params = [p for group in opt.param_groups for p in group["params"]]
        clones = [p.detach().clone().requires_grad_() for p in params]
        for p, c in zip(params, clones, strict=True):
            c.grad = None if p.grad is None else p.grad.clone()
        reference = make_optimizer(kind, clones)
        reference.load_state_dict(copy.deepcopy(opt.state_dict()))
        before = self.storages()
        opt.step()
        reference.step()
        self.assert_storages_kept(before, skip=set())
        by_id = {id(p): t for t, p in self.objects.items()}
        for p, c in zip(params, clones, strict=True):
            assert torch.equal(p.detach(), c.detach()), (
                "the optimizer did not update the raw tensor"
            )
            self.shadow[by_id[id(p)]] = c.detach().clone()

    # -------------------------------------------------------------- projections
    @rule(foreach=st.sampled_from([None, True, False]), inference=st.booleans())
    def project(self, foreach: bool | None, inference: bool) -> None:
        before = self.storages()
        with torch.inference_mode(inference):
            hard_project(self.model, foreach=foreach)
        self.assert_storages_kept(before, skip=set())
        self.after_projection(self.constrained())

    @rule(
        action=st.sampled_from(["call", "rebind_call", "repack", "unpack"]),
        inference=st.booleans(),
        seed=SEEDS,
    )
    def packing(self, action: str, inference: bool, seed: int = 0) -> None:
        """Make a PackedProjection (if there is none), call it, repack it, or unpack it.

        ``rebind_call`` first rebinds the ``.data`` of a packed tensor: the pack must
        notice that the tensor no longer views its slot.
        """
        if self.packed is None:
            with torch.inference_mode(inference):
                self.packed = PackedProjection(self.model)
            self.covered = set(self.constrained())
            self.sharing_allowed = True
            self.assert_values()  # packing copies the values
            return
        if action == "unpack":
            self.packed.unpack()
            self.packed, self.covered, self.sharing_allowed = None, set(), False
            self.assert_values()
            return
        if action == "repack":
            self.packed.repack()
            self.covered = set(self.constrained())
        repacks = self.stale
        if action == "rebind_call" and self.covered:
            self.write(canon(sorted(self.covered)[seed % len(self.covered)]), "rebind", seed)
            repacks = True  # the rebound tensor no longer views its slot
        with torch.inference_mode(inference):
            self.packed()
        if repacks:
            self.covered, self.stale = set(self.constrained()), False
        self.sharing_allowed = True
        repacked = []
        for slot in self.constrained():
            if slot in self.covered:
                continue
            # A tensor constrained since packing is projected only if the plan was
            # repacked: accept either, then require the rest.
            old = self.shadow[canon(slot)]
            if not torch.equal(self.raw(slot).detach(), old):
                self.shadow[canon(slot)] = project_chain(self.refs[slot], old)
                repacked.append(slot)
        self.after_projection(sorted(self.covered), also=repacked)

    # -------------------------------------------------------------- writes
    @rule(
        tensor=st.sampled_from(TENSORS),
        how=st.sampled_from(["normal", "mul", "rebind"]),
        seed=SEEDS,
    )
    def write(self, tensor: str, how: str, seed: int) -> None:
        p = self.raw(tensor)
        shape = self.shadow[tensor].shape
        if how == "normal":
            p.data.normal_(generator=torch.Generator().manual_seed(seed))
            self.shadow[tensor] = torch.empty(shape).normal_(
                generator=torch.Generator().manual_seed(seed)
            )
        elif how == "mul":
            with torch.no_grad():
                p.mul_(3)
            self.shadow[tensor] = self.shadow[tensor] * 3
        else:  # twice, so that the allocator may hand out the first address again
            g = torch.Generator().manual_seed(seed)
            p.data = torch.randn(shape, generator=g)
            value = torch.randn(shape, generator=g) * 2
            p.data = value.clone()
            self.shadow[tensor] = value

    @precondition(lambda self: bool(self.constrained()))
    @rule(pick=st.integers(0, 100), lo=LOWS, width=st.floats(0.01, 1.5), r=RADII)
    def change_attribute(self, pick: int, lo: float, width: float, r: float) -> None:
        """Change a registered constraint (found with named_constraints) in place."""
        choices = [(s, i) for s in self.constrained() for i in range(len(self.refs[s]))]
        slot, index = choices[pick % len(choices)]
        ref = self.refs[slot][index]
        c = self.library_constraints()[slot][index]
        if ref.kind == "box":
            c.min, c.max = lo, lo + width
            new = {"lo": lo, "hi": lo + width}
        elif ref.kind in ("maxnorm",):
            c.max_value = r
            new = {"r": r}
        elif ref.kind in ("l2ball", "l1ball", "linf"):
            c.radius = r
            new = {"r": r}
        else:
            return  # NonNeg has nothing to change; tensor bounds stay
        self.refs[slot][index] = Ref(ref.kind, new, ref.straight_through)

    # -------------------------------------------------------------- checkpoints and copies
    @rule(load=st.booleans())
    def checkpoint(self, load: bool) -> None:
        """Save ``state_dict()`` with torch.save, or load the last one saved."""
        if load and self.saved is not None:
            self.load()
        else:
            self.save()

    def save(self) -> None:
        state = self.model.state_dict()
        shared: dict[int, set[str]] = defaultdict(set)
        for key, value in state.items():
            shared[storage(value)].add(self.tensor_of_key(key) or key)
        assert all(len(tensors) == 1 for tensors in shared.values()), (
            "state_dict values share a storage (a serializer would drop some)"
        )
        buffer = io.BytesIO()
        torch.save(state, buffer)
        loaded = torch.load(io.BytesIO(buffer.getvalue()))
        assert set(loaded) == set(state)
        for key, value in loaded.items():
            t = self.tensor_of_key(key)
            if t is not None:
                assert torch.equal(value, self.shadow[t]), f"the checkpoint lost {key}"
        self.saved = (buffer.getvalue(), {k: v.clone() for k, v in loaded.items()})

    def tensor_of_key(self, key: str) -> str | None:
        """The tensor a ``state_dict`` key stores, or None for a constraint's own state."""
        parts = key.split(".")
        if "parametrizations" in parts:
            at = parts.index("parametrizations")
            if parts[at + 2 :] != ["original"]:
                return None
            parts = [*parts[:at], parts[at + 1]]
        return canon(".".join(parts))

    def loadable(self, saved: set[str]) -> bool:
        current = set(self.model.state_dict())
        for key in current - saved:
            parts = key.split(".")
            if "parametrizations" not in parts:
                return False
            at = parts.index("parametrizations")
            if ".".join([*parts[:at], parts[at + 1]]) not in saved:
                return False
        for key in saved - current:
            prefix, _, name = key.rpartition(".")
            if f"{prefix}.parametrizations.{name}.original" not in current:
                return False
        return True

    def load(self) -> None:
        assert self.saved is not None
        data, values = self.saved
        if not self.loadable(set(values)):
            return
        before = self.storages()
        self.model.load_state_dict(torch.load(io.BytesIO(data)))
        self.assert_storages_kept(before, skip=set())
        for slot in SLOTS:  # in load order: the last key of a tied tensor wins
            owner_prefix, _, name = slot.rpartition(".")
            raw_key = f"{owner_prefix}.parametrizations.{name}.original"
            if raw_key in values:
                self.shadow[canon(slot)] = values[raw_key].clone()
            elif self.mode[slot] == "param":  # a plain entry, stored through the constraints
                refs = list(reversed(self.refs[slot]))
                self.shadow[canon(slot)] = project_chain(refs, values[slot])
            else:
                self.shadow[canon(slot)] = values[slot].clone()
            for index, ref in enumerate(self.refs[slot]):
                lo_key = f"{owner_prefix}.parametrizations.{name}.{index}.min"
                if ref.kind == "box_t" and lo_key in values:
                    hi_key = lo_key[: -len("min")] + "max"
                    bounds = {"lo": values[lo_key].double(), "hi": values[hi_key].double()}
                    self.refs[slot][index] = Ref("box_t", bounds, ref.straight_through)

    @rule(how=st.sampled_from(["deepcopy", "pickle"]), keep_copy=st.booleans())
    def copy_model(self, how: str, keep_copy: bool) -> None:
        if how == "deepcopy":
            twin = copy.deepcopy(self.model)
        else:
            buffer = io.BytesIO()
            torch.save(self.model, buffer)
            twin = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
        # The copy is the same constrained model, with storages and constraints of its own.
        ours = {storage(p) for p in self.model.parameters()}
        for t in TENSORS:
            assert torch.equal(self.raw(t, twin).detach(), self.shadow[t])
            assert storage(self.raw(t, twin)) not in ours, f"the copy shares {t}'s storage"
        assert self.raw("b.weight", twin) is self.raw("c.weight", twin), "the copy lost the tie"
        mine, theirs = self.library_constraints(), self.library_constraints(twin)
        assert list(mine) == list(theirs)
        for slot, cs in mine.items():
            for c, d in zip(cs, theirs[slot], strict=True):
                assert c is not d and repr(c) == repr(d)
        if how == "pickle" and self.packed is not None:
            keep_copy = False  # the copy's tensors share a storage with no pack behind it
        if keep_copy:
            self.model, twin = twin, self.model
            self.objects = {t: self.raw(t) for t in TENSORS}
            self.opts, self.packed, self.covered, self.sharing_allowed = {}, None, set(), False
        # Wreck the other one: the kept model must not notice.
        for t in TENSORS:
            self.raw(t, twin).data.fill_(7.0)
        for cs in self.library_constraints(twin).values():
            for c in cs:
                for attribute in ("max_value", "radius"):
                    if hasattr(c, attribute):
                        setattr(c, attribute, 0.0)
                if isinstance(c, Box) and not isinstance(c.min, Tensor):
                    c.min, c.max = 0.0, 0.0
        hard_project(twin)

    # -------------------------------------------------------------- invariants
    @invariant()
    def objects_and_tie_kept(self) -> None:
        for t in TENSORS:
            assert self.raw(t) is self.objects[t], f"{t} is another Parameter object now"
            assert not self.raw(t).is_inference(), f"{t} is an inference tensor"
        assert self.raw("c.weight") is self.raw("b.weight"), "the tie is broken"
        for opt in self.opts.values():
            params = [p for group in opt.param_groups for p in group["params"]]
            assert {id(p) for p in params} == {id(p) for p in self.objects.values()}

    @invariant()
    def constraints_are_the_registered_ones(self) -> None:
        found = self.library_constraints()
        assert set(found) == set(self.constrained())
        for slot in self.constrained():
            owner, name = self.owner(slot)
            assert parametrize.is_parametrized(owner, name) == (self.mode[slot] == "param")
            assert [type(c) for c in found[slot]] == [r.cls for r in self.refs[slot]]

    @invariant()
    def values_kept(self) -> None:
        self.assert_values()

    @invariant()
    def forward_is_computed_afresh(self) -> None:
        for slot in SLOTS:
            owner, name = self.owner(slot)
            raw = self.raw(slot)
            if self.mode[slot] != "param":
                assert getattr(owner, name) is raw
                continue
            value = getattr(owner, name)
            fresh = raw.detach().clone().requires_grad_()
            expected = apply_chain(self.refs[slot], fresh)
            assert torch.equal(value, expected), f"{slot}: the forward value is not afresh"
            refs = self.refs[slot]
            for ref in refs if all(r.solid() for r in refs) else refs[-1:]:
                assert ref.feasible(value), f"{slot}: the forward value is outside {ref}"
            up = torch.randn(value.shape, generator=self.gen)
            (grad,) = torch.autograd.grad(value, raw, up)
            (grad_expected,) = torch.autograd.grad(expected, fresh, up)
            assert torch.equal(grad, grad_expected), f"{slot}: the gradient is not afresh"

    @invariant()
    def no_shared_storage(self) -> None:
        by_storage: dict[int, list[str]] = defaultdict(list)
        for t in TENSORS:
            by_storage[storage(self.raw(t))].append(t)
        constrained = {canon(s) for s in self.constrained()}
        for tensors in by_storage.values():
            if len(tensors) > 1:
                assert self.sharing_allowed, f"{tensors} share a storage with no pack"
                assert set(tensors) <= constrained, f"{tensors}: unconstrained tensors packed"


Guarantees.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestGuarantees = Guarantees.TestCase
