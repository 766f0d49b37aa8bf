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


def _convert(node: Node, ctx) -> None:
    from ai_edge_litert import schema_py_generated as schema

    x_node = node.args[0]
    rank = len(shape_of(x_node))
    dims = reduced_dims(node)
    keepdim = bool(arg(node, 2, "keepdim", False))
    # Reducing a channels-last value keeps it channels-last only when the rank stays or only channels remain.
    global_spatial = dims == list(range(2, rank))
    channels_last = ctx.input_is_channels_last(node, 0) and (keepdim or global_spatial)
    x = ctx.input(node, 0, channels_last=channels_last)
    axes = [ctx.torch_axis(x_node, d, channels_last) for d in dims]
    output = ctx.output(node, channels_last=channels_last and keepdim)
    options = schema.ReducerOptionsT()
    options.keepDims = keepdim
    ctx.builder.add_operator("MEAN", [x, ctx.int32_constant(f"{node.name}_axes", axes)], [output], options)


OPERATORS = [
    NeutronOperator(name="aten.mean.dim", targets=(edge("aten.mean.dim"),), kind=OpKind.COMPUTE,
                    constraints="output shares the input's qparams; a reduction over size-1 dims alone is a no-op",
                    check=_check, no_op=_reduces_nothing, convert=_convert,
                    quantization="int8; output shares the input's qparams"),
]
