"""``state_dict`` hooks on every module that owns a constrained tensor.

Registered by :func:`~torch_constraints.constrain` (as PyTorch's ``weight_norm``
registers its compatibility hook), removed with the module's last constraint:

* a ``state_dict`` post-hook records the checkpoint format, :data:`FORMAT`, in the
  module's metadata entry (``state_dict._metadata[prefix][FORMAT_KEY]``), so that a
  later release can recognise and migrate what this one wrote;
* a ``load_state_dict`` pre-hook reads that format (refusing one newer than this
  release knows), and loads a checkpoint of the *unconstrained* model: the plain
  entry ``fc.weight`` becomes ``fc.parametrizations.weight.original``, projected
  in the dtype it is stored in, so the stored value is feasible. A plain
  checkpoint holds no state of the parametrizations themselves (tensor bounds of a
  :class:`~torch_constraints.Box`): they keep the module's current values.

A checkpoint of the constrained model loads unchanged, bit for bit: its raw values
are not projected again (with ``straight_through=True`` they may lie outside the
set on purpose).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrize import ParametrizationList

from .base import Constraint

__all__ = ["FORMAT", "FORMAT_KEY", "attach", "detach"]

#: The checkpoint format this release writes and the newest it reads.
FORMAT = 1
#: The key of the format in a constrained module's ``state_dict`` metadata entry.
FORMAT_KEY = "torch_constraints"


def attach(module: nn.Module) -> None:
    """Register both hooks on ``module``, once."""
    if not _has(module._load_state_dict_pre_hooks, _load_pre_hook):
        module.register_load_state_dict_pre_hook(_load_pre_hook)  # type: ignore[no-untyped-call]
    if not _has(module._state_dict_hooks, _state_dict_post_hook):
        module.register_state_dict_post_hook(_state_dict_post_hook)  # type: ignore[no-untyped-call]


def detach(module: nn.Module) -> None:
    """Remove both hooks from ``module``."""
    for hooks, hook in (
        (module._load_state_dict_pre_hooks, _load_pre_hook),
        (module._state_dict_hooks, _state_dict_post_hook),
    ):
        for key in [k for k, h in hooks.items() if getattr(h, "hook", h) is hook]:
            del hooks[key]


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
    where = prefix[:-1] or type(module).__name__
    version = local_metadata.get(FORMAT_KEY)
    if version is not None and (not isinstance(version, int) or version > FORMAT):
        error_msgs.append(
            f"{where}: the checkpoint was written in torch-constraints checkpoint format "
            f"{version!r}, but this release reads formats up to {FORMAT}; upgrade "
            "torch-constraints to load it"
        )
        return
    # Format 1 is the first: there is nothing older to migrate yet.
    if not parametrize.is_parametrized(module):
        return
    assign = bool(local_metadata.get("assign_to_params_buffers", False))
    chains = cast(nn.ModuleDict, module.parametrizations)
    for name, chain in chains.items():
        assert isinstance(chain, ParametrizationList)
        if any(isinstance(entry, Constraint) for entry in chain):
            _load_plain(chain, state_dict, prefix, name, assign, error_msgs)


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
