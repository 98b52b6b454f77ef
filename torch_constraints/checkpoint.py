r"""Checkpoints: what a constrained model saves and loads, and a plain export.

A constrained model's ``state_dict()`` holds the raw tensors
(``fc.parametrizations.weight.original``) and the constraints' own state (tensor
bounds), and records :data:`CHECKPOINT_FORMAT` in the metadata. Loading it back is
exact, bit for bit. Two more directions work out of the box:

* **unconstrained → constrained**: ``model.load_state_dict(plain_sd)`` accepts the
  checkpoint of the same model without constraints (keys ``fc.weight``); the
  values are projected, in the dtype they are stored in, so the stored raw value
  is feasible. A load pre-hook does it, registered by
  :func:`~torch_constraints.constrain` on each module owning a constrained tensor.
* **constrained → unconstrained**: :func:`plain_state_dict` exports the values
  the forward pass sees under the plain names, for deployment without this
  library.

Loading refuses, with a ``ValueError`` and before the first tensor is written, a
checkpoint whose format this release cannot read (:data:`CHECKPOINT_FORMAT`) or
whose constraint state is invalid (a :class:`~torch_constraints.Box`'s tensor
bounds with NaN or ``min > max``, or of another shape), when it is loaded into the
module given to :func:`~torch_constraints.constrain` or
:func:`~torch_constraints.constrain_all`. Loaded through a wrapper (``outer`` holding
that module), it is refused all the same, but only the bounds are all checked before
the first copy: see "How the hooks work" below. Other faults
(missing keys, shapes of unconstrained tensors) are reported by PyTorch as usual,
after it has copied what it could.

How the hooks work
------------------

``state_dict`` hooks on every module that owns a constrained tensor, and on its root.

Registered by :func:`~torch_constraints.constrain` (as PyTorch's ``weight_norm``
registers its compatibility hook), removed with the module's last constraint:

* a ``state_dict`` post-hook records the checkpoint format, :data:`FORMAT`, in the
  module's metadata entry (``state_dict._metadata[prefix][FORMAT_KEY]``), so that a
  later release can recognise and migrate what this one wrote;
* a ``load_state_dict`` pre-hook checks, for every module of its tree that owns a
  constrained tensor, that format (:func:`check_format`: the int 1 or no entry)
  and the state its constraints would load (a :class:`~torch_constraints.Box`'s
  tensor bounds: the current shapes, no NaN, ``min <= max``), raising
  ``ValueError`` before anything of the tree is written; then it loads a
  checkpoint of the *unconstrained* model: the plain entry ``fc.weight`` becomes
  ``fc.parametrizations.weight.original``, projected in the dtype it is stored
  in, so the stored value is feasible. A plain checkpoint holds no state of the
  parametrizations themselves (tensor bounds): they keep the module's current values.

Loads are atomic. ``load_state_dict`` copies each module's tensors as it walks the
tree and raises only at the end, so a refusal found at ``model.fc`` would come
after the tensors of ``model`` and of the modules before ``fc`` were written.
:func:`attach_root` therefore puts the pre-hook on the module the user constrained
(the root passed to ``constrain``/``constrain_all``) too, where it runs before the
first copy into that tree. What it cannot cover:

* loading into an *ancestor* of that root with tensors of its own, or with
  children loaded before it (``constrain(model.fc, "weight")`` then
  ``model.load_state_dict(...)``): those tensors are written before the refusal,
  which still comes, before anything of the root's tree is written;
* when the root is not where the load starts (a wrapper's ``load_state_dict``):
  PyTorch passes the metadata of other modules only to the module the load starts
  at, so the formats of the modules below the root are checked as each is
  reached; the tensor bounds are still all checked first.

Other faults (a missing key, a shape mismatch of an unconstrained tensor) are
PyTorch's: it reports them together at the end, after copying what it could.

A checkpoint of the constrained model loads unchanged, bit for bit: its raw values
are not projected again (with ``straight_through=True`` they may lie outside the
set on purpose).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrize import ParametrizationList

from . import _tree
from ._compat import load_pre_hooks_of, metadata_of, set_metadata, state_dict_hooks_of
from ._validation import type_name
from .base import Constraint

__all__ = [
    "CHECKPOINT_FORMAT",
    "FORMAT_KEY",
    "attach",
    "attach_root",
    "check_format",
    "detach",
    "plain_state_dict",
]


#: The checkpoint format this release writes and the newest it reads.
FORMAT = 1
#: The formats this release reads (Python ints; ``bool`` is not one).
KNOWN_FORMATS = frozenset({1})
#: The key of the format in a constrained module's ``state_dict`` metadata entry.
FORMAT_KEY = "torch_constraints"


def attach(module: nn.Module) -> None:
    """Register both hooks on ``module``, which owns a constrained tensor, once."""
    if not _has(load_pre_hooks_of(module), _load_pre_hook):
        module.register_load_state_dict_pre_hook(_load_pre_hook)  # type: ignore[no-untyped-call]
    if not _has(state_dict_hooks_of(module), _state_dict_post_hook):
        module.register_state_dict_post_hook(_state_dict_post_hook)  # type: ignore[no-untyped-call]


def attach_root(module: nn.Module) -> None:
    """Register the load pre-hook on ``module``, the root the user constrained, once.

    ``load_state_dict`` copies each module's tensors as it walks the tree and raises
    only at the end, so a refusal found at a constrained submodule would come after
    its ancestors' and earlier siblings' tensors were written. The pre-hook checks
    every constrained module of the tree below the module it is on (as it is when
    the checkpoint loads), so on the root it runs before the first copy into that
    tree. On an owner that is also the root it is the one hook :func:`attach`
    registers. ``deepcopy`` and ``pickle`` keep it, as PyTorch keeps hooks.
    """
    if not _has(load_pre_hooks_of(module), _load_pre_hook):
        module.register_load_state_dict_pre_hook(_load_pre_hook)  # type: ignore[no-untyped-call]


def detach(module: nn.Module) -> None:
    """Remove the hooks ``module`` no longer needs; safe to call on any module.

    The ``state_dict`` post-hook goes once ``module`` owns no constrained tensor,
    the load pre-hook once no module of its tree does.
    """
    tree = [m for m in module.modules() if _owns_constraints(m)]
    if module not in tree:
        _remove(state_dict_hooks_of(module), _state_dict_post_hook)
    if not tree:
        _remove(load_pre_hooks_of(module), _load_pre_hook)


def _remove(hooks: dict[int, Any], hook: Any) -> None:
    for key in [k for k, h in hooks.items() if getattr(h, "hook", h) is hook]:
        del hooks[key]


def check_format(version: object, where: str) -> None:
    """Raise ``ValueError`` unless ``version`` is a format this release reads, or ``None``.

    ``None`` (the metadata has no entry) is a checkpoint without this library's
    format: a plain checkpoint, or one whose metadata was dropped; it loads as such.

    Example:
        >>> check_format(1, "fc")
        >>> check_format(None, "fc")
        >>> check_format("1", "fc")
        Traceback (most recent call last):
        ...
        ValueError: fc: the torch-constraints checkpoint format must be an int in {1}, got '1' (str)
    """
    if version is None or (type(version) is int and version in KNOWN_FORMATS):
        return
    if type(version) is int and version > FORMAT:
        raise ValueError(
            f"{where}: the checkpoint was written in torch-constraints checkpoint format "
            f"{version}, but this release reads formats up to {FORMAT}; upgrade "
            "torch-constraints to load it"
        )
    known = "{" + ", ".join(str(v) for v in sorted(KNOWN_FORMATS)) + "}"
    raise ValueError(
        f"{where}: the torch-constraints checkpoint format must be an int in {known}, "
        f"got {version!r} ({type(version).__name__})"
    )


def _has(hooks: dict[int, Any], hook: Any) -> bool:
    return any(getattr(h, "hook", h) is hook for h in hooks.values())


def _state_dict_post_hook(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any]
) -> None:
    local_metadata[FORMAT_KEY] = FORMAT


def _load_pre_hook(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict[str, Any],
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    # First check every constrained module of the tree, raising rather than adding to
    # error_msgs (load_state_dict would go on copying): nothing of it is written yet.
    for name, owner in module.named_modules(prefix=prefix[:-1], remove_duplicate=False):
        if not isinstance(owner, (ParametrizationList, Constraint)) and _owns_constraints(owner):
            _check_module(owner, state_dict, f"{name}." if name else "", local_metadata, prefix)
    # Format 1 is the first: there is nothing older to migrate yet.
    if not _owns_constraints(module):
        return
    assign = bool(local_metadata.get("assign_to_params_buffers", False))
    chains = cast(nn.ModuleDict, module.parametrizations)
    for name, chain in chains.items():
        assert isinstance(chain, ParametrizationList)
        if any(isinstance(entry, Constraint) for entry in chain):
            _load_plain(chain, state_dict, prefix, name, assign, error_msgs)


def _owns_constraints(module: nn.Module) -> bool:
    """Whether ``module`` holds a parametrization chain with one of this library's constraints."""
    if not parametrize.is_parametrized(module):
        return False
    names = cast(nn.ModuleDict, module.parametrizations)
    return any(_tree.our_constraints(module, name) for name in names)


