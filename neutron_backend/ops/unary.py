"""Unary activations and elementwise math: sigmoid, tanh, hardswish, hardsigmoid, silu, leaky_relu, prelu, abs,
neg, exp, log, rsqrt.

Each maps to TFLite builtins of the Neutron IR. hardsigmoid and silu have no builtin of their own; they are kept
whole through ExecuTorch's decomposition (see NeutronPartitioner.ops_to_not_decompose) and lowered as:

- hardsigmoid(x) = relu6(x + 3) / 6: ADD(x, 3) with a fused RELU6 into a tensor of scale 6 * s_out, then MUL by
  the constant 1/6 into the output (scale s_out). The MUL multiplies by exactly 1 in the integer domain, so the
  only rounding is the ADD's: within one output step of the float result.
- silu(x) = x * sigmoid(x): LOGISTIC (fixed scale 1/256, zero point -128) then MUL with x.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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
    reject,
    shape_of,
)
from neutron_backend.ops.edge import edge
from neutron_backend.quantizer.kinds import (
    INDEPENDENT,
    FixedOutput,
    Slope,
    aten,
)

# Output qparams int8 LOGISTIC and TANH produce (facts.md: "Fixed output qparams"); TFLite's int8 LOGISTIC kernel
# refuses any other output quantization.
SIGMOID_SCALE, SIGMOID_ZERO_POINT = 1.0 / 256.0, -128
TANH_SCALE, TANH_ZERO_POINT = 1.0 / 128.0, 0
LEAKY_RELU_DEFAULT_SLOPE = 0.01


def _fixed_output(function: str, scale: float, zero_point: int, scale_text: str) -> Callable[[Node, CheckContext],
                                                                                              Verdict]:
    def check(node: Node, ctx: CheckContext) -> Verdict:
        q = ctx.output_qparams(node)
        if q is not None and (abs(q.scale - scale) > 1e-9 or q.zero_point != zero_point):
            return reject(f"output quantized with scale {q.scale:.6g}, zero point {q.zero_point}; int8 {function} "
                          f"needs scale {scale_text} and zero point {zero_point} (NeutronQuantizer fixes them)")
        return SUPPORTED

    return check


def _int8_only(node: Node, ctx: CheckContext) -> Verdict:
    """No condition beyond int8 input and output, which the partitioner checks for every operator."""
    return SUPPORTED


def _check_hardswish(node: Node, ctx: CheckContext) -> Verdict:
    """TFLite's int8 HARD_SWISH scales its input by s_in / 128 into the output in one multiplier it requires to be
    below 1 (its Prepare fails otherwise): an output scale at or below s_in / 128 cannot be computed."""
    x_q, out_q = ctx.input_qparams(node, 0), ctx.output_qparams(node)
    if x_q is not None and out_q is not None and (
            float(np.float32(1.0 / 128.0) * np.float32(x_q.scale)) / float(np.float32(out_q.scale)) >= 1.0):
        return reject(f"output scale {out_q.scale:.6g} is not above input scale {x_q.scale:.6g} / 128; int8 "
                      "HARD_SWISH needs s_out > s_in / 128 (NeutronQuantizer's observers give that for a calibrated "
                      "range)")
    return SUPPORTED


def _non_negative_input(function: str) -> Callable[[Node, CheckContext], Verdict]:
    """log and rsqrt: the int8 input must not be able to hold a negative value (zero point at the int8 minimum).

    The int8 RSQRT kernel fails on a negative input and int8 LOG returns its lowest level where torch gives NaN,
    so a negative value is never computed the same way; an input range starting at 0 rules it out statically.
    """

    def check(node: Node, ctx: CheckContext) -> Verdict:
        q = ctx.input_qparams(node, 0)
        if q is not None and q.zero_point != q.qmin:
            return reject(f"input zero point {q.zero_point} > {q.qmin} lets the int8 input hold negative values, "
                          f"where int8 {function} differs from torch (NaN); Neutron needs a non-negative input "
                          f"range (zero point {q.qmin}), e.g. the output of exp, sigmoid, softmax or abs")
        return SUPPORTED

    return check


# The largest x whose float32 exp(x) is finite: log(3.4028235e38).
EXP_INPUT_LIMIT = 88.72


def _check_exp(node: Node, ctx: CheckContext) -> Verdict:
    """exp: the largest value the int8 input can hold must have a finite float32 exp.

    TFLite's int8 EXP fills its table with float32 exp(x); past 88.72 that is infinite and its conversion to int8 is
    undefined, so such an input range cannot be computed the same way as torch's (the cross-quantizer soak found it).
    """
    q = ctx.input_qparams(node, 0)
    if q is None or q.per_channel or q.scale is None or q.zero_point is None:
        return SUPPORTED
    largest = q.scale * (q.qmax - q.zero_point)
    if largest > EXP_INPUT_LIMIT:
        return reject(f"the int8 input reaches {largest:g} (scale {q.scale:g} x ({q.qmax} - zero point "
                      f"{q.zero_point})), whose exp overflows float32 (finite only up to {EXP_INPUT_LIMIT}); "
                      f"quantize exp's input to a range ending at or below {EXP_INPUT_LIMIT}")
    return SUPPORTED


def _check_prelu(node: Node, ctx: CheckContext) -> Verdict:
    shape = shape_of(node)
    weight = node.args[1]  # torch itself checks it holds one slope or one per channel
    if not ctx.is_static(weight):
        return reject("the slope is computed at run time; Neutron needs a constant slope (a parameter)")
    q = ctx.input_qparams(node, 1)
    if q is not None and q.per_channel:
        return reject("slope quantized per channel; Neutron's int8 PRELU takes one scale for all slopes "
                      "(NeutronQuantizer quantizes it per tensor)")
    if len(shape) > 2 and not ctx.is_channels_first(node):
        return reject(f"rank-{len(shape)} input {list(shape)} is not in channels-first format (no convolution or "
                      "pooling defines its channel dim); Neutron runs prelu of rank > 2 only on channels-first "
                      "tensors")
    return SUPPORTED


# -- conversion ------------------------------------------------------------------------------------------------


def _unary(op: str, options: Callable[[Node], object] | None = None) -> Callable[[Node, object], None]:
    """A converter emitting one TFLite operator on the input, keeping the input's layout."""

    def convert(node: Node, ctx) -> None:
        channels_last = ctx.input_is_channels_last(node, 0)
        x = ctx.input(node, 0)
        output = ctx.output(node, channels_last=channels_last)
        ctx.builder.add_operator(op, [x], [output], None if options is None else options(node))

    return convert


