"""Shape operators: they move data only, so alone in a partition they are no-ops."""

from __future__ import annotations

from torch.fx import Node

from neutron_backend.ops.base import SUPPORTED, CheckContext, NeutronOperator, OpKind, Verdict, reject, shape_of
from neutron_backend.ops.edge import edge


def _check(node: Node, ctx: CheckContext) -> Verdict:
    input_q, output_q = ctx.input_qparams(node, 0), ctx.output_qparams(node)
    if input_q is not None and output_q is not None and input_q != output_q:
        return reject(f"input and output are quantized differently (scale {input_q.scale:.6g} vs "
                      f"{output_q.scale:.6g}); a data-movement operator must keep its input's qparams "
                      "(NeutronQuantizer shares them)")
    return SUPPORTED


def _convert_view(node: Node, ctx) -> None:
    in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
    flattens_image = len(in_shape) == 4 and list(out_shape) == [in_shape[0], in_shape[1] * in_shape[2] * in_shape[3]]
    if flattens_image and ctx.input_is_channels_last(node, 0) and ctx.feeds_only_linear_inputs(node):
        # Flatten in NHWC order; the linear layer permutes its weights to match (no TRANSPOSE needed).
        x = ctx.input(node, 0)
        output = ctx.output(node, channels_last=False, flattened_from=tuple(in_shape[1:]))
    else:
        x = ctx.input(node, 0, channels_last=False)
        output = ctx.output(node, channels_last=False)
    ctx.builder.add_operator("RESHAPE", [x, ctx.int32_constant(f"{node.name}_shape", shape_of(node))], [output])


def _convert_permute(node: Node, ctx) -> None:
    rank = len(shape_of(node))
    perm = [d % rank for d in node.args[1]]
    x = ctx.input(node, 0, channels_last=False)
    output = ctx.output(node, channels_last=False)
    ctx.builder.add_operator("TRANSPOSE", [x, ctx.int32_constant(f"{node.name}_perm", perm)], [output])


def _convert_clone(node: Node, ctx) -> None:
    ctx.alias(node, node.args[0])


_CONSTRAINTS = "static shape; alone in a partition it is a no-op and stays on the CPU"
OPERATORS = [
    NeutronOperator(name="aten.view_copy.default", targets=(edge("aten.view_copy.default"),), kind=OpKind.SHAPE,
                    constraints=_CONSTRAINTS, check=_check, convert=_convert_view,
                    quantization="int8; output shares the input's qparams"),
    NeutronOperator(name="aten.permute_copy.default", targets=(edge("aten.permute_copy.default"),),
                    kind=OpKind.SHAPE, constraints=_CONSTRAINTS, check=_check, convert=_convert_permute,
                    quantization="int8; output shares the input's qparams"),
    NeutronOperator(name="aten.clone.default", targets=(edge("aten.clone.default"),
                                                        edge("dim_order_ops._clone_dim_order.default")),
                    kind=OpKind.SHAPE, constraints=_CONSTRAINTS, check=_check, convert=_convert_clone,
                    quantization="int8; output shares the input's qparams"),
]