def _check_module(
    module: nn.Module,
    state_dict: Mapping[str, Any],
    prefix: str,
    local_metadata: Mapping[str, Any],
    local_prefix: str,
) -> None:
    """Raise if ``module`` (at ``prefix``) cannot load its part of ``state_dict``; change nothing.

    Checks the format recorded for ``module`` and the state its constraints would
    load. ``local_metadata`` is the metadata entry of ``local_prefix``; the entries
    of other modules come from ``state_dict._metadata`` when there is one (the
    ``state_dict`` a load's root module receives has it, its children's do not).
    """
    where = prefix[:-1] or type(module).__name__
    if prefix == local_prefix:
        metadata: Mapping[str, Any] | None = local_metadata
    else:
        metadata = metadata_of(state_dict).get(prefix[:-1])
    if metadata is not None:
        check_format(metadata.get(FORMAT_KEY), where)
    if not _owns_constraints(module):
        return
    chains = cast(nn.ModuleDict, module.parametrizations)
    for name, chain in chains.items():
        for index, entry in enumerate(cast(ParametrizationList, chain)):
            check = getattr(entry, "_check_state_dict", None)
            if isinstance(entry, Constraint) and callable(check):
                check(state_dict, f"{prefix}parametrizations.{name}.{index}.")


def _load_plain(
    chain: ParametrizationList,
    state_dict: dict[str, Any],
    prefix: str,
    name: str,
    assign: bool,
    error_msgs: list[str],
) -> None:
    """Move the plain entry ``prefix + name`` (if it is the only form there) to the raw one."""
    plain_key = prefix + name
    chain_prefix = f"{prefix}parametrizations.{name}."
    originals = _originals(chain)
    raw_keys = [chain_prefix + key for key in originals]
    if plain_key not in state_dict or any(key in state_dict for key in raw_keys):
        return  # nothing plain, or both forms: let load_state_dict report what is left
    value = state_dict[plain_key]
    if not isinstance(value, Tensor):
        return
    first = originals[next(iter(originals))]
    if chain.is_tensor and value.shape != first.shape:
        error_msgs.append(
            f"size mismatch for {plain_key}: copying a param with shape {tuple(value.shape)} "
            f"from checkpoint, the shape in current model is {tuple(first.shape)}."
        )
        del state_dict[plain_key]
        return
    try:
        raw = _right_inverse(chain, value, first, assign)
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as error:
        error_msgs.append(f"{plain_key}: cannot store this value through its constraints: {error}")
        del state_dict[plain_key]
        return
    del state_dict[plain_key]
    for key, tensor in zip(raw_keys, raw, strict=True):
        state_dict[key] = tensor
    # The parametrizations' own state (tensor bounds) is not in a plain checkpoint.
    for key, tensor in chain.state_dict(prefix=chain_prefix, keep_vars=True).items():
        state_dict.setdefault(key, tensor)


