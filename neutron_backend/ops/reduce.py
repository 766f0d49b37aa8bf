"""Reductions: mean over dimensions."""

from __future__ import annotations

from torch.fx import Node

from neutron_backend.ops.base import SUPPORTED, CheckContext, NeutronOperator, OpKind, Verdict, arg, shape_of
from neutron_backend.ops.edge import edge


def reduced_dims(node: Node) -> list[int]:
    """The reduced dimensions, non-negative, sorted."""
    rank = len(shape_of(node.args[0]))
    dims = arg(node, 1, "dim", None)
    if dims is None:
        return list(range(rank))
    dims = [dims] if isinstance(dims, int) else list(dims)
    return sorted(d % rank for d in dims)


def _reduces_nothing(node: Node) -> bool:
    """A reduction over size-1 dimensions only copies its input."""
    shape = shape_of(node.args[0])
    return all(shape[d] == 1 for d in reduced_dims(node))


def _check(node: Node, ctx: CheckContext) -> Verdict:
    return SUPPORTED


OPERATORS = [
    NeutronOperator(name="aten.mean.dim", targets=(edge("aten.mean.dim"),), kind=OpKind.COMPUTE,
                    constraints="output shares the input's qparams; a reduction over size-1 dims alone is a no-op",
                    check=_check, no_op=_reduces_nothing, quantization="int8; output shares the input's qparams"),
]
