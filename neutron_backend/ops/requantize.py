"""Requantization: a dequantize -> quantize pair between two quantized operators, which changes a value's qparams.

Quantizers leave such a pair where two constraints meet, e.g. a softmax's fixed output qparams (1/256, -128) feeding a
cat whose inputs share the qparams of its other inputs. On the CPU the pair would cut the model into two partitions
with a round trip between them; Neutron runs it as MUL by a constant 1 into the new qparams: one requantization,
as the pair computes in the quantized PyTorch model.
"""

from __future__ import annotations

import numpy as np
from torch.fx import Node

from neutron_backend.ops.base import SUPPORTED, CheckContext, Layout, NeutronOperator, OpKind, Verdict
from neutron_backend.ops.edge import edge


def _check(node: Node, ctx: CheckContext) -> Verdict:
    """ClusterIndex makes only per-tensor dequantize -> quantize pairs into clusters (`is_requantization`), and the
    partitioner checks their int8 dtypes; nothing is left to reject."""
    return SUPPORTED


def _convert(node: Node, ctx) -> None:
    from ai_edge_litert import schema_py_generated as schema

    x = ctx.input(node, 0)
    output = ctx.output(node, channels_last=ctx.input_is_channels_last(node, 0))
    one = ctx.builder.add_tensor(ctx.name(f"{node.name}_one"), [], "int8", data=np.array(1, dtype=np.int8),
                                 scale=1.0, zero_point=0)
    ctx.builder.add_operator("MUL", [x, one], [output], schema.MulOptionsT())


OPERATORS = [
    NeutronOperator(
        name="quantized_decomposed.quantize_per_tensor.default",
        targets=(edge("quantized_decomposed.quantize_per_tensor.default"),), layout=Layout.CARRIES, kind=OpKind.COMPUTE,
        constraints=("only as a requantization: the quantize of a dequantized value between two quantized operators "
                     "(e.g. softmax -> cat); lowered as MUL by 1; alone in a partition it is not delegated"),
        check=_check, convert=_convert, no_op=lambda node: True, quantization="int8 per-tensor in and out"),
]
