"""Linear layers: addmm (with bias) and mm."""

from __future__ import annotations

from torch.fx import Node

from neutron_backend.ops.base import (
    SUPPORTED,
    CheckContext,
    NeutronOperator,
    OpKind,
    Verdict,
    arg,
    float_bias_problem,
    reject,
    shape_of,
)
from neutron_backend.ops.edge import edge
from neutron_backend.quantizer.kinds import (
    Weighted,
    aten,
)


def _operands(node: Node) -> tuple[Node | None, Node, Node]:
    """(bias, input, weight) of addmm or mm."""
    if len(node.args) == 3:
        return node.args[0], node.args[1], node.args[2]
    return None, node.args[0], node.args[1]


def _output_feature_axis(weight: Node) -> int | None:
    """The axis of the dequantized weight holding the output features: mm consumes [K, N], so 1 for a weight used
    as it is, 0 for nn.Linear's [N, K] weight transposed on its way (permute_copy, t_copy); None when unknown."""
    if weight.op != "call_function":
        return 1
    name = weight.target._schema.name.split("::")[-1] if hasattr(weight.target, "_schema") else ""
    if name.startswith("dequantize"):
        return 1
    if name in ("permute_copy", "t_copy") and weight.args[0].op == "call_function":
        return 0
    return None


def _check(node: Node, ctx: CheckContext) -> Verdict:
    bias, x, weight = _operands(node)
    if len(shape_of(weight)) != 2:
        return reject(f"weight must be rank 2, got shape {list(shape_of(weight))}")
    if not ctx.is_static(weight):
        return reject(f"weight '{weight.name}' is computed at run time; Neutron needs constant weights "
                      "(a matmul of two activations is bmm)")
    if bias is not None:
        if not ctx.is_static(bias):
            return reject(f"bias '{bias.name}' is computed at run time; Neutron needs a constant bias")
        p = shape_of(weight)[1]
        if list(shape_of(bias)) not in ([p], [1, p]):
            return reject(f"bias shape {list(shape_of(bias))} is not [{p}] or [1, {p}]")
        if problem := float_bias_problem(node, ctx, 1, 2, 0):
            return reject(problem)
        for name, default in (("beta", 1), ("alpha", 1)):
            value = arg(node, 3 if name == "beta" else 4, name, default)
            if value != 1:
                return reject(f"{name}={value}; only alpha = beta = 1 is supported")
    weight_q = ctx.input_qparams(node, 2 if bias is not None else 1)
    if weight_q is not None and weight_q.per_channel and weight_q.axis != _output_feature_axis(weight):
        return reject(f"weights are quantized per channel along axis {weight_q.axis}, which is not the output "
                      "features of this linear layer; Neutron takes one weight scale per output feature (or one "
                      "per tensor)")
    if weight_q is not None and not weight_q.symmetric:
        return reject("weights must be quantized symmetrically (zero point 0); use NeutronQuantizer")
    return SUPPORTED


def _macs(node: Node) -> int:
    _, x, weight = _operands(node)
    m, k = shape_of(x)
    return m * k * shape_of(weight)[1]


def _convert(node: Node, ctx) -> None:
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    has_bias = len(node.args) == 3
    weight_index = 2 if has_bias else 1
    x_q = ctx.input_qparams(node, weight_index - 1)
    weights, w_q = ctx.weight(node, weight_index)  # [K, N] as mm consumes it
    weights = np.ascontiguousarray(weights.T)  # FULLY_CONNECTED takes [N, K]
    flattened_from = ctx.input_flattened_from(node, weight_index - 1)
    if flattened_from is not None:
        # The input is an image flattened in NHWC order: reorder the weight columns from (C, H, W) to (H, W, C).
        channels, height, width = flattened_from
        weights = np.ascontiguousarray(
            weights.reshape(-1, channels, height, width).transpose(0, 2, 3, 1).reshape(weights.shape[0], -1))
    bias_id = -1
    if has_bias:
        bias_float = ctx.bias_values(node, 0)
        # The weight scale is a scalar, or one per output feature when quantized per channel.
        bias_scale = x_q.scale * np.asarray(w_q.scale, np.float64)
        bias = ctx.int32_bias(node, bias_float, bias_scale)
        bias_id = ctx.builder.add_tensor(ctx.name(f"{node.name}_bias"), bias.shape, "int32",
                                         scale=bias_scale.tolist() if w_q.per_channel else float(bias_scale),
                                         zero_point=0, data=bias)
    weight_id = ctx.builder.add_tensor(ctx.name(f"{node.name}_weights"), weights.shape, "int8",
                                       scale=w_q.scale, zero_point=0, data=weights)
    x = ctx.input(node, weight_index - 1)
    output = ctx.output(node, channels_last=False)
    options = schema.FullyConnectedOptionsT()
    options.fusedActivationFunction = ctx.fused_activation(node)
    options.keepNumDims = False
    ctx.builder.add_operator("FULLY_CONNECTED", [x, weight_id, bias_id], [output], options)


_CONSTRAINTS = "rank-2 static weight (and bias); alpha = beta = 1; bias shape [P] or [1, P]"
OPERATORS = [
    NeutronOperator(name="aten.addmm.default",
                    annotated_as={
                        aten.linear.default: Weighted(per_channel=False),
                    }, aliases=("linear",),
                    targets=(edge("aten.addmm.default"),), kind=OpKind.COMPUTE,
                    constraints=_CONSTRAINTS, check=_check, macs=_macs, weight_args=(0, 2), float_bias_arg=0,
                    feature_input=1, convert=_convert,
                    quantization=("int8 activations; int8 symmetric weights, per tensor or per output feature; int32 "
                                  "bias (a float bias is quantized at s_in * s_w)")),
    NeutronOperator(name="aten.mm.default", aliases=("linear",),
                    targets=(edge("aten.mm.default"),), kind=OpKind.COMPUTE,
                    constraints="rank-2 static weight", check=_check, macs=_macs, weight_args=(1,), feature_input=0,
                    convert=_convert,
                    quantization="int8 activations; int8 symmetric weights, per tensor or per output feature"),
]
