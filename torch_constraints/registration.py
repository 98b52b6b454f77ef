"""Attach constraints to tensors, find them, and take them off again.

Two modes, chosen per call with ``parametrize``:

* ``parametrize=True`` (the default) registers the constraint with
  :func:`torch.nn.utils.parametrize.register_parametrization`, so everything
  PyTorch knows about parametrizations holds: ``module.weight`` is recomputed on
  access, the raw tensor lives in ``module.parametrizations.weight.original`` (the
  same Parameter object as before, so existing optimizers keep working), and
  :func:`torch.nn.utils.parametrize.remove_parametrizations` removes them.
* ``parametrize=False`` records the constraint on the module (see ``_records``)
  and leaves the module as it is: the raw tensor is projected once at
  registration and then by :func:`~torch_constraints.hard_project`, after each
  optimizer step, as Keras applies ``kernel_constraint``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrize import ParametrizationList

from . import _classes, _plans, _records, _state_hooks, _tied, packing, registry
from .base import Constraint
from .box import Box
from .functional import Bound

__all__ = ["constrain", "constrain_all", "named_constraints", "unconstrain"]

M = TypeVar("M", bound=nn.Module)

#: What ``include`` of :func:`constrain_all` accepts.
Include = (
    type[nn.Module]
    | tuple[type[nn.Module], ...]
    | str
    | Collection[str]
    | Callable[[str, nn.Module, str], bool]
    | None
)


def constrain(
    module: M,
    name: str,
    min: Bound | Constraint | str = None,
    max: Bound = None,
    *,
    straight_through: bool = False,
    parametrize: bool = True,
) -> M:
    """Constrain the tensor ``module.<name>``: in the forward pass, or after each step.

    ``constrain(layer, "weight", -1, 1)`` registers a :class:`~torch_constraints.Box`;
    any other constraint is passed in place of ``min``:
    ``constrain(layer, "weight", MaxNorm(3.0))``. The raw tensor is projected once
    at registration, in place: the Parameter object and its storage are kept, so an
    optimizer built earlier still updates it.

    With ``parametrize=True`` (the default) the constraint is a parametrization:
    every forward pass sees ``constraint.project(raw)``, computed afresh, and
    assigning ``module.weight = W`` stores the projection of ``W``. With
    ``parametrize=False`` the module is left exactly as it is (class, parameter
    names, ``state_dict`` keys, forward pass): the constraint is only recorded, and
    :func:`~torch_constraints.hard_project` (or
    :func:`~torch_constraints.project_after_step`) applies it after each step. The
    concepts page compares the two modes.

    The constraint object is copied, so one object can configure many tensors;
    :func:`named_constraints` returns the registered copies, and changing an
    attribute of one (``c.max = 0.05``) takes effect for that tensor at the next
    forward pass and the next projection. A second constraint of a different class
    on the same tensor stacks after the first; one of the same class is an error:
    :func:`unconstrain` first to replace it. On a tensor that already carries
    another library's parametrization, the constraint applies to that
    parametrization's output in the forward pass; ``hard_project`` leaves it alone.

    Args:
        module: the module owning the tensor (any module type).
        name: a parameter or buffer name of ``module`` (``"weight"``), or a dotted
            path from ``module`` (``"encoder.fc.weight"``).
        min: lower bound (number or broadcastable tensor), or a
            :class:`~torch_constraints.Constraint`, or a constraint's name such as
            ``"non_neg"`` (see :func:`~torch_constraints.get`). Default: ``None``.
        max: upper bound (number or broadcastable tensor). Default: ``None``.
        straight_through: keep the constrained value in the forward pass but let the
            gradient through unchanged, so raw values outside the set are not
            frozen at zero gradient (``parametrize=True`` only). Default: ``False``.
        parametrize: register a parametrization (``True``) or only record the
            constraint for ``hard_project`` (``False``). Default: ``True``.

    Returns:
        ``module``, for chaining.

    Raises:
        TypeError: for a non-floating-point or sparse tensor, or arguments of the
            wrong type.
        ValueError: for a missing tensor, invalid bounds, a constraint that cannot
            apply to the tensor, or a tensor already constrained by a constraint of
            the same class. Nothing is changed.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_constraints import constrain
        >>> layer = constrain(nn.Linear(4, 2), "weight", -0.5, 0.5)
        >>> bool(layer.weight.abs().max() <= 0.5)
        True
        >>> plain = constrain(nn.Linear(4, 2), "weight", -0.5, 0.5, parametrize=False)
        >>> type(plain).__name__, bool(plain.weight.abs().max() <= 0.5)
        ('Linear', True)
    """
    _require_module(module, "constrain")
    _require_bool(straight_through, "straight_through")
    _require_bool(parametrize, "parametrize")
    owner, tensor_name = _resolve(module, name)
    where = _describe(owner, tensor_name)
    template = _as_constraint(min, max, where)
    aliases = _tied.Aliases(module)
    constraint = _prepare(
        template, owner, tensor_name, where, straight_through, parametrize, aliases
    )
    _register(owner, tensor_name, constraint, parametrize)
    if parametrize:
        _state_hooks.attach_root(module)  # checks a whole checkpoint before the first copy
    return module


def constrain_all(
    module: M,
    min: Bound | Constraint | str = None,
    max: Bound = None,
    *,
    include: Include = None,
    straight_through: bool = False,
    parametrize: bool = True,
) -> list[str]:
    """Constrain many parameters of a module tree at once; return their qualified names.

    Without ``include``, every floating-point parameter in the tree is constrained
    (a WGAN critic clips all of its parameters). ``include`` narrows the selection:

    * module classes, ``(nn.Linear, nn.Conv2d)``: parameters owned by such modules
      (the way to say "every linear and convolution weight and bias");
    * tensor names, ``{"weight"}``: parameters with that name (or that qualified
      name). Note that normalisation layers call their scales ``weight`` too;
    * a predicate ``(qualified_name, module, tensor_name) -> bool``.

    Only floating-point parameters are considered. The call is atomic: every
    target is checked, and the constraint tried on its current value, before the
    first one is constrained; when one fails, nothing is changed and the error
    names it. Each tensor gets its own copy of the constraint.

    Args:
        module: the root of the module tree.
        min: lower bound, a :class:`~torch_constraints.Constraint`, or a constraint's
            name. Default: ``None``.
        max: upper bound. Default: ``None``.
        include: which parameters to constrain, as above. Default: all.
        straight_through: as in :func:`constrain`. Default: ``False``.
        parametrize: as in :func:`constrain`. Default: ``True``.

    Returns:
        The qualified names of the constrained tensors, such as ``["0.weight", "0.bias"]``.

    Raises:
        TypeError: for a ``module`` or ``include`` of the wrong type.
        ValueError: when nothing matches, or when any target is invalid.

    Example:
        >>> from torch import nn
        >>> from torch_constraints import constrain_all
        >>> critic = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> constrain_all(critic, -0.01, 0.01)
        ['0.weight', '0.bias', '2.weight', '2.bias']
        >>> constrain_all(nn.Sequential(nn.Linear(2, 2)), max=1.0, include={"weight"})
        ['0.weight']
    """
    _require_module(module, "constrain_all")
    _require_bool(straight_through, "straight_through")
    _require_bool(parametrize, "parametrize")
    template = _as_constraint(min, max, type_name(module))
    select = _selector(include)
    aliases = _tied.Aliases(module)
    prepared: list[tuple[str, nn.Module, str, Constraint]] = []
    for qualname, owner, tensor_name in _parameter_slots(module):
        if not select(qualname, owner, tensor_name):
            continue
        where = f"{qualname} ({type_name(owner)})"
        constraint = _prepare(
            template, owner, tensor_name, where, straight_through, parametrize, aliases
        )
        prepared.append((qualname, owner, tensor_name, constraint))
    if not prepared:
        raise ValueError(
            f"constrain_all: no floating-point parameter of {type_name(module)} matches "
            f"include={include!r}"
        )
    for _, owner, tensor_name, constraint in prepared:
        _register(owner, tensor_name, constraint, parametrize)
    if parametrize:
        _state_hooks.attach_root(module)  # checks a whole checkpoint before the first copy
    return [qualname for qualname, *_ in prepared]


def unconstrain(module: M, name: str | None = None, *, leave_constrained: bool = True) -> M:
    """Remove this library's constraints from one tensor, or from the whole tree.

    Other parametrizations on the same tensors stay in place. The Parameter object
    is kept in every case.

    Args:
        module: the module owning the tensor, or the root of the tree.
        name: the tensor (a name or dotted path), or ``None`` for every constrained
            tensor in the tree. Default: ``None``.
        leave_constrained: keep the values the constraints give (``True``), or the
            raw stored values (``False``), as ``leave_parametrized`` does in
            :func:`torch.nn.utils.parametrize.remove_parametrizations`. Default: ``True``.

    Returns:
        ``module``.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.
        ValueError: if ``name`` is not constrained by this library, or if
            ``leave_constrained=True`` needs another parametrization's
            ``right_inverse`` and it has none. Nothing is changed.

    Example:
        >>> from torch import nn
        >>> from torch_constraints import constrain, unconstrain
        >>> layer = constrain(nn.Linear(2, 2), "weight", -0.1, 0.1)
        >>> type(unconstrain(layer, "weight")).__name__
        'Linear'
    """
    _require_module(module, "unconstrain")
    _require_bool(leave_constrained, "leave_constrained")
    if name is None:
        for slot in list(constrained_slots(module)):
            _remove(slot, leave_constrained)
        _state_hooks.detach(module)
        return module
    owner, tensor_name = _resolve(module, name)
    found = _slot(owner, tensor_name)
    if found is None:
        raise ValueError(f"{_describe(owner, tensor_name)} is not constrained by torch_constraints")
    _remove(found, leave_constrained)
    _state_hooks.detach(module)
    return module


def named_constraints(module: nn.Module) -> Iterator[tuple[str, Constraint]]:
    """Yield ``(qualified_tensor_name, constraint)`` for every constraint in the tree.

    Both modes are included; stacked constraints on one tensor come in
    registration order. The constraints are the registered objects: changing an
    attribute changes what the forward pass and ``hard_project`` do.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.

    Example:
        >>> from torch import nn
        >>> from torch_constraints import constrain_all, named_constraints
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> _ = constrain_all(model, 0, 1, include={"weight"})
        >>> list(named_constraints(model))
        [('0.weight', Box(min=0.0, max=1.0))]
    """
    _require_module(module, "named_constraints")
    return _named_constraints(module)


def _named_constraints(module: nn.Module) -> Iterator[tuple[str, Constraint]]:
    for slot in constrained_slots(module):
        for constraint in slot.constraints():
            yield slot.qualname, constraint


# ---------------------------------------------------------------------- the tree
@dataclass(frozen=True)
class Slot:
    """A tensor that carries at least one of this library's constraints.

    ``parametrized`` tells the mode: a parametrization chain
    (``module.parametrizations[tensor_name]``), or constraints recorded on the
    module (``parametrize=False``).
    """

    qualname: str
    module: nn.Module
    tensor_name: str
    parametrized: bool

    @property
    def chain(self) -> ParametrizationList:
        return chain_of(self.module, self.tensor_name)

    def constraints(self) -> list[Constraint]:
        """This library's constraints on the tensor, in registration order."""
        if self.parametrized:
            return our_constraints(self.module, self.tensor_name)
        return list(_records.constraints(self.module, self.tensor_name))

    def raw(self) -> Tensor | None:
        """The stored tensor ``hard_project`` writes, or ``None`` if there is none."""
        if not self.parametrized:
            return _records.tensor(self.module, self.tensor_name)
        chain = self.chain
        return chain.original if chain.is_tensor else None

    def leading_constraints(self) -> list[Constraint]:
        """The constraints applied directly to the raw tensor, in order (what hard_project uses)."""
        if not self.parametrized:
            return self.constraints()
        chain = self.chain
        leading: list[Constraint] = []
        if not chain.is_tensor:
            return leading
        for entry in chain:
            if not isinstance(entry, Constraint):
                break
            leading.append(entry)
        return leading


