"""Convolution (2D, depthwise)."""

from __future__ import annotations

from torch.fx import Node

from neutron_backend.ops.base import (
    SUPPORTED,
    CheckContext,
    NeutronOperator,
    OpKind,
    Verdict,
    ceil_to,
    numel,
    reject,
    shape_of,
)
from neutron_backend.ops.edge import edge

# Neutron's limits (facts.md, from NXP's Neutron documentation as applied by NXP's backend).
MAX_KERNEL_STRIDE_DILATION = 4096
MAX_WEIGHT_SIZE = 65535


def _params(node: Node) -> dict:
    x, w, b, stride, padding, dilation, transposed, output_padding, groups = node.args
    return dict(x=x, w=w, b=b, stride=list(stride), padding=list(padding), dilation=list(dilation),
                transposed=bool(transposed), output_padding=list(output_padding), groups=int(groups))


def is_depthwise(node: Node) -> bool:
    p = _params(node)
    cin = shape_of(p["x"])[1]
    cout = shape_of(p["w"])[0]
    return p["groups"] > 1 and p["groups"] == cin == cout


def _check(node: Node, ctx: CheckContext) -> Verdict:
    p = _params(node)
    rank = len(shape_of(p["x"]))
    if p["transposed"]:
        return reject("transposed convolution is not supported yet")
    if rank != 4:
        return reject(f"{rank - 2}D convolution is not supported; only 2D (input rank 4), got input rank {rank}")
    if not ctx.is_static(p["w"]):
        return reject(f"weight '{p['w'].name}' is computed at run time; Neutron needs constant weights")
    if p["b"] is not None and not ctx.is_static(p["b"]):
        return reject(f"bias '{p['b'].name}' is computed at run time; Neutron needs a constant bias")
    cin, cout = shape_of(p["x"])[1], shape_of(p["w"])[0]
    if p["groups"] != 1 and not is_depthwise(node):
        return reject(f"grouped convolution (groups={p['groups']}, Cin={cin}, Cout={cout}) is not supported yet; "
                      "Neutron runs groups=1 or depthwise (groups = Cin = Cout)")
    weight_q = ctx.input_qparams(node, 1)
    if weight_q is not None:
        if not weight_q.symmetric:
            return reject("weights must be quantized symmetrically (zero point 0); use NeutronQuantizer")
        if weight_q.per_channel and weight_q.axis != 0:
            return reject(f"per-channel weight quantization must be on axis 0 (output channels), got axis "
                          f"{weight_q.axis}")
    return SUPPORTED


def _check_target(node: Node, ctx: CheckContext) -> Verdict:
    p = _params(node)
    kh, kw = shape_of(p["w"])[2:4]
    for label, values in (("kernel", [kh, kw]), ("stride", p["stride"]), ("dilation", p["dilation"])):
        if any(v > MAX_KERNEL_STRIDE_DILATION for v in values):
            return reject(f"{label} {'x'.join(map(str, values))} exceeds Neutron's limit of "
                          f"{MAX_KERNEL_STRIDE_DILATION} per axis")
    cin = shape_of(p["x"])[1]
    num_macs = ctx.target.num_macs
    size = kh * kw * ceil_to(cin, num_macs)
    if size > MAX_WEIGHT_SIZE:
        return reject(f"kernel {kh}x{kw} x ceil(Cin={cin}, {num_macs}) = {size} > {MAX_WEIGHT_SIZE} "
                      f"(Neutron's weight-size limit on {ctx.target.name})")
    return SUPPORTED


def _macs(node: Node) -> int:
    w = shape_of(node.args[1])
    return numel(shape_of(node)) * numel(w[1:])


def _convert(node: Node, ctx) -> None:
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    p = _params(node)
    x_q = ctx.input_qparams(node, 0)
    weights, w_q = ctx.weight(node, 1)
    cout = weights.shape[0]
    w_scales = np.broadcast_to(np.asarray(w_q.scale, dtype=np.float64), (cout,))
    if p["b"] is not None:
        bias_raw, b_q = ctx.weight(node, 2)
        bias_float = (bias_raw.astype(np.float64) - np.asarray(b_q.zero_point)) * np.asarray(b_q.scale)
    else:
        bias_float = np.zeros(cout)
    bias = np.round(bias_float / (x_q.scale * w_scales)).astype(np.int32)

    x = ctx.input(node, 0, channels_last=True)
    ph, pw = p["padding"]
    if ph or pw:
        x = ctx.pad(x, node, [(0, 0), (ph, ph), (pw, pw), (0, 0)])
    depthwise = is_depthwise(node)
    if depthwise:
        filters, quantized_dimension = weights.transpose(1, 2, 3, 0), 3  # [1, kH, kW, Cout]
    else:
        filters, quantized_dimension = weights.transpose(0, 2, 3, 1), 0  # OHWI
    filter_id = ctx.builder.add_tensor(ctx.name(f"{node.name}_weights"), filters.shape, "int8",
                                       scale=[float(s) for s in w_scales], zero_point=0,
                                       quantized_dimension=quantized_dimension, data=filters)
    bias_id = ctx.builder.add_tensor(ctx.name(f"{node.name}_bias"), bias.shape, "int32",
                                     scale=[float(s) for s in x_q.scale * w_scales], zero_point=0, data=bias)
    output = ctx.output(node, channels_last=True)
    options = schema.DepthwiseConv2DOptionsT() if depthwise else schema.Conv2DOptionsT()
    options.padding = schema.Padding.VALID
    options.strideH, options.strideW = p["stride"]
    options.dilationHFactor, options.dilationWFactor = p["dilation"]
    options.fusedActivationFunction = ctx.fused_activation(node)
    if depthwise:
        options.depthMultiplier = 1
    ctx.builder.add_operator("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D", [x, filter_id, bias_id], [output],
                             options)


OPERATORS = [
    NeutronOperator(
        name="aten.convolution.default",
        targets=(edge("aten.convolution.default"),),
        kind=OpKind.COMPUTE,
        constraints=("2D; groups = 1 or depthwise (groups = Cin = Cout); static weights and bias; kernel, stride, "
                     "dilation <= 4096; kH * kW * ceil_to(Cin, num_macs) <= 65535"),
        quantization="int8 activations; int8 symmetric per-channel weights; int32 bias",
        check=_check,
        check_target=_check_target,
        macs=_macs,
        weight_args=(1, 2),
        convert=_convert,
    ),
]
