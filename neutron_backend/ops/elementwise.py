"""Binary elementwise arithmetic: add."""

from __future__ import annotations

from torch.fx import Node

from neutron_backend.ops.base import (
    SUPPORTED,
    CheckContext,
    NeutronOperator,
    OpKind,
    Verdict,
    arg,
    numel,
    reject,
    shape_of,
)
from neutron_backend.ops.edge import edge


def _check_binary(node: Node, ctx: CheckContext) -> Verdict:
    a, b = node.args[0], node.args[1]
    if not hasattr(a, "meta") or not hasattr(b, "meta"):
        return reject("one operand is a Python scalar; Neutron needs two tensors (scalars become constants in a "
                      "later pass)")
    alpha = arg(node, 2, "alpha", 1)
    if alpha != 1:
        return reject(f"alpha={alpha}; only alpha = 1 is supported")
    out = numel(shape_of(node))
    if numel(shape_of(a)) != out and numel(shape_of(b)) != out:
        return reject(f"broadcasting both inputs {list(shape_of(a))} and {list(shape_of(b))} to "
                      f"{list(shape_of(node))}; Neutron needs one input with the output's element count")
    return SUPPORTED


def _convert_binary(node: Node, ctx) -> None:
    from ai_edge_litert import schema_py_generated as schema

    channels_last = ctx.prefers_channels_last(node)
    a = ctx.input(node, 0, channels_last=channels_last)
    b = ctx.input(node, 1, channels_last=channels_last)
    output = ctx.output(node, channels_last=channels_last)
    options = schema.AddOptionsT()
    options.fusedActivationFunction = ctx.fused_activation(node)
    ctx.builder.add_operator("ADD", [a, b], [output], options)


OPERATORS = [
    NeutronOperator(name="aten.add.Tensor", targets=(edge("aten.add.Tensor"),), kind=OpKind.COMPUTE,
                    constraints="two tensors; alpha = 1; one input has the output's element count",
                    check=_check_binary, convert=_convert_binary),
]