def constrained_slots(module: nn.Module) -> Iterator[Slot]:
    """Yield every tensor in the tree that carries one of this library's constraints."""
    for prefix, owner in _named_modules(module):
        for tensor_name in _records.names(owner):
            yield Slot(_join(prefix, tensor_name), owner, tensor_name, parametrized=False)
        if not parametrize.is_parametrized(owner):
            continue
        for tensor_name in _parametrizations(owner):
            if any(isinstance(entry, Constraint) for entry in chain_of(owner, tensor_name)):
                yield Slot(_join(prefix, tensor_name), owner, tensor_name, parametrized=True)


def _slot(module: nn.Module, tensor_name: str) -> Slot | None:
    if _records.constraints(module, tensor_name):
        return Slot(tensor_name, module, tensor_name, parametrized=False)
    if our_constraints(module, tensor_name):
        return Slot(tensor_name, module, tensor_name, parametrized=True)
    return None


def our_constraints(module: nn.Module, tensor_name: str) -> list[Constraint]:
    """This library's constraints in the parametrization of ``module.<tensor_name>``, in order."""
    if not parametrize.is_parametrized(module, tensor_name):
        return []
    return [entry for entry in chain_of(module, tensor_name) if isinstance(entry, Constraint)]


def chain_of(module: nn.Module, tensor_name: str) -> ParametrizationList:
    """``module.parametrizations[tensor_name]``, typed."""
    return cast(ParametrizationList, _parametrizations(module)[tensor_name])


