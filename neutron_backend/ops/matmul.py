"""Batched matrix multiplication of two run-time tensors (bmm).

`matmul` of two activations reaches here as `bmm`: NeutronQuantizer's rewrite `matmul_to_bmm` turns it into one
before quantization, and `flatten_linear_input` turns a linear layer on a rank-3 input into reshape/addmm/reshape.
"""

from __future__ import annotations

from torch.fx import Node

from neutron_backend.ops.base import (
    SUPPORTED,
    CheckContext,
    NeutronOperator,
    OpKind,
    Verdict,
    reject,
    shape_of,
)
from neutron_backend.ops.edge import edge
from neutron_backend.quantizer.kinds import (
    SymmetricInputs,
    aten,
)


def _check(node: Node, ctx: CheckContext) -> Verdict:
    # aten.bmm itself only takes rank-3 inputs, so the rank needs no check.
    for index in (0, 1):
        q = ctx.input_qparams(node, index)
        if q is not None and q.zero_point != 0:
            return reject(f"input {index} is quantized with zero point {q.zero_point}; Neutron's batch matmul needs "
                          "zero point 0 on both inputs (NeutronQuantizer quantizes them symmetrically)")
    return SUPPORTED


def _macs(node: Node) -> int:
    batch, rows, inner = shape_of(node.args[0])
    return batch * rows * inner * shape_of(node.args[1])[2]


def _convert(node: Node, ctx) -> None:
    from ai_edge_litert import schema_py_generated as schema

    a = ctx.input(node, 0, channels_last=False)
    b = ctx.input(node, 1, channels_last=False)
    output = ctx.output(node, channels_last=False)
    options = schema.BatchMatMulOptionsT()
    options.adjX = False
    options.adjY = False
    ctx.builder.add_operator("BATCH_MATMUL", [a, b], [output], options)


OPERATORS = [
    NeutronOperator(name="aten.bmm.default",
                    annotated_as={
                        aten.bmm.default: SymmetricInputs(),
                    }, targets=(edge("aten.bmm.default"),), kind=OpKind.COMPUTE,
                    constraints="both input zero points 0 (rank 3 by definition)", check=_check, macs=_macs,
                    convert=_convert,
                    quantization="int8 activations; both inputs symmetric (zero point 0)"),
]
