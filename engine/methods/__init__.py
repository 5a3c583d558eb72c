"""Explanation methods, one module each, registered by name.

Every module of this package defines one :class:`~eac.engine.methods.base.Method`
subclass; :func:`registry` finds them all (so adding a method is adding a file),
and the Explainer, the CLI's ``--method`` choices and the README's table come
from it.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from ..errors import ExplainError
from .base import Method, MethodInput, MethodResult

__all__ = ["Method", "MethodInput", "MethodResult", "get_method", "method_names", "registry"]

#: The order methods are listed in (others follow alphabetically).
PREFERRED_ORDER = ("eac", "eac-faithful", "shapley-exact", "kernelshap", "lime", "loo", "secam", "cam")


@lru_cache(maxsize=1)
def registry() -> dict[str, type[Method]]:
    """Method name → class, for every method module of this package."""
    found: dict[str, type[Method]] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name == "base" or module.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{module.name}")
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, Method) and obj.name and obj.__module__ == mod.__name__:
                if obj.name in found:
                    raise RuntimeError(f"two methods are named {obj.name!r}")
                found[obj.name] = obj
    order = {name: i for i, name in enumerate(PREFERRED_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def method_names() -> tuple[str, ...]:
    """Registered method names, in display order."""
    return tuple(registry())


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name`` (ExplainError when there is none)."""
    methods = registry()
    if name not in methods:
        raise ExplainError(f"unknown method {name!r}; choose one of {', '.join(methods)}")
    return methods[name]


def methods_table() -> str:
    """The README's method table (markdown), built from the registered classes."""
    rows = ["| `--method` | values | what it computes | classifier evaluations |", "| --- | --- | --- | --- |"]
    for name, cls in registry().items():
        label = f"`{name}` (default)" if name == "eac" else f"`{name}`"
        rows.append(f"| {label} | {cls.value_type} | {cls.summary} | {cls.cost} |")
    return "\n".join(rows)