def _originals(chain: ParametrizationList) -> dict[str, Tensor]:
    if chain.is_tensor:
        return {"original": chain.original}
    return {f"original{i}": getattr(chain, f"original{i}") for i in range(chain.ntensors)}


@torch.no_grad()
def _right_inverse(
    chain: ParametrizationList, value: Tensor, original: Tensor, assign: bool
) -> list[Tensor]:
    """The raw tensors to store so that the chain's forward value is ``value`` projected."""
    if not assign:
        # Project in the dtype the value will be stored in, so rounding cannot leave the set.
        value = value.to(device=original.device, dtype=original.dtype)
    result: Any = value
    for entry in reversed(chain):
        if not hasattr(entry, "right_inverse"):
            raise NotImplementedError(f"{type(entry).__name__} has no right_inverse")
        result = entry.right_inverse(result)  # type: ignore[operator]  # a Module method
    if isinstance(result, Tensor):
        return [result]
    return list(result)


#: The checkpoint format this release writes, and the newest it reads. It is stored
#: per constrained module, under ``state_dict._metadata[module_prefix]["torch_constraints"]``;
#: loading a checkpoint of a newer format raises ``ValueError`` saying to upgrade, and
#: any other value than this int (or no entry) raises ``ValueError`` too, before
#: anything is written (see the module's notes on atomic loading).
CHECKPOINT_FORMAT: int = FORMAT


