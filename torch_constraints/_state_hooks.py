"""``state_dict`` hooks on every module that owns a constrained tensor, and on its root.

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

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrize import ParametrizationList

from .base import Constraint

__all__ = ["FORMAT", "FORMAT_KEY", "attach", "attach_root", "check_format", "detach"]

#: The checkpoint format this release writes and the newest it reads.
FORMAT = 1
#: The formats this release reads (Python ints; ``bool`` is not one).
KNOWN_FORMATS = frozenset({1})
#: The key of the format in a constrained module's ``state_dict`` metadata entry.
FORMAT_KEY = "torch_constraints"


def attach(module: nn.Module) -> None:
    """Register both hooks on ``module``, which owns a constrained tensor, once."""
    if not _has(module._load_state_dict_pre_hooks, _load_pre_hook):
        module.register_load_state_dict_pre_hook(_load_pre_hook)  # type: ignore[no-untyped-call]
    if not _has(module._state_dict_hooks, _state_dict_post_hook):
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
    if not _has(module._load_state_dict_pre_hooks, _load_pre_hook):
        module.register_load_state_dict_pre_hook(_load_pre_hook)  # type: ignore[no-untyped-call]


def detach(module: nn.Module) -> None:
    """Remove the hooks ``module`` no longer needs; safe to call on any module.

    The ``state_dict`` post-hook goes once ``module`` owns no constrained tensor,
    the load pre-hook once no module of its tree does.
    """
    tree = [m for m in module.modules() if _owns_constraints(m)]
    if module not in tree:
        _remove(module._state_dict_hooks, _state_dict_post_hook)
    if not tree:
        _remove(module._load_state_dict_pre_hooks, _load_pre_hook)


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
    if not parametrize.is_parametrized(module):
        return False
    chains = cast(nn.ModuleDict, module.parametrizations)
    return any(
        isinstance(entry, Constraint)
        for chain in chains.values()
        for entry in cast(ParametrizationList, chain)
    )


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
        metadata = getattr(state_dict, "_metadata", {}).get(prefix[:-1])
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