def _leaky_relu_options(node: Node) -> object:
    from ai_edge_litert import schema_py_generated as schema

    options = schema.LeakyReluOptionsT()
    options.alpha = float(arg(node, 1, "negative_slope", LEAKY_RELU_DEFAULT_SLOPE))
    return options


def _scalar_constant(ctx, base: str, level: int, scale: float, zero_point: int) -> int:
    """A rank-0 int8 constant holding `level` with the given qparams."""
    return ctx.builder.add_tensor(ctx.name(base), [], "int8", scale=scale, zero_point=zero_point,
                                  data=np.array(level, np.int8))


def _convert_neg(node: Node, ctx) -> None:
    from ai_edge_litert import schema_py_generated as schema

    channels_last = ctx.input_is_channels_last(node, 0)
    x = ctx.input(node, 0)
    q = ctx.input_qparams(node, 0)
    # Zero in x's quantization is its zero point, so SUB(zero, x) is exact before requantization.
    zero = _scalar_constant(ctx, f"{node.name}_zero", q.zero_point, q.scale, q.zero_point)
    output = ctx.output(node, channels_last=channels_last)
    ctx.builder.add_operator("SUB", [zero, x], [output], schema.SubOptionsT())


def _convert_prelu(node: Node, ctx) -> None:
    rank = len(shape_of(node))
    channels_last = rank > 2  # the check admits rank > 2 only in channels-first format, NHWC in the IR
    x = ctx.input(node, 0, channels_last=channels_last)
    values, q = ctx.weight(node, 1)
    # One slope per channel along the IR's last axis (NHWC, or [N, C] for rank 2), broadcast over the others.
    slopes = values.reshape(-1)
    alpha = ctx.builder.add_tensor(ctx.name(f"{node.name}_slope"), list(slopes.shape), "int8", scale=q.scale,
                                   zero_point=q.zero_point, data=slopes.astype(np.int8))
    output = ctx.output(node, channels_last=channels_last)
    ctx.builder.add_operator("PRELU", [x, alpha], [output])


