"""Softmax over the channel dimension."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.fx import Node

from neutron_backend.ops.base import (
    SUPPORTED,
    CheckContext,
    Layout,
    NeutronOperator,
    OpKind,
    QParamsContract,
    Verdict,
    numel,
    reject,
    shape_of,
)
from neutron_backend.ops.edge import edge
from neutron_backend.quantizer.config import (
    SOFTMAX_SCALE,
    SOFTMAX_ZERO_POINT,
)
from neutron_backend.quantizer.kinds import (
    FixedOutput,
    aten,
)

MAX_CHANNELS = 2040
MAX_OTHER = 4096
MAX_TOTAL = 524288
OUTPUT_SCALE = 1.0 / 256.0
OUTPUT_ZERO_POINT = -128
# The same [0, 1) range with zero point 0, which a consumer such as bmm needs: NeutronQuantizer moves a softmax
# feeding one there, and the IR requantizes SOFTMAX's output with a RELU_0_TO_1.
SYMMETRIC_OUTPUT_SCALE = 1.0 / 128.0


def _output_form(scale: float, zero_point: int) -> str | None:
    """'native' for SOFTMAX's own output qparams, 'symmetric' for the zero-point-0 form, else None."""
    if abs(scale - OUTPUT_SCALE) <= 1e-9 and zero_point == OUTPUT_ZERO_POINT:
        return "native"
    if abs(scale - SYMMETRIC_OUTPUT_SCALE) <= 1e-9 and zero_point == 0:
        return "symmetric"
    return None


def softmax_dim(node: Node) -> int:
    """The dimension softmax normalises over, non-negative."""
    return node.args[1] % len(shape_of(node))


def _runs_channels_last(node: Node) -> bool:
    """SOFTMAX normalises the IR's last axis: torch dim 1 of a rank-3..5 value is last in the channels-last layout,
    the last torch dim in torch's own order. The layout follows from the dim alone, whatever the value's format."""
    rank = len(shape_of(node))
    return 3 <= rank <= 5 and softmax_dim(node) == 1


def _check(node: Node, ctx: CheckContext) -> Verdict:
    shape = shape_of(node)
    rank, dim = len(shape), softmax_dim(node)
    if dim != rank - 1 and not _runs_channels_last(node):
        last = rank - 1
        where = f"the channel dim (1) or the last dim ({last})" if 3 <= rank <= 5 else f"the channel dim ({last})"
        return reject(f"softmax over dim {dim} of a tensor of shape {list(shape)}; Neutron computes softmax over "
                      f"{where} only")
    output_q = ctx.output_qparams(node)
    if output_q is not None and _output_form(output_q.scale, output_q.zero_point) is None:
        return reject(f"output quantized with scale {output_q.scale:.6g}, zero point {output_q.zero_point}; int8 "
                      f"softmax needs scale 1/256 and zero point {OUTPUT_ZERO_POINT}, or 1/128 and zero point 0 "
                      "(NeutronQuantizer fixes them)")
    return SUPPORTED


def _limit_problem(shape: Sequence[int], dim: int) -> str | None:
    """Which of the target's softmax limits a value of `shape` normalised over `dim` breaks, or None."""
    channels, total = shape[dim], numel(shape)
    if channels > MAX_CHANNELS:
        return f"C = {channels} > {MAX_CHANNELS} channels"
    if total // channels > MAX_OTHER:
        return f"product of non-channel dims = {total // channels} > {MAX_OTHER}"
    if total > MAX_TOTAL:
        return f"total size = {total} > {MAX_TOTAL}"
    return None