@torch.no_grad()
def plain_state_dict(module: nn.Module, *, prefix: str = "") -> dict[str, Tensor]:
    """Return a ``state_dict`` for the unconstrained model: plain names, constrained values.

    Every tensor that carries a constraint of this library appears under its plain
    name (``fc.weight``, not ``fc.parametrizations.weight.original``) with the
    value the forward pass sees, so the result loads with ``strict=True`` into the
    same architecture built without constraints, and needs no torch-constraints to
    use. The constraints' own state (tensor bounds) is left out. Everything else is
    exactly ``module.state_dict()``, metadata included. Constrained values are new
    tensors (never views of the raw parameters), so writing the result to disk
    writes each value once.

    A tensor whose constraint is stacked on another library's parametrization is
    exported with the value of the whole chain; tensors that carry only other
    libraries' parametrizations are left as they are.

    Args:
        module: the constrained model (or any module tree).
        prefix: prepended to every key, as in :meth:`torch.nn.Module.state_dict`.
            Default: ``""``.

    Returns:
        An ordered ``dict`` from names to tensors, with ``_metadata``.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_constraints import constrain, plain_state_dict
        >>> model = nn.Sequential(nn.Linear(3, 2))
        >>> _ = constrain(model, "0.weight", -0.1, 0.1)
        >>> sd = plain_state_dict(model)
        >>> sorted(sd)
        ['0.bias', '0.weight']
        >>> plain = nn.Sequential(nn.Linear(3, 2))
        >>> plain.load_state_dict(sd)
        <All keys matched successfully>
        >>> torch.equal(plain[0].weight, model[0].weight)
        True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"plain_state_dict: expected an nn.Module, got {type_name(module)}")
    state = module.state_dict(prefix=prefix)
    metadata: dict[str, dict[str, Any]] = OrderedDict(
        (key, dict(value)) for key, value in metadata_of(state).items()
    )
    # The first key of each chain is replaced by the plain entry, the others dropped.
    replaced: dict[str, tuple[str, Tensor]] = {}
    dropped: set[str] = set()
    appended: list[tuple[str, Tensor]] = []
    exported: dict[str, tuple[nn.Module, set[str]]] = {}
    for found in _tree.constrained(module):
        chain = _tree.chain_of(found.owner, found.name)
        if chain is None:
            continue  # parametrize=False: the state_dict holds the plain entry already
        owner = prefix + found.qualname[: len(found.qualname) - len(found.name)]
        chain_prefix = f"{owner}parametrizations.{found.name}."
        keys = list(chain.state_dict(prefix=chain_prefix, keep_vars=True))
        entry = (prefix + found.qualname, _forward_value(found.owner, found.name, chain))
        if keys:
            replaced[keys[0]] = entry
            dropped.update(keys[1:])
        else:
            appended.append(entry)
        exported.setdefault(owner, (found.owner, set()))[1].add(found.name)
    result: OrderedDict[str, Tensor] = OrderedDict()
    for key, tensor in state.items():
        if key in replaced:
            plain_key, value = replaced[key]
            result[plain_key] = value
        elif key not in dropped:
            result[key] = tensor
    result.update(appended)
    _drop_metadata(metadata, exported)
    set_metadata(result, metadata)
    return result


def _forward_value(owner: nn.Module, tensor_name: str, chain: ParametrizationList) -> Tensor:
    value: Tensor = getattr(owner, tensor_name).detach()
    originals = [*chain.parameters(recurse=False), *chain.buffers(recurse=False)]
    if any(_shares_storage(value, t) for t in originals):
        value = value.clone()  # e.g. the forward pass returned the raw tensor itself
    return value


def _shares_storage(a: Tensor, b: Tensor) -> bool:
    try:
        return bool(a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
        return False


def _drop_metadata(
    metadata: dict[str, dict[str, Any]], exported: dict[str, tuple[nn.Module, set[str]]]
) -> None:
    """Drop the metadata entries of exported chains, and their owners' format entries."""
    chains: set[str] = set()
    parents: set[str] = set()
    for owner, (owner_module, names) in exported.items():
        chains.update(f"{owner}parametrizations.{name}" for name in names)
        if set(cast(nn.ModuleDict, owner_module.parametrizations)) <= names:
            parents.add(f"{owner}parametrizations")
        owner_entry = metadata.get(owner[:-1])
        if owner_entry is not None:
            owner_entry.pop(FORMAT_KEY, None)
    for key in list(metadata):
        parts = key.split(".")
        if key in parents or any(
            part == "parametrizations" and ".".join(parts[: i + 2]) in chains
            for i, part in enumerate(parts)
        ):
            del metadata[key]