def _parametrizations(module: nn.Module) -> nn.ModuleDict:
    return cast(nn.ModuleDict, module.parametrizations)


def _named_modules(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    # Parametrization internals (the lists holding `original`, the constraints
    # themselves) are not part of the user's model.
    for prefix, owner in module.named_modules():
        if not _is_internal(owner):
            yield prefix, owner


def _is_internal(module: nn.Module) -> bool:
    return isinstance(module, (ParametrizationList, Constraint))


def _parameter_slots(module: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """Yield ``(qualified_name, owner, tensor_name)`` for floating-point parameters."""
    for prefix, owner in _named_modules(module):
        names = [n for n, p in owner._parameters.items() if p is not None]
        if parametrize.is_parametrized(owner):
            for tensor_name in _parametrizations(owner):
                chain = chain_of(owner, tensor_name)
                if any(isinstance(t, nn.Parameter) for t in chain.parameters(recurse=False)):
                    names.append(tensor_name)
        for tensor_name in names:
            if _raw_tensor(owner, tensor_name).is_floating_point():
                yield _join(prefix, tensor_name), owner, tensor_name


# ---------------------------------------------------------------------- registering
def _as_constraint(min: Bound | Constraint | str, max: Bound, where: str) -> Constraint:
    if isinstance(min, (Constraint, str)):
        if max is not None:
            raise TypeError(
                f"{where}: pass either a constraint or bounds, got {min!r} and max={max!r}"
            )
        try:
            return registry.get(min)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{where}: {error}") from None
    try:
        return Box(min, max)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}: {error}") from None


def _prepare(
    template: Constraint,
    module: nn.Module,
    tensor_name: str,
    where: str,
    straight_through: bool,
    parametrized: bool,
    aliases: _tied.Aliases,
) -> Constraint:
    """Check ``template`` against the tensor and return a bound copy; changes nothing.

    The copy is tried on the tensor's current value, as registration will apply it,
    so that a constraint that cannot apply (a shape it does not accept, an error in
    a custom ``project``) fails here, naming the tensor, before anything changes.
    """
    if not isinstance(template, Constraint):
        raise TypeError(f"{where}: expected a Constraint, got {type(template).__name__}")
    straight_through = straight_through or template.straight_through
    recorded = _records.constraints(module, tensor_name)
    if parametrized and recorded:
        raise ValueError(
            f"{where} is already constrained with parametrize=False by {recorded[0]!r}; "
            "constrain it in the same mode, or unconstrain it first"
        )
    if not parametrized:
        if straight_through:
            raise ValueError(
                f"{where}: straight_through=True changes the forward pass's gradient, and "
                "with parametrize=False the forward pass is not changed; use one or the other"
            )
        if parametrize.is_parametrized(module, tensor_name):
            raise ValueError(
                f"{where} is parametrized already; parametrize=False records constraints on "
                "plain tensors only: unconstrain it (or remove its parametrizations) first, "
                "or use parametrize=True"
            )
    existing = recorded if not parametrized else tuple(our_constraints(module, tensor_name))
    for other in existing:
        if type(other) is type(template):
            raise ValueError(
                f"{where} is already constrained by {other!r}; call "
                f"unconstrain(module, {tensor_name!r}) first to replace it"
            )
    raw = _raw_tensor(module, tensor_name)
    _check_tied(template, raw, module, tensor_name, where, parametrized, aliases)
    template.check(raw, where)
    constraint = copy.deepcopy(template)
    constraint.straight_through = straight_through
    constraint.bind(raw)
    _try_on_current_value(constraint, module, tensor_name, where)
    return constraint


def _check_tied(
    template: Constraint,
    raw: Tensor,
    module: nn.Module,
    tensor_name: str,
    where: str,
    parametrized: bool,
    aliases: _tied.Aliases,
) -> None:
    """Refuse what tied weights cannot take (see ``_tied``); changes nothing."""
    others = aliases.others(raw, module, tensor_name)
    if not others:
        return
    names = ", ".join(repr(qualname) for qualname, _, _ in others)
    if parametrized:
        raise ValueError(
            f"{where} is one Parameter with {names} (tied weights): a parametrization "
            "would constrain this name only, and the others would read the raw tensor. "
            "Use parametrize=False, which constrains the tensor itself, for every name"
        )
    for qualname, owner, name in others:
        if our_constraints(owner, name):
            raise ValueError(
                f"{where} is one Parameter with {qualname!r}, which carries a "
                "parametrization; unconstrain it first, then constrain the tensor once "
                "with parametrize=False"
            )
        recorded = _records.constraints(owner, name)
        if recorded and not any(_tied.same_constraint(c, template) for c in recorded):
            raise ValueError(
                f"{where} is one Parameter with {qualname!r}, already constrained by "
                f"{', '.join(map(repr, recorded))}; two names of one tensor cannot hold it "
                f"in different sets: constrain it under one name (add {template!r} there "
                "to stack it)"
            )


@torch.no_grad()
def _try_on_current_value(
    constraint: Constraint, module: nn.Module, tensor_name: str, where: str
) -> None:
    """Project the value the constraint will act on, and check what comes back."""
    value = (
        getattr(module, tensor_name)
        if parametrize.is_parametrized(module, tensor_name)
        else (_raw_tensor(module, tensor_name))
    )
    try:
        result = constraint.project(value.detach())
    except Exception as error:  # a custom project() may raise anything: name the tensor
        raise ValueError(f"{where}: {constraint!r} cannot be applied: {error}") from error
    if not isinstance(result, Tensor) or result.shape != value.shape or result.dtype != value.dtype:
        got = (
            f"shape {tuple(result.shape)} and dtype {result.dtype}"
            if isinstance(result, Tensor)
            else type(result).__name__
        )
        raise ValueError(
            f"{where}: {type(constraint).__name__}.project must return a tensor of the "
            f"input's shape {tuple(value.shape)} and dtype {value.dtype}, got {got}"
        )


def _register(
    module: nn.Module, tensor_name: str, constraint: Constraint, parametrized: bool
) -> None:
    _plans.changed()  # live packed projections re-check their plans
    if not parametrized:
        raw = _raw_tensor(module, tensor_name)
        with torch.no_grad():
            constraint.project_(raw)
        _records.add(module, tensor_name, constraint)
        return
    stacked = parametrize.is_parametrized(module, tensor_name)
    if not stacked:
        # In place, so that right_inverse finds the raw tensor feasible and returns it
        # as it is: PyTorch's set_ then keeps its storage (and every alias of it).
        raw = _raw_tensor(module, tensor_name)
        if raw.device.type != "meta":
            with torch.no_grad():
                raw.copy_(constraint.project(raw))
    parametrize.register_parametrization(module, tensor_name, constraint)
    _classes.share(module)  # one class per module type: compiles once, pickles
    _state_hooks.attach(module)  # loads plain checkpoints, records the format
    if stacked:
        # The first registration projected the raw value through right_inverse;
        # a stacked one must bring it into the new set too.
        slot = Slot("", module, tensor_name, parametrized=True)
        with torch.no_grad():
            for entry in slot.leading_constraints():
                entry.project_(slot.chain.original)


def _remove(slot: Slot, leave_constrained: bool) -> None:
    module, tensor_name = slot.module, slot.tensor_name
    _plans.changed()
    raw = slot.raw()
    if raw is not None:
        packing.release(raw)  # frees a PackedProjection's buffer rather than keeping it alive
    if not slot.parametrized:
        if leave_constrained and raw is not None:
            with torch.no_grad():
                for entry in _records.constraints(module, tensor_name):
                    entry.project_(raw)
        _records.remove(module, tensor_name)
        return
    chain = chain_of(module, tensor_name)
    positions = [i for i, entry in enumerate(chain) if isinstance(entry, Constraint)]
    if len(positions) == len(chain):
        if leave_constrained and chain.is_tensor and chain.original.device.type != "meta":
            # The forward value into the raw tensor in place, rather than PyTorch's
            # set_ (leave_parametrized=True), which would give it a new storage.
            with torch.no_grad():
                chain.original.copy_(getattr(module, tensor_name))
        parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=False)
        _after_removal(module)
        return
    leading = positions == list(range(len(positions)))
    removed = [(i, cast(Constraint, chain[i])) for i in positions]
    value = None
    if leave_constrained and not leading:
        with torch.no_grad():
            value = getattr(module, tensor_name)
    if leave_constrained and leading:
        # Keep the forward value by writing it into the raw tensor.
        with torch.no_grad():
            original = chain.original
            for _, entry in removed:
                original.copy_(entry.project(original))
    for i, _ in reversed(removed):
        del chain[i]
    if value is not None:
        try:
            setattr(module, tensor_name, value)
        except (NotImplementedError, RuntimeError) as error:
            for i, entry in removed:
                chain.insert(i, entry)
            raise ValueError(
                f"{_describe(module, tensor_name)}: cannot keep the constrained values, because "
                f"a remaining parametrization has no right_inverse ({error}); "
                "pass leave_constrained=False"
            ) from None
    _after_removal(module)


