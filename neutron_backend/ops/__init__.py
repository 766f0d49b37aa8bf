"""The one operator registry. Each module in this package declares `OPERATORS`, a list of NeutronOperator.

Adding an operator touches one module here (its rule and its conversion) and its test; nothing else keeps a list.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

from neutron_backend.ops.base import (
    SUPPORTED,
    CheckContext,
    NeutronOperator,
    OpKind,
    Verdict,
    reject,
)

__all__ = ["SUPPORTED", "CheckContext", "NeutronOperator", "OpKind", "Verdict", "is_fusable", "lookup", "lookup_name",
           "operators", "reject", "schema_key"]

_NOT_OPERATOR_MODULES = {"base", "edge", "limits", "support_table"}


def schema_key(target: Any) -> tuple[str, str] | None:
    """(qualified name, overload) of an ATen or edge operator, e.g. ('aten::add', 'Tensor'); None otherwise."""
    schema = getattr(target, "_schema", None)
    if schema is None:
        return None
    return schema.name, schema.overload_name or "default"


@functools.cache
def _registry() -> dict[tuple[str, str], NeutronOperator]:
    registry: dict[tuple[str, str], NeutronOperator] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name in _NOT_OPERATOR_MODULES:
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for operator in module.OPERATORS:
            for target in operator.targets:
                key = schema_key(target)
                if key in registry:
                    raise RuntimeError(f"{key} registered twice: {registry[key].name} and {operator.name}")
                registry[key] = operator
    return registry


def operators() -> list[NeutronOperator]:
    """Every registered operator, once each, sorted by name."""
    return sorted({id(op): op for op in _registry().values()}.values(), key=lambda op: op.name)


def is_fusable(node: Any) -> bool:
    """Whether `node` is an activation that may run fused into the conv/linear before it."""
    operator = lookup(node.target)
    return (operator is not None and operator.kind is OpKind.ACTIVATION and operator.fusable is not None
            and operator.fusable(node))


def lookup_name(name: str) -> NeutronOperator:
    """The registered operator named `name` (e.g. 'aten.convolution.default'); KeyError naming the known ones."""
    by_name = {operator.name: operator for operator in operators()}
    if name not in by_name:
        raise KeyError(f"no registered operator {name!r}; registered: {sorted(by_name)}")
    return by_name[name]


def lookup(target: Any) -> NeutronOperator | None:
    """The registered operator for an ATen/edge op target, or None when Neutron has no rule for it."""
    key = schema_key(target)
    return None if key is None else _registry().get(key)
