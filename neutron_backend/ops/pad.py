"""Padding: constant (PAD / PADV2) and reflection (MIRROR_PAD)."""

from __future__ import annotations

import numpy as np
import torch
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
from neutron_backend.ops.shape import to_ir_order, value_layout
from neutron_backend.quantizer.kinds import (
    SHARED,
    aten,
)


def _torch_paddings(node: Node) -> list[tuple[int, int]]:
    """(before, after) per torch dim; torch lists pads from the last dim backwards."""
    rank = len(shape_of(node.args[0]))
    pad = list(node.args[1])
    paddings = [(0, 0)] * rank
    for i in range(len(pad) // 2):
        paddings[rank - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    return paddings


def _check_pad_list(node: Node, ctx: CheckContext) -> Verdict:
    pad = node.args[1]
    if any(p < 0 for p in pad):
        return reject(f"negative padding {list(pad)} (cropping) is not supported; slice the tensor instead")
    return SUPPORTED


def _quantized_pad_value(value: float, scale: float, zero_point: int) -> int:
    """The pad value as quantize_per_tensor computes it (float32, round half to even), before clamping."""
    scaled = torch.tensor(value, dtype=torch.float32) * (1.0 / scale)
    return int(torch.round(scaled).item()) + zero_point


def _check_constant(node: Node, ctx: CheckContext) -> Verdict:
    if not (verdict := _check_pad_list(node, ctx)):
        return verdict
    value = float(arg(node, 2, "value", 0.0))
    qparams = ctx.output_qparams(node) or ctx.input_qparams(node, 0)
    if qparams is not None and isinstance(qparams.scale, float):
        q = _quantized_pad_value(value, qparams.scale, qparams.zero_point)
        if not qparams.qmin <= q <= qparams.qmax:
            low = (qparams.qmin - qparams.zero_point) * qparams.scale
            high = (qparams.qmax - qparams.zero_point) * qparams.scale
            return reject(f"pad value {value:g} is outside [{low:.6g}, {high:.6g}], the range representable with the "
                          "input's qparams that the padded output shares")
    return SUPPORTED


def _paddings_tensor(node: Node, ctx, channels_last: bool) -> int:
    paddings = to_ir_order(_torch_paddings(node), channels_last)
    return ctx.int32_constant(f"{node.name}_paddings", paddings)


def _convert_constant(node: Node, ctx) -> None:
    channels_last = value_layout(node, ctx)
    x = ctx.input(node, 0, channels_last=channels_last)
    qparams = ctx.output_qparams(node)
    output = ctx.output(node, channels_last=channels_last)
    inputs = [x, _paddings_tensor(node, ctx, channels_last)]
    value = _quantized_pad_value(float(arg(node, 2, "value", 0.0)), qparams.scale, qparams.zero_point)
    if value == qparams.zero_point:
        ctx.builder.add_operator("PAD", inputs, [output])  # int8 PAD fills with the output zero point
        return
    constant = ctx.builder.add_tensor(ctx.name(f"{node.name}_pad_value"), [], "int8",
                                      data=np.array(value, dtype=np.int8), scale=qparams.scale,
                                      zero_point=qparams.zero_point)
    ctx.builder.add_operator("PADV2", [*inputs, constant], [output])


def _convert_reflection(node: Node, ctx) -> None:
    from ai_edge_litert import schema_py_generated as schema

    channels_last = value_layout(node, ctx)
    x = ctx.input(node, 0, channels_last=channels_last)
    output = ctx.output(node, channels_last=channels_last)
    options = schema.MirrorPadOptionsT()
    options.mode = schema.MirrorPadMode.REFLECT
    ctx.builder.add_operator("MIRROR_PAD", [x, _paddings_tensor(node, ctx, channels_last)], [output], options)


_SHARED = "int8; output shares the input's qparams"
_NO_OP = "alone in a partition it is a no-op and stays on the CPU"
OPERATORS = [
    NeutronOperator(name="aten.constant_pad_nd.default",
                    annotated_as={
                        aten.pad.default: SHARED,
                        aten.constant_pad_nd.default: SHARED,
                    }, aliases=("pad",),
                    targets=(edge("aten.constant_pad_nd.default"),),
                    layout=Layout.CARRIES, kind=OpKind.SHAPE,
                    constraints=("non-negative pads; the pad value within the range of the input's qparams; "
                                 f"{_NO_OP}"),
                    check=_check_constant, convert=_convert_constant, quantization=_SHARED,
                    qparams=QParamsContract.OUTPUT_EQUALS_INPUT),
    *(NeutronOperator(name=f"aten.{name}.default", targets=(edge(f"aten.{name}.default"),), aliases=("pad",),
                      annotated_as={getattr(aten, name).default: SHARED}, layout=Layout.CARRIES, kind=OpKind.SHAPE,
                      constraints=f"non-negative pads (torch keeps each smaller than its dim); {_NO_OP}",
                      check=_check_pad_list, convert=_convert_reflection, quantization=_SHARED,
                      qparams=QParamsContract.OUTPUT_EQUALS_INPUT)
      for name in ("reflection_pad1d", "reflection_pad2d")),
]