def _after_removal(module: nn.Module) -> None:
    if not parametrize.is_parametrized(module) or not any(
        our_constraints(module, name) for name in _parametrizations(module)
    ):
        _state_hooks.detach(module)
    _classes.share(module)  # the class of the names still parametrized


# ---------------------------------------------------------------------- helpers
def _require_module(module: object, function: str) -> None:
    """Refuse anything but an eager ``nn.Module``, naming ``function`` and what it got."""
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError(
            f"{function}: TorchScript modules cannot carry constraints; constrain the eager "
            "module, then script or export it"
        )
    if not isinstance(module, nn.Module):
        raise TypeError(f"{function}: expected an nn.Module, got {type(module).__name__}")


def _require_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _resolve(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    if not isinstance(name, str):
        raise TypeError(f"expected a tensor name (str), got {name!r}")
    parts = name.split(".")
    if "parametrizations" in parts[:-1]:
        at = parts.index("parametrizations")
        public = ".".join(parts[:at] + parts[at + 1 : at + 2])
        raise ValueError(
            f"{name!r} names the inside of a parametrization, not a tensor of the model; "
            f"constrain the tensor by its public name, {public!r}"
        )
    prefix, _, tensor_name = name.rpartition(".")
    try:
        owner = module.get_submodule(prefix) if prefix else module
    except AttributeError:
        raise ValueError(
            f"{type_name(module)} has no submodule {prefix!r} (from {name!r})"
        ) from None
    if _is_internal(owner):
        raise ValueError(
            f"{name!r} belongs to a {type(owner).__name__}, part of a parametrization, not "
            "to the model; constrain the model's tensors by their public names"
        )
    _raw_tensor(owner, tensor_name, _describe(owner, tensor_name))
    return owner, tensor_name


def _raw_tensor(module: nn.Module, tensor_name: str, where: str | None = None) -> Tensor:
    """The raw stored tensor behind ``module.<tensor_name>``."""
    if parametrize.is_parametrized(module, tensor_name):
        chain = chain_of(module, tensor_name)
        raw: Tensor = chain.original if chain.is_tensor else getattr(module, tensor_name).detach()
        return raw
    for table in (module._parameters, module._buffers):
        tensor = table.get(tensor_name)
        if tensor is not None:
            return tensor
    available = [n for n, _ in module.named_parameters(recurse=False)]
    available += [n for n, _ in module.named_buffers(recurse=False)]
    available += list(_parametrizations(module)) if parametrize.is_parametrized(module) else []
    raise ValueError(
        f"{where or _describe(module, tensor_name)}: {type_name(module)} has no parameter or "
        f"buffer named {tensor_name!r}; it has: {', '.join(available) or 'none'}"
    )


def _selector(include: Include) -> Callable[[str, nn.Module, str], bool]:
    if include is None:
        return lambda qualname, module, tensor_name: True
    if isinstance(include, nn.Module) or (
        isinstance(include, tuple) and any(isinstance(c, nn.Module) for c in include)
    ):
        raise TypeError(
            "include takes module classes, such as nn.Linear, not module instances; "
            f"got {include!r}"
        )
    if isinstance(include, type) and issubclass(include, nn.Module):
        include = (include,)
    if isinstance(include, tuple) and include and all(isinstance(c, type) for c in include):
        classes = include
        return lambda qualname, module, tensor_name: isinstance(module, classes)
    if isinstance(include, str):
        include = {include}
    if isinstance(include, Collection) and all(isinstance(n, str) for n in include):
        names = set(include)
        return lambda qualname, module, tensor_name: tensor_name in names or qualname in names
    if callable(include):
        predicate = cast(Callable[[str, nn.Module, str], bool], include)
        return lambda qualname, module, tensor_name: bool(predicate(qualname, module, tensor_name))
    raise TypeError(
        "include must be module classes, tensor names, or a predicate "
        f"(qualified_name, module, tensor_name) -> bool; got {include!r}"
    )


def _describe(module: nn.Module, tensor_name: str) -> str:
    return f"{type_name(module)}.{tensor_name}"


def type_name(obj: object) -> str:
    """The class name of ``obj``; for a parametrized module, of the module before."""
    if isinstance(obj, nn.Module):
        return parametrize.type_before_parametrizations(obj).__name__
    return type(obj).__name__


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
