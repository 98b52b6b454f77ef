"""One parametrized class per module class: compiled once, picklable, copyable.

:func:`torch.nn.utils.parametrize.register_parametrization` moves every module it
parametrizes to a class of its own, created on the fly (``ParametrizedLinear``).
Two things break on that:

* ``torch.compile`` guards on the class of each module it traces. Compiling the
  blocks of a model one by one (regional compilation, ``block.compile()``)
  recompiles for every block, and past Dynamo's ``recompile_limit``
  (8) runs the rest in eager mode;
* ``pickle`` and ``torch.save(model)`` cannot find the class by name, and PyTorch
  gives it a ``__getstate__`` that raises.

:func:`share` therefore moves a module this library constrains to a class shared
by all modules of the same original class with the same parametrized tensor
names: every ``Linear`` whose ``weight`` alone is parametrized has one class,
``ParametrizedLinear``. Its properties are PyTorch's, with two differences: the
cache of :func:`torch.nn.utils.parametrize.cached` is keyed on the module reading
it (PyTorch's is keyed on the module the property was made for), and a module of
the class whose tensor of that name is not parametrized reads and writes the
plain attribute, as if the property were not there. The class pickles:
``__reduce_ex__`` rebuilds it on load from the original class, which is
importable, and the names.

Code that calls PyTorch directly keeps editing the class it finds:
``register_parametrization`` sets a property on it, ``remove_parametrizations``
deletes one. On a shared class, a metaclass turns the first into a shared property
(which other modules of the class read through to their plain attribute) and
ignores the second (the module that dropped its parametrization now reads through
the property to its plain attribute). :func:`share` moves such a module to the
class of its names the next time this library changes its constraints.

The shared classes are looked up by weak reference: one that no module uses any
more is collected with its base class (classes made on the fly stay collectable),
and is made again, identical, when needed (unpickling goes through
:func:`shared_class` too).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrize import ParametrizationList

from . import _compat
from .base import Constraint

__all__ = ["is_shared", "share", "shared_class"]

_FLAG = "_torch_constraints_shared"
#: The module PyTorch gives its parametrized classes (torch.fx leaves them alone).
_PARAMETRIZE_MODULE = "torch.nn.utils.parametrize"

#: What PyTorch's own per-module class holds besides one property per tensor.
_PYTORCH_CLASS_KEYS = frozenset(
    {"__module__", "__qualname__", "__doc__", "__getstate__", "__deepcopy__", "__dict__"}
    | {"__weakref__"}
)

# Weak values: a shared class lives as long as a module (or anything else) uses it,
# so module classes made on the fly are not kept alive here. While it lives, every
# module of its base class and names gets it (torch.compile compiles once).
_metaclasses: weakref.WeakValueDictionary[type, type] = weakref.WeakValueDictionary()
_classes: weakref.WeakValueDictionary[tuple[type, frozenset[str]], type] = (
    weakref.WeakValueDictionary()
)


def share(module: nn.Module) -> None:
    """Move ``module`` to the shared class of its original class and parametrized names.

    Called after this library adds or removes a constraint. Leaves alone modules
    whose class was made by anyone but PyTorch's parametrize or this module (or that
    holds anything else): those keep working as they are.
    """
    cls = type(module)
    names = frozenset(_parametrized_names(module))
    if not names:
        return
    if is_shared(cls):
        if _FLAG not in cls.__dict__:
            return  # a class derived from a shared one (FSDP2's): not ours to change
    elif not _is_pytorch_class(cls, names):
        return
    module.__class__ = shared_class(cls.__bases__[0], names)


def is_shared(cls: type) -> bool:
    """Whether ``cls`` is a shared parametrized class (or a class derived from one)."""
    return bool(getattr(cls, _FLAG, False))


def shared_class(base: type[nn.Module], names: Iterable[str]) -> type[nn.Module]:
    """Return the shared class of modules of class ``base`` whose ``names`` are parametrized."""
    key = (base, frozenset(names))
    cls = _classes.get(key)
    if cls is None:
        meta = _metaclass(type(base))
        namespace: dict[str, Any] = {
            # As PyTorch's own parametrized classes do: torch.fx treats classes of
            # torch.nn modules as leaves, and would otherwise trace into the chain.
            # Pickling does not look the class up by module (see _reduce_ex).
            "__module__": _PARAMETRIZE_MODULE,
            "__qualname__": f"Parametrized{base.__qualname__}",
            "__doc__": f"{base.__name__} with parametrized tensors (torch_constraints).",
            "__reduce_ex__": _reduce_ex,
            _FLAG: True,
        }
        namespace.update((name, _Property.of(name)) for name in sorted(key[1]))
        cls = meta(f"Parametrized{base.__name__}", (base,), namespace)
        _classes[key] = cls
    return cls


def _rebuild(base: type[nn.Module], names: tuple[str, ...]) -> nn.Module:
    """Unpickle a module of a shared class (pickles refer to this function: keep its path)."""
    cls = shared_class(base, names)
    module: nn.Module = cls.__new__(cls)
    return module


def _reduce_ex(self: nn.Module, protocol: Any) -> Any:
    cls = type(self)
    if _FLAG not in cls.__dict__:  # a class derived from the shared one (FSDP2's): the default
        return object.__reduce_ex__(self, protocol)
    getstate = getattr(self, "__getstate__", None)
    state = getstate() if getstate is not None else self.__dict__
    return _rebuild, (cls.__bases__[0], tuple(_parametrized_names(self))), state


def _parametrized_names(module: nn.Module) -> list[str]:
    chains = _compat.children_of(module).get("parametrizations")
    return list(chains.keys()) if isinstance(chains, nn.ModuleDict) else []


def _is_pytorch_class(cls: type, names: Iterable[str]) -> bool:
    if cls.__module__ != _PARAMETRIZE_MODULE or len(cls.__bases__) != 1:
        return False
    names = set(names)
    if set(cls.__dict__) - _PYTORCH_CLASS_KEYS != names:
        return False
    return all(isinstance(cls.__dict__[name], property) for name in names)


def _metaclass(parent: type) -> type:
    if parent is type:
        return _SharedMeta
    meta = _metaclasses.get(parent)
    if meta is None:
        meta = type(f"Shared{parent.__name__}", (_SharedMeta, parent), {"__module__": __name__})
        _metaclasses[parent] = meta
    return meta


class _SharedMeta(type):
    """The metaclass of shared classes: keeps PyTorch from editing them for one module."""

    def __setattr__(cls, name: str, value: Any) -> None:
        # register_parametrization sets a property made for one module: use the shared one.
        if isinstance(value, property) and not isinstance(value, _Property):
            if getattr(value.fget, "__module__", None) == _PARAMETRIZE_MODULE:
                value = _Property.of(name)
        super().__setattr__(name, value)

    def __delattr__(cls, name: str) -> None:
        if isinstance(cls.__dict__.get(name), _Property):
            return  # remove_parametrizations on one module: others may still use it
        super().__delattr__(name)


def _copies_into_original(chain: ParametrizationList, value: Any) -> bool:
    """Whether ``module.<name> = value`` can be stored by copying into ``chain.original``.

    When every entry of the chain is one of this library's constraints (whose
    ``right_inverse`` keeps shape, dtype and device) and ``value`` is a plain tensor
    of the raw tensor's shape.
    """
    if not chain.is_tensor or not all(isinstance(entry, Constraint) for entry in chain):
        return False
    original = chain.original
    return (
        isinstance(value, torch.Tensor)
        and type(original) in (torch.Tensor, nn.Parameter)
        and original.device.type != "meta"
        and value.shape == original.shape
    )


def _evaluate(chain: nn.Module) -> Any:
    """``chain()``, calling each entry's ``forward`` directly when nothing could tell.

    That is when no hook (the chain's, an entry's or a global one) and no compiled call
    would run, and nothing traces or compiles: the value and the autograd graph are
    then those of ``chain()``, for a fraction of its cost (see ``_compat.calls_forward``).
    """
    entries = _compat.children_of(chain).values()
    if (
        not chain.is_tensor
        or torch.compiler.is_compiling()
        or _compat.tracing()
        or not _compat.calls_forward(chain)
        or not all(map(_compat.calls_forward, entries))  # type: ignore[arg-type]
    ):
        return chain()
    x: Tensor | None = _compat.parameters_of(chain).get("original")
    if x is None:
        x = _compat.buffers_of(chain)["original"]
    for entry in entries:
        x = entry.forward(x)  # type: ignore[union-attr]
    return x


class _Property(property):
    """``module.<name>``: the parametrized value if ``name`` is parametrized, else the attribute."""

    tensor_name: str

    @classmethod
    def of(cls, name: str) -> _Property:
        def get(self: nn.Module) -> Any:
            if torch.jit.is_scripting():  # type: ignore[attr-defined]
                raise RuntimeError("Parametrization is not working with scripting.")
            chains = _compat.children_of(self).get("parametrizations")
            chain = _compat.children_of(chains).get(name) if chains is not None else None
            if chain is None:  # parametrized on another module of this class only
                if name in self.__dict__:
                    return self.__dict__[name]
                return nn.Module.__getattr__(self, name)  # parameters, buffers, modules
            cache = _compat.parametrize_cache()
            if cache is None:
                return _evaluate(chain)
            if _compat.tracing():
                raise RuntimeError("Cannot trace a model while caching parametrizations.")
            key = (id(self), name)  # the module reading it: many modules share the class
            tensor = cache.get(key)
            if tensor is None:
                tensor = cache[key] = _evaluate(chain)
            return tensor

        def set_(self: nn.Module, value: Any) -> None:
            if torch.jit.is_scripting():  # type: ignore[attr-defined]
                raise RuntimeError("Parametrization is not working with scripting.")
            chains = cast(nn.ModuleDict, self.parametrizations)
            if name not in chains:
                self.__dict__[name] = value
                return
            chain = cast(ParametrizationList, chains[name])
            if _copies_into_original(chain, value):
                # The projection written into the raw tensor: its storage, and every
                # alias of it, kept (PyTorch's right_inverse would set_ a new one).
                with torch.no_grad():
                    for entry in reversed(chain):
                        value = cast(Constraint, entry).right_inverse(value)
                    chain.original.copy_(value)
            else:
                chain.right_inverse(value)

        def delete(self: nn.Module) -> None:
            if name in cast(nn.ModuleDict, self.parametrizations) or name not in self.__dict__:
                raise AttributeError(f"cannot delete attribute {name!r}")
            del self.__dict__[name]

        prop = cls(get, set_, delete, f"The parametrized tensor {name!r}.")
        prop.tensor_name = name
        return prop
