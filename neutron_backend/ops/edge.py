"""Looking up edge-dialect operator overloads by their dotted name, so op modules stay declarative."""

from __future__ import annotations

from typing import Any


def edge(dotted: str) -> Any:
    """The edge op overload for e.g. 'aten.convolution.default'."""
    from executorch.exir.dialects._ops import ops as exir_ops

    node: Any = exir_ops.edge
    for part in dotted.split("."):
        node = getattr(node, part)
    return node
