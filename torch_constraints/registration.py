"""Attach constraints to tensors, find them, and take them off again.

Two modes, chosen per call with ``parametrize``:

* ``parametrize=True`` (the default) registers the constraint with
  :func:`torch.nn.utils.parametrize.register_parametrization`, so everything
  PyTorch knows about parametrizations holds: ``module.weight`` is recomputed on
  access, the raw tensor lives in ``module.parametrizations.weight.original`` (the
  same Parameter object as before, so existing optimizers keep working), and
  :func:`torch.nn.utils.parametrize.remove_parametrizations` removes them.
* ``parametrize=False`` records the constraint on the module and leaves the module
  as it is: the raw tensor is projected once at registration and then by
  :func:`~torch_constraints.hard_project`, after each optimizer step, as Keras applies
  ``kernel_constraint``.

Where each mode keeps its constraints, and the walk that reads them, is
``torch_constraints._tree``; the argument checks are ``torch_constraints._validation``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import TypeVar, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import _classes, _ties, _tree, checkpoint, registry
from ._validation import (
    Include,
    describe,
    is_internal,
    require_bool,
    require_module,
    resolve,
    selector,
    type_name,
)
from .base import Constraint
from .box import Box
from .functional import Bound

__all__ = ["constrain", "constrain_all", "named_constraints", "unconstrain"]

M = TypeVar("M", bound=nn.Module)


def constrain(
    module: M,
    name: str,
    min: Bound | Constraint | str = None,
    max: Bound = None,
    *,
    straight_through: bool = False,
    parametrize: bool = True,
    project_now: bool = True,
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
    parametrization's output in the forward pass only: there is no raw tensor of that
    value to write back to, so ``hard_project`` leaves it alone.

    ``project_now=False`` leaves the stored values as they are, to match a run that
    applies its constraint after each update only (Keras' ``kernel_constraint``) or
    projects in the forward pass only (braindecode's max-norm parametrization) from
    the first step on: the forward pass (``parametrize=True``) sees the projection at
    once, and the raw tensor is projected by the first ``hard_project``.

    A tensor reachable under several names (tied weights) is constrained as one
    tensor: with ``parametrize=False`` under any of its names (the same constraint
    under another name is accepted, a different one refused, whichever module the
    calls go through); a parametrization of it is refused, since the other names
    would read the raw values.

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
        project_now: project the stored values now (``True``), or leave them as they
            are until the first ``hard_project`` (``False``). Default: ``True``.

    Returns:
        ``module``, for chaining.

    Raises:
        TypeError: for a non-floating-point or sparse tensor, or arguments of the
            wrong type.
        ValueError: for a missing tensor, invalid bounds, a constraint that cannot
            apply to the tensor, a tensor already constrained by a constraint of the
            same class, a tie the constraint cannot honour, or a parametrization of a
            buffer its module updates in place (BatchNorm's running statistics). Nothing
            is changed.

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

    require_module(module, "constrain")
    require_bool(straight_through, "straight_through")
    require_bool(parametrize, "parametrize")
    require_bool(project_now, "project_now")
    owner, tensor_name = resolve(module, name)
    where = describe(owner, tensor_name)
    template = _as_constraint(min, max, where)
    in_root = _ties.aliases(module)
    _ties.check_tree(module, in_root)
    constraint = _prepare(
        template, owner, tensor_name, where, straight_through, parametrize, in_root
    )
    _register(owner, tensor_name, constraint, parametrize, project_now)
    if parametrize:
        checkpoint.attach_root(module)  # checks a whole checkpoint before the first copy
    return module


def constrain_all(
    module: M,
    min: Bound | Constraint | str = None,
    max: Bound = None,
    *,
    include: Include = None,
    straight_through: bool = False,
    parametrize: bool = True,
    project_now: bool = True,
) -> list[str]:
    """Constrain many parameters of a module tree at once; return their qualified names.

    Without ``include``, every floating-point parameter in the tree is constrained
    (a WGAN critic clips all of its parameters). ``include`` narrows the selection:

    * module classes, ``(nn.Linear, nn.Conv2d)``: parameters owned by such modules
      (the way to say "every linear and convolution weight and bias");
    * tensor names, ``{"weight"}``: parameters with that name (or that qualified
      name). Note that normalisation layers call their scales ``weight`` too;
    * a predicate ``(qualified_name, module, tensor_name) -> bool``.

    Only floating-point parameters are considered. It returns names (where
    :func:`constrain` returns the module) because which tensors matched is what the
    caller does not know in advance. The call is atomic: every
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
        project_now: as in :func:`constrain`. Default: ``True``.

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

    require_module(module, "constrain_all")
    require_bool(straight_through, "straight_through")
    require_bool(parametrize, "parametrize")
    require_bool(project_now, "project_now")
    template = _as_constraint(min, max, type_name(module))
    select = selector(include)
    in_root = _ties.aliases(module)
    _ties.check_tree(module, in_root)
    prepared: list[tuple[str, nn.Module, str, Constraint]] = []
    for qualname, owner, tensor_name in _floating_parameters(module):
        if not select(qualname, owner, tensor_name):
            continue
        where = f"{qualname} ({type_name(owner)})"
        constraint = _prepare(
            template, owner, tensor_name, where, straight_through, parametrize, in_root
        )
        prepared.append((qualname, owner, tensor_name, constraint))
    if not prepared:
        raise ValueError(
            f"constrain_all: no floating-point parameter of {type_name(module)} matches "
            f"include={include!r}"
        )
    for _, owner, tensor_name, constraint in prepared:
        _register(owner, tensor_name, constraint, parametrize, project_now)
    if parametrize:
        checkpoint.attach_root(module)  # checks a whole checkpoint before the first copy
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

    require_module(module, "unconstrain")
    require_bool(leave_constrained, "leave_constrained")
    if name is None:
        for entry in _tree.constrained(module):
            _remove(entry, leave_constrained)
    else:
        owner, tensor_name = resolve(module, name)
        found = _tree.find(owner, tensor_name)
        if found is None:
            raise ValueError(
                f"{describe(owner, tensor_name)} is not constrained by torch_constraints"
            )
        _remove(found, leave_constrained)
    checkpoint.detach(module)
    return module


