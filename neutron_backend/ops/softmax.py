"""Softmax over the channel dimension."""

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


def _convert(node: Node, ctx) -> None:
    from ai_edge_litert import schema_py_generated as schema

    channels_last = _runs_channels_last(node)
    x = ctx.input(node, 0, channels_last=channels_last)
    output = ctx.output(node, channels_last=channels_last)
    options = schema.SoftmaxOptionsT()
    options.beta = 1.0
    q = ctx.output_qparams(node)
    if _output_form(q.scale, q.zero_point) == "native":
        ctx.builder.add_operator("SOFTMAX", [x], [output], options)
        return
    native = ctx.builder.add_tensor(ctx.name(f"{node.name}_native"), ctx.builder.tensor_shape(output), "int8",
                                    scale=OUTPUT_SCALE, zero_point=OUTPUT_ZERO_POINT)
    ctx.builder.add_operator("SOFTMAX", [x], [native], options)
    ctx.builder.add_operator("RELU_0_TO_1", [native], [output])


def _check_target(node: Node, ctx: CheckContext) -> Verdict:
    shape = shape_of(node)
    channels = shape[softmax_dim(node)]
    total = numel(shape)
    if channels > MAX_CHANNELS:
        return reject(f"C = {channels} > {MAX_CHANNELS} channels")
    if total // channels > MAX_OTHER:
        return reject(f"product of non-channel dims = {total // channels} > {MAX_OTHER}")
    if total > MAX_TOTAL:
        return reject(f"total size = {total} > {MAX_TOTAL}")
    return SUPPORTED


OPERATORS = [
    NeutronOperator(name="aten._softmax.default",
                    annotated_as={
                        aten.softmax.int: FixedOutput(SOFTMAX_SCALE, SOFTMAX_ZERO_POINT,
                                                      zero_point_0_scale=2 * SOFTMAX_SCALE),
                    }, aliases=("softmax",),
                    targets=(edge("aten._softmax.default"),), layout=Layout.CARRIES, kind=OpKind.COMPUTE,
                    constraints=("over the channel dim (1) or the last dim, transposed when the value's layout puts "
                                 f"the other one last; C <= {MAX_CHANNELS}; product of other dims <= {MAX_OTHER}; "
                                 f"total <= {MAX_TOTAL}"),
                    check=_check, check_target=_check_target, convert=_convert,
                    quantization=("int8; output fixed at scale 1/256, zero point -128 (1/128, zero point 0 when it "
                                  "feeds an input that needs zero point 0)"), qparams=QParamsContract.FIXED_OUTPUT),
]
