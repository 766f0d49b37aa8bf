"""Reductions: mean, sum, max and min over dimensions."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from torch.fx import Node

from neutron_backend.ops.base import (
    SUPPORTED,
    CheckContext,
    Layout,
    NeutronOperator,
    OpKind,
    QParamsContract,
    Verdict,
    arg,
    shape_of,
)
from neutron_backend.ops.edge import edge
from neutron_backend.quantizer.kinds import (
    SHARED,
    aten,
)


def reduced_dims(node: Node) -> list[int]:
    """The reduced dimensions, non-negative, sorted (no dims or an empty list: every dimension)."""
    rank = len(shape_of(node.args[0]))
    dims = arg(node, 1, "dim", None)
    if dims is None or (not isinstance(dims, int) and len(dims) == 0):
        return list(range(rank))
    dims = [dims] if isinstance(dims, int) else list(dims)
    return sorted({d % rank for d in dims})


def _reduces_nothing(node: Node) -> bool:
    """A reduction over size-1 dimensions only copies its input."""
    shape = shape_of(node.args[0])
    return all(shape[d] == 1 for d in reduced_dims(node))


def _check(node: Node, ctx: CheckContext) -> Verdict:
    return SUPPORTED


def _layout(node: Node, ctx) -> tuple[bool, list[int], bool]:
    """(channels_last, reduced IR axes, keepdim) for a reduction of the node's input as it is laid out."""
    x_node = node.args[0]
    rank = len(shape_of(x_node))
    dims = reduced_dims(node)
    keepdim = bool(arg(node, 2, "keepdim", False))
    # Reducing a channels-last value keeps it channels-last only when the rank stays or only channels remain.
    global_spatial = rank >= 3 and dims == list(range(2, rank))
    channels_last = ctx.input_is_channels_last(node, 0) and (keepdim or global_spatial)
    return channels_last, [ctx.torch_axis(x_node, d, channels_last) for d in dims], keepdim


def _reducer_options(keepdim: bool):
    from ai_edge_litert import schema_py_generated as schema

    options = schema.ReducerOptionsT()
    options.keepDims = keepdim
    return options


def _converter(op: str):
    def convert(node: Node, ctx) -> None:
        channels_last, axes, keepdim = _layout(node, ctx)
        x = ctx.input(node, 0, channels_last=channels_last)
        output = ctx.output(node, channels_last=channels_last and keepdim)
        ctx.builder.add_operator(op, [x, ctx.int32_constant(f"{node.name}_axes", axes)], [output],
                                 _reducer_options(keepdim))

    return convert


def _convert_sum(node: Node, ctx) -> None:
    """sum = MEAN into a tensor of scale s / n, then MUL by the constant n into scale s.

    The output shares the input's qparams, and LiteRT's int8 SUM with equal input and output qparams adds the raw
    int8 values (ignoring the zero point, wrapping on overflow). The MEAN's integers already are the sum's at scale
    s (mean / (s / n) = sum / s), so the MUL (multiplier exactly 1) only changes the scale: one rounding in all.
    """
    channels_last, axes, keepdim = _layout(node, ctx)
    x = ctx.input(node, 0, channels_last=channels_last)
    output = ctx.output(node, channels_last=channels_last and keepdim)
    shape = shape_of(node.args[0])
    count = math.prod(shape[d] for d in reduced_dims(node))
    qparams = ctx.output_qparams(node)
    mean = ctx.new_tensor(f"{node.name}_mean", ctx.builder.tensor_shape(output),
                          dataclasses.replace(qparams, scale=qparams.scale / count))
    ctx.builder.add_operator("MEAN", [x, ctx.int32_constant(f"{node.name}_axes", axes)], [mean],
                             _reducer_options(keepdim))
    factor = ctx.builder.add_tensor(ctx.name(f"{node.name}_count"), [], "int8", data=np.array(1, dtype=np.int8),
                                    scale=float(count), zero_point=0)
    from ai_edge_litert import schema_py_generated as schema

    ctx.builder.add_operator("MUL", [mean, factor], [output], schema.MulOptionsT())


_NO_OP = "a reduction over size-1 dims alone is a no-op"
_SHARED = "int8; output shares the input's qparams"
OPERATORS = [
    NeutronOperator(name="aten.mean.dim", annotated_as={aten.mean.dim: SHARED}, aliases=("adaptive_avg_pool2d",),
                    targets=(edge("aten.mean.dim"),), layout=Layout.CARRIES, kind=OpKind.COMPUTE,
                    constraints=f"output shares the input's qparams; {_NO_OP}",
                    check=_check, no_op=_reduces_nothing, convert=_converter("MEAN"), quantization=_SHARED),
    NeutronOperator(name="aten.sum.dim_IntList",
                    annotated_as={
                        aten.sum.dim_IntList: SHARED,
                        aten.sum.default: SHARED,
                    }, targets=(edge("aten.sum.dim_IntList"),),
                    layout=Layout.CARRIES, kind=OpKind.COMPUTE,
                    constraints=("output shares the input's qparams, so a sum outside the input's range saturates "
                                 f"(as in the quantized PyTorch model); lowered as MEAN then MUL; {_NO_OP}"),
                    check=_check, no_op=_reduces_nothing, convert=_convert_sum, quantization=_SHARED),
    NeutronOperator(name="aten.amax.default",
                    annotated_as={
                        aten.amax.default: SHARED,
                    }, targets=(edge("aten.amax.default"),),
                    layout=Layout.CARRIES, kind=OpKind.COMPUTE,
                    constraints=f"output shares the input's qparams; {_NO_OP}",
                    check=_check, no_op=_reduces_nothing, convert=_converter("REDUCE_MAX"),
                    quantization=_SHARED, qparams=QParamsContract.OUTPUT_EQUALS_INPUT),
    NeutronOperator(name="aten.amin.default",
                    annotated_as={
                        aten.amin.default: SHARED,
                    }, targets=(edge("aten.amin.default"),),
                    layout=Layout.CARRIES, kind=OpKind.COMPUTE,
                    constraints=f"output shares the input's qparams; {_NO_OP}",
                    check=_check, no_op=_reduces_nothing, convert=_converter("REDUCE_MIN"),
                    quantization=_SHARED, qparams=QParamsContract.OUTPUT_EQUALS_INPUT),
]