def _convert_hardsigmoid(node: Node, ctx) -> None:
    from ai_edge_litert import schema_py_generated as schema

    channels_last = ctx.input_is_channels_last(node, 0)
    x = ctx.input(node, 0)
    out_q = ctx.output_qparams(node)
    # relu6(x + 3) with scale 6 * s_out holds hardsigmoid(x) = relu6(x + 3) / 6 in the same integers as the output.
    shifted_q = dataclasses.replace(out_q, scale=6.0 * out_q.scale)
    shifted = ctx.new_tensor(f"{node.name}_relu6", ctx.builder.tensor_shape(x), shifted_q)
    three = _scalar_constant(ctx, f"{node.name}_three", 127, 3.0 / 127.0, 0)
    add_options = schema.AddOptionsT()
    add_options.fusedActivationFunction = schema.ActivationFunctionType.RELU6
    ctx.builder.add_operator("ADD", [x, three], [shifted], add_options)
    # 1/6 stored as the integer 1 with scale 1/6: the MUL's requantization multiplier is exactly 1.
    sixth = _scalar_constant(ctx, f"{node.name}_sixth", 1, 1.0 / 6.0, 0)
    output = ctx.output(node, channels_last=channels_last)
    ctx.builder.add_operator("MUL", [shifted, sixth], [output], schema.MulOptionsT())


def _convert_silu(node: Node, ctx) -> None:
    from ai_edge_litert import schema_py_generated as schema

    channels_last = ctx.input_is_channels_last(node, 0)
    x = ctx.input(node, 0)
    out_q = ctx.output_qparams(node)
    sigmoid_q = dataclasses.replace(out_q, scale=SIGMOID_SCALE, zero_point=SIGMOID_ZERO_POINT)
    sigmoid = ctx.new_tensor(f"{node.name}_sigmoid", ctx.builder.tensor_shape(x), sigmoid_q)
    ctx.builder.add_operator("LOGISTIC", [x], [sigmoid])
    output = ctx.output(node, channels_last=channels_last)
    ctx.builder.add_operator("MUL", [x, sigmoid], [output], schema.MulOptionsT())


_INT8 = "int8 input and output"


def _operator(name: str, annotated_as: dict, check: Callable[[Node, CheckContext], Verdict],
              convert: Callable[[Node, object], None], constraints: str = _INT8, **kwargs) -> NeutronOperator:
    # Every unary operator here is elementwise: its output keeps its input's format.
    return NeutronOperator(name=name, targets=(edge(name),), kind=OpKind.COMPUTE, constraints=constraints,
                           check=check, convert=convert, layout=Layout.CARRIES, annotated_as=annotated_as, **kwargs)


