"""Pooling: average, adaptive average, max."""

from __future__ import annotations

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
    pair,
    reject,
    shape_of,
)
from neutron_backend.ops.edge import edge
from neutron_backend.quantizer.kinds import (
    SHARED,
    aten,
)

MAX_KERNEL_STRIDE = 4096


def pool_params(node: Node) -> dict:
    """kernel, stride, padding (pairs), ceil_mode, and the op-specific flags of a pooling node."""
    kernel = pair(node.args[1])
    stride_arg = arg(node, 2, "stride", [])
    return dict(
        kernel=kernel,
        stride=pair(stride_arg) if stride_arg else kernel,
        padding=pair(arg(node, 3, "padding", 0)),
        ceil_mode=bool(arg(node, 5 if "max_pool" in node.target._schema.name else 4, "ceil_mode", False)),
    )


def _limits(kernel: tuple[int, int], stride: tuple[int, int]) -> Verdict:
    for label, values in (("kernel", kernel), ("stride", stride)):
        if any(v > MAX_KERNEL_STRIDE for v in values):
            return reject(f"{label} {values[0]}x{values[1]} exceeds Neutron's limit of {MAX_KERNEL_STRIDE} per axis")
    return SUPPORTED


def _rank4(node: Node) -> Verdict:
    rank = len(shape_of(node.args[0]))
    return SUPPORTED if rank == 4 else reject(f"input rank {rank}; 2D pooling needs a rank-4 input")


def _check_avg(node: Node, ctx: CheckContext) -> Verdict:
    p = pool_params(node)
    if not (verdict := _rank4(node)):
        return verdict
    if p["ceil_mode"]:
        return reject("ceil_mode=True is not supported; use ceil_mode=False")
    if arg(node, 6, "divisor_override", None) is not None:
        return reject(f"divisor_override={arg(node, 6, 'divisor_override')} is not supported")
    if any(p["padding"]) and not arg(node, 5, "count_include_pad", True):
        return reject("count_include_pad=False with padding cannot be expressed exactly; padding is added as "
                      "zero-point values that the average counts")
    return SUPPORTED


def _check_avg_target(node: Node, ctx: CheckContext) -> Verdict:
    p = pool_params(node)
    return _limits(p["kernel"], p["stride"])


def _check_adaptive(node: Node, ctx: CheckContext) -> Verdict:
    if not (verdict := _rank4(node)):
        return verdict
    h, w = shape_of(node.args[0])[2:]
    oh, ow = shape_of(node)[2:]
    if h % oh or w % ow:
        return reject(f"input {h}x{w} is not divisible by output {oh}x{ow}; adaptive pooling must reduce to a "
                      "regular kernel")
    return _limits((h // oh, w // ow), (h // oh, w // ow))


def _check_max(node: Node, ctx: CheckContext) -> Verdict:
    p = pool_params(node)
    if not (verdict := _rank4(node)):
        return verdict
    dilation = pair(arg(node, 4, "dilation", 1))
    if dilation != (1, 1):
        return reject(f"dilation {dilation[0]}x{dilation[1]} is not supported; only 1")
    if p["ceil_mode"]:
        return reject("ceil_mode=True is not supported; use ceil_mode=False")
    return SUPPORTED


def _check_max_target(node: Node, ctx: CheckContext) -> Verdict:
    stride = pool_params(node)["stride"]
    if any(v > MAX_KERNEL_STRIDE for v in stride):
        return reject(f"stride {stride[0]}x{stride[1]} exceeds Neutron's limit of {MAX_KERNEL_STRIDE} per axis")
    return SUPPORTED


def _emit_pool(node: Node, ctx, op: str, kernel, stride, padding, pad_value: int | None) -> None:
    from ai_edge_litert import schema_py_generated as schema

    x = ctx.input(node, 0, channels_last=True)
    if any(padding):
        ph, pw = padding
        x = ctx.pad(x, node, [(0, 0), (ph, ph), (pw, pw), (0, 0)], value=pad_value)
    output = ctx.output(node, channels_last=True)
    options = schema.Pool2DOptionsT()
    options.padding = schema.Padding.VALID
    options.filterHeight, options.filterWidth = kernel
    options.strideH, options.strideW = stride
    options.fusedActivationFunction = ctx.fused_activation(node)
    ctx.builder.add_operator(op, [x], [output], options)


def _convert_avg(node: Node, ctx) -> None:
    p = pool_params(node)
    _emit_pool(node, ctx, "AVERAGE_POOL_2D", p["kernel"], p["stride"], p["padding"], None)


def _convert_adaptive(node: Node, ctx) -> None:
    h, w = shape_of(node.args[0])[2:]
    oh, ow = shape_of(node)[2:]
    kernel = (h // oh, w // ow)
    _emit_pool(node, ctx, "AVERAGE_POOL_2D", kernel, kernel, (0, 0), None)


def _convert_max(node: Node, ctx) -> None:
    p = pool_params(node)
    # Max pooling pads with the dtype minimum, so padding never wins the max.
    _emit_pool(node, ctx, "MAX_POOL_2D", p["kernel"], p["stride"], p["padding"], -128)


OPERATORS = [
    NeutronOperator(name="aten.avg_pool2d.default",
                    annotated_as={
                        aten.avg_pool2d.default: SHARED,
                    }, aliases=("avg_pool1d",), targets=(edge("aten.avg_pool2d.default"),),
                    layout=Layout.CHANNELS_FIRST, kind=OpKind.COMPUTE,
                    constraints=("no ceil_mode; no divisor_override; kernel, stride <= 4096; "
                                                      "padding only with count_include_pad"),
                    check=_check_avg, check_target=_check_avg_target, convert=_convert_avg,
                    quantization="int8; output shares the input's qparams",
                    qparams=QParamsContract.OUTPUT_EQUALS_INPUT),
    NeutronOperator(name="aten._adaptive_avg_pool2d.default",
                    annotated_as={
                        aten.adaptive_avg_pool2d.default: SHARED,
                    }, aliases=("adaptive_avg_pool2d",),
                    targets=(edge("aten._adaptive_avg_pool2d.default"),),
                    layout=Layout.CHANNELS_FIRST, kind=OpKind.COMPUTE,
                    constraints="input size divisible by output size; resulting kernel, stride <= 4096",
                    check=_check_adaptive, convert=_convert_adaptive,
                    quantization="int8; output shares the input's qparams",
                    qparams=QParamsContract.OUTPUT_EQUALS_INPUT),
    NeutronOperator(name="aten.max_pool2d_with_indices.default",
                    annotated_as={
                        aten.max_pool2d.default: SHARED,
                    }, aliases=("max_pool2d", "max_pool1d"),
                    targets=(edge("aten.max_pool2d_with_indices.default"), edge("aten.max_pool2d.default")),
                    layout=Layout.CHANNELS_FIRST, kind=OpKind.COMPUTE,
                    constraints="dilation 1; no ceil_mode; indices unused; stride <= 4096", requantizations=0,
                    check=_check_max, check_target=_check_max_target, convert=_convert_max,
                    quantization="int8; output shares the input's qparams",
                    qparams=QParamsContract.OUTPUT_EQUALS_INPUT),
]