def split_for_limits(shape: Sequence[int], dim: int) -> tuple[int, list[int]] | None:
    """How to run a softmax too big for one SOFTMAX as several: (axis, piece sizes along it), or None when it fits
    whole or no split along one axis fits.

    Exact: softmax normalises each row along `dim` on its own, so slicing another axis, normalising every piece
    and concatenating the pieces computes the same values with the same output qparams. The first axis (other
    than `dim`) whose pieces fit is split into as few, nearly equal pieces as fit.
    """
    channels, total = shape[dim], numel(shape)
    if channels > MAX_CHANNELS or _limit_problem(shape, dim) is None:
        return None
    for axis, size in enumerate(shape):
        if axis == dim or size == 1:
            continue
        rest = total // size  # elements per index along `axis`
        largest = min(MAX_TOTAL // rest, MAX_OTHER * channels // rest)
        if largest >= 1:
            count = math.ceil(size / largest)
            return axis, [size // count + (index < size % count) for index in range(count)]
    return None


def _emit_softmax(ctx, name: str, x: int, output: int) -> None:
    """SOFTMAX from `x` into `output` (int8 at 1/256, -128), in pieces when one SOFTMAX would break a limit."""
    from ai_edge_litert import schema_py_generated as schema

    options = schema.SoftmaxOptionsT()
    options.beta = 1.0
    shape = list(ctx.builder.tensor_shape(x))
    split = split_for_limits(shape, len(shape) - 1)
    if split is None:
        ctx.builder.add_operator("SOFTMAX", [x], [output], options)
        return
    axis, sizes = split
    in_scale, in_zero_point = ctx.builder.tensor_quantization(x)
    pieces, start = [], 0
    for index, size in enumerate(sizes):
        begin, piece_shape = [0] * len(shape), list(shape)
        begin[axis], piece_shape[axis] = start, size
        piece_in = ctx.builder.add_tensor(ctx.name(f"{name}_piece{index}_in"), piece_shape, "int8",
                                          scale=in_scale, zero_point=in_zero_point)
        ctx.builder.add_operator("SLICE", [x, ctx.int32_constant(f"{name}_piece{index}_begin", begin),
                                           ctx.int32_constant(f"{name}_piece{index}_size", piece_shape)], [piece_in])
        piece = ctx.builder.add_tensor(ctx.name(f"{name}_piece{index}"), piece_shape, "int8", scale=OUTPUT_SCALE,
                                       zero_point=OUTPUT_ZERO_POINT)
        ctx.builder.add_operator("SOFTMAX", [piece_in], [piece], options)
        pieces.append(piece)
        start += size
    concatenation = schema.ConcatenationOptionsT()
    concatenation.axis = axis
    ctx.builder.add_operator("CONCATENATION", pieces, [output], concatenation)


def _convert(node: Node, ctx) -> None:
    channels_last = _runs_channels_last(node)
    x = ctx.input(node, 0, channels_last=channels_last)
    output = ctx.output(node, channels_last=channels_last)
    q = ctx.output_qparams(node)
    if _output_form(q.scale, q.zero_point) == "native":
        _emit_softmax(ctx, node.name, x, output)
        return
    native = ctx.builder.add_tensor(ctx.name(f"{node.name}_native"), ctx.builder.tensor_shape(output), "int8",
                                    scale=OUTPUT_SCALE, zero_point=OUTPUT_ZERO_POINT)
    _emit_softmax(ctx, node.name, x, native)
    ctx.builder.add_operator("RELU_0_TO_1", [native], [output])


def _check_target(node: Node, ctx: CheckContext) -> Verdict:
    shape, dim = shape_of(node), softmax_dim(node)
    problem = _limit_problem(shape, dim)
    if problem is None or split_for_limits(shape, dim) is not None:
        return SUPPORTED
    return reject(problem if shape[dim] > MAX_CHANNELS else
                  f"{problem}, and no split along one other axis brings the pieces within the limits")


OPERATORS = [
    NeutronOperator(name="aten._softmax.default",
                    annotated_as={
                        aten.softmax.int: FixedOutput(SOFTMAX_SCALE, SOFTMAX_ZERO_POINT,
                                                      zero_point_0_scale=2 * SOFTMAX_SCALE),
                    }, aliases=("softmax",),
                    targets=(edge("aten._softmax.default"),), layout=Layout.CARRIES, kind=OpKind.COMPUTE,
                    constraints=("over the channel dim (1) or the last dim, transposed when the value's layout puts "
                                 f"the other one last; C <= {MAX_CHANNELS}; product of other dims <= {MAX_OTHER}; "
                                 f"total <= {MAX_TOTAL}; a larger value runs as pieces (SLICE, SOFTMAX each, "
                                 "CONCATENATION) split along one other axis when its pieces fit"),
                    check=_check, check_target=_check_target, convert=_convert,
                    quantization=("int8; output fixed at scale 1/256, zero point -128 (1/128, zero point 0 when it "
                                  "feeds an input that needs zero point 0)"), qparams=QParamsContract.FIXED_OUTPUT),
]