OPERATORS = [
    _operator("aten.sigmoid.default",
              {
                  aten.sigmoid.default: FixedOutput(SIGMOID_SCALE, SIGMOID_ZERO_POINT),
                  aten.sigmoid_.default: FixedOutput(SIGMOID_SCALE, SIGMOID_ZERO_POINT),
              }, _fixed_output("sigmoid (LOGISTIC)", SIGMOID_SCALE, SIGMOID_ZERO_POINT, "1/256"),
              _unary("LOGISTIC"), quantization="int8; output fixed at scale 1/256, zero point -128",
              qparams=QParamsContract.FIXED_OUTPUT),
    _operator("aten.tanh.default",
              {
                  aten.tanh.default: FixedOutput(TANH_SCALE, TANH_ZERO_POINT),
                  aten.tanh_.default: FixedOutput(TANH_SCALE, TANH_ZERO_POINT),
              }, _fixed_output("tanh", TANH_SCALE, TANH_ZERO_POINT, "1/128"), _unary("TANH"),
              quantization="int8; output fixed at scale 1/128, zero point 0",
              qparams=QParamsContract.FIXED_OUTPUT),
    _operator("aten.hardswish.default",
              {
                  aten.hardswish.default: INDEPENDENT,
                  aten.hardswish_.default: INDEPENDENT,
              }, _check_hardswish, _unary("HARD_SWISH"),
              constraints=f"{_INT8}; output scale > input scale / 128; kept whole through decomposition when "
                          "quantized"),
    _operator("aten.hardsigmoid.default",
              {
                  aten.hardsigmoid.default: INDEPENDENT,
                  aten.hardsigmoid_.default: INDEPENDENT,
              }, _int8_only, _convert_hardsigmoid,
              constraints=f"{_INT8}; kept whole through decomposition when quantized; runs as ADD 3 with fused "
                          "RELU6, then an exact MUL by 1/6"),
    _operator("aten.silu.default",
              {
                  aten.silu.default: INDEPENDENT,
                  aten.silu_.default: INDEPENDENT,
              }, _int8_only, _convert_silu, requantizations=2,
              constraints=f"{_INT8}; kept whole through decomposition when quantized; runs as LOGISTIC then MUL"),
    _operator("aten.leaky_relu.default",
              {
                  aten.leaky_relu.default: INDEPENDENT,
                  aten.leaky_relu_.default: INDEPENDENT,
              }, _int8_only, _unary("LEAKY_RELU", _leaky_relu_options),
              constraints=f"{_INT8}; any negative slope"),
    _operator("aten.prelu.default", {aten.prelu.default: Slope()}, _check_prelu, _convert_prelu,
              constraints=(f"{_INT8}; constant slope, one or one per channel, quantized per tensor; rank > 2 needs "
                           "channels-first format; kept whole through decomposition when quantized"),
              quantization="int8 per-tensor activations; int8 symmetric per-tensor slope"),
    _operator("aten.abs.default",
              {
                  aten.abs.default: INDEPENDENT,
                  aten.abs_.default: INDEPENDENT,
              }, _int8_only, _unary("ABS")),
    _operator("aten.neg.default",
              {
                  aten.neg.default: INDEPENDENT,
                  aten.neg_.default: INDEPENDENT,
              }, _int8_only, _convert_neg, constraints=f"{_INT8}; runs as SUB from a zero constant"),
    _operator("aten.exp.default",
              {
                  aten.exp.default: INDEPENDENT,
                  aten.exp_.default: INDEPENDENT,
              }, _check_exp, _unary("EXP"),
              constraints=f"{_INT8}; the input's largest value at most {EXP_INPUT_LIMIT} (finite float32 exp)"),
    _operator("aten.log.default",
              {
                  aten.log.default: INDEPENDENT,
                  aten.log_.default: INDEPENDENT,
              }, _non_negative_input("LOG"), _unary("LOG"),
              constraints=f"{_INT8}; input zero point -128 (non-negative input range)"),
    _operator("aten.rsqrt.default",
              {
                  aten.rsqrt.default: INDEPENDENT,
                  aten.rsqrt_.default: INDEPENDENT,
              }, _non_negative_input("RSQRT"), _unary("RSQRT"),
              constraints=f"{_INT8}; input zero point -128 (non-negative input range)"),
]