def named_constraints(module: nn.Module) -> Iterator[tuple[str, Constraint]]:
    """Yield ``(qualified_tensor_name, constraint)`` for every constraint in the tree.

    Both modes are included; stacked constraints on one tensor come in
    registration order. The constraints are the registered objects: changing an
    attribute changes what the forward pass and ``hard_project`` do.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.
        ValueError: if a parametrized tensor of the tree is also read, unconstrained,
            under another name (tied weights), or two names of one tensor carry
            different constraints.

    Example:
        >>> from torch import nn
        >>> from torch_constraints import constrain_all, named_constraints
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> _ = constrain_all(model, 0, 1, include={"weight"})
        >>> list(named_constraints(model))
        [('0.weight', Box(min=0.0, max=1.0))]
    """

    require_module(module, "named_constraints")
    _ties.check_tree(module)
    return (
        (entry.qualname, constraint)
        for entry in _tree.constrained(module)
        for constraint in entry.all_constraints
    )


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


def _floating_parameters(module: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """``(qualified_name, owner, tensor_name)`` of every floating-point parameter, public names.

    A parametrized name counts when its chain holds a floating-point Parameter.
    """
    for prefix, owner in module.named_modules():
        if is_internal(owner):
            continue
        held: dict[str, Tensor | None] = dict(owner.named_parameters(recurse=False))
        if parametrize.is_parametrized(owner):
            for name, chain in owner.parametrizations.items():
                held[name] = next(chain.parameters(recurse=False), None)
        for tensor_name, tensor in held.items():
            if tensor is not None and tensor.is_floating_point():
                yield (f"{prefix}.{tensor_name}" if prefix else tensor_name), owner, tensor_name


#: Buffers that modules update in place in their forward pass (BatchNorm, InstanceNorm).
_UPDATED_IN_PLACE = ("running_mean", "running_var")


def _prepare(
    template: Constraint,
    module: nn.Module,
    tensor_name: str,
    where: str,
    straight_through: bool,
    parametrized: bool,
    in_root: dict[int, list[tuple[str, nn.Module, str]]],
) -> Constraint:
    """Check ``template`` against the tensor and return a bound copy; changes nothing.

    The copy is tried on the tensor's current value, as registration will apply it,
    so that a constraint that cannot apply (a shape it does not accept, an error in
    a custom ``project``) fails here, naming the tensor, before anything changes.
    """
    if not isinstance(template, Constraint):
        raise TypeError(f"{where}: expected a Constraint, got {type(template).__name__}")
    straight_through = straight_through or template.straight_through
    recorded = _tree.recorded(module).get(tensor_name, ())
    if parametrized and recorded:
        raise ValueError(
            f"{where} is already constrained with parametrize=False by {recorded[0]!r}; "
            "constrain it in the same mode, or unconstrain it first"
        )
    if parametrized and tensor_name in _UPDATED_IN_PLACE and hasattr(module, "track_running_stats"):
        raise ValueError(
            f"{where}: {type_name(module)} updates this buffer in place in its forward pass; "
            "a parametrization would have it update a temporary copy, and the statistic would "
            "stop changing. Use parametrize=False: the buffer then updates as usual, and "
            "hard_project keeps it in the set after each step"
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
    existing = recorded if not parametrized else tuple(_tree.our_constraints(module, tensor_name))
    for other in existing:
        if type(other) is type(template):
            raise ValueError(
                f"{where} is already constrained by {other!r}; call "
                f"unconstrain(module, {tensor_name!r}) first to replace it"
            )
    raw = _tree.raw_tensor(module, tensor_name)
    if raw is not None:
        _ties.check_new(template, raw, module, tensor_name, where, parametrized, in_root)
    else:  # a chain of several tensors (weight_norm): the constraint sees its output
        raw = getattr(module, tensor_name).detach()
    template.check(raw, where)
    constraint = copy.deepcopy(template)
    constraint.straight_through = straight_through
    constraint._where = where
    constraint.bind(raw)
    _try_on_current_value(constraint, module, tensor_name, where)
    return constraint


@torch.no_grad()
def _try_on_current_value(
    constraint: Constraint, module: nn.Module, tensor_name: str, where: str
) -> None:
    """Project the value the constraint will act on, and check what comes back."""
    value = getattr(module, tensor_name)  # the value the constraint will act on
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


@torch.no_grad()
def _register(
    module: nn.Module,
    tensor_name: str,
    constraint: Constraint,
    parametrized: bool,
    project_now: bool,
) -> None:
    raw = _tree.raw_tensor(module, tensor_name)
    if raw is None:  # stacked on a chain of several tensors: acts in the forward pass only
        parametrize.register_parametrization(module, tensor_name, constraint)
        _classes.share(module)
        checkpoint.attach(module)
        return
    _tree.release_pack(raw)  # a packed tensor gets its own storage back first
    has_values = raw.device.type != "meta"
    if not parametrized:
        if project_now and has_values:
            raw.copy_(constraint.project(raw))  # the full projection (MinMaxNorm's rate: 1)
        _tree.record(module, tensor_name, constraint)
        _ties.mark(raw, module, tensor_name)
        return
    stacked = parametrize.is_parametrized(module, tensor_name)
    kept = raw.clone() if not project_now and has_values else None
    if not stacked and has_values:
        # In place, so that right_inverse finds the raw tensor feasible and returns it
        # as it is: PyTorch's set_ then keeps its storage (and every alias of it).
        raw.copy_(constraint.project(raw))
    parametrize.register_parametrization(module, tensor_name, constraint)
    _classes.share(module)  # one class per module type: compiles once, pickles
    checkpoint.attach(module)  # loads plain checkpoints, records the format
    if kept is not None:
        raw.copy_(kept)
    elif stacked and has_values:
        # The first registration projected the raw value through right_inverse; a
        # stacked one must bring it into the new set too.
        entry = _tree.find(module, tensor_name)
        for leading in entry.constraints if entry is not None else ():
            raw.copy_(leading.project(raw))
    _ties.mark(raw, module, tensor_name)


def _remove(entry: _tree.Constrained, leave_constrained: bool) -> None:
    module, tensor_name = entry.owner, entry.name
    raw = _tree.raw_tensor(module, tensor_name)
    if raw is not None:
        _tree.release_pack(raw)  # frees a PackedProjection's buffer rather than keeping it alive
        _ties.unmark(raw, module, tensor_name)
    if not entry.parametrized:
        if leave_constrained and raw is not None:
            with torch.no_grad():
                for constraint in entry.constraints:
                    raw.copy_(constraint.project(raw))
        _tree.unrecord(module, tensor_name)
        return
    chain = _tree.chain_of(module, tensor_name)
    assert chain is not None  # a parametrized record has its chain
    positions = [i for i, e in enumerate(chain) if isinstance(e, Constraint)]
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
        with torch.no_grad():  # keep the forward value by writing it into the raw tensor
            for _, constraint in removed:
                chain.original.copy_(constraint.project(chain.original))
    for i, _ in reversed(removed):
        del chain[i]
    if value is not None:
        try:
            setattr(module, tensor_name, value)
        except (NotImplementedError, RuntimeError) as error:
            for i, constraint in removed:
                chain.insert(i, constraint)
            if raw is not None:
                _ties.mark(raw, module, tensor_name)
            raise ValueError(
                f"{describe(module, tensor_name)}: cannot keep the constrained values, because "
                f"a remaining parametrization has no right_inverse ({error}); "
                "pass leave_constrained=False"
            ) from None
    _after_removal(module)


def _after_removal(module: nn.Module) -> None:
    checkpoint.detach(module)
    _classes.share(module)  # the class of the names still parametrized
