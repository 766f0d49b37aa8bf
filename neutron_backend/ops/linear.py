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
    reject,
    shape_of,
)
from neutron_backend.ops.edge import edge


def _operands(node: Node) -> tuple[Node | None, Node, Node]:
    """(bias, input, weight) of addmm or mm."""
    if len(node.args) == 3:
        return node.args[0], node.args[1], node.args[2]
    return None, node.args[0], node.args[1]


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
        for name, default in (("beta", 1), ("alpha", 1)):
            value = arg(node, 3 if name == "beta" else 4, name, default)
            if value != 1:
                return reject(f"{name}={value}; only alpha = beta = 1 is supported")
    weight_q = ctx.input_qparams(node, 2 if bias is not None else 1)
    if weight_q is not None and not weight_q.symmetric:
        return reject("weights must be quantized symmetrically (zero point 0); use NeutronQuantizer")
    return SUPPORTED


def _macs(node: Node) -> int:
    _, x, weight = _operands(node)
    m, k = shape_of(x)
    return m * k * shape_of(weight)[1]


_CONSTRAINTS = "rank-2 static weight (and bias); alpha = beta = 1; bias shape [P] or [1, P]"
OPERATORS = [
    NeutronOperator(name="aten.addmm.default", targets=(edge("aten.addmm.default"),), kind=OpKind.COMPUTE,
                    constraints=_CONSTRAINTS, check=_check, macs=_macs, weight_args=(0, 2),
                    quantization="int8 activations; int8 symmetric per-tensor weights; int32 bias"),
    NeutronOperator(name="aten.mm.default", targets=(edge("aten.mm.default"),), kind=OpKind.COMPUTE,
                    constraints="rank-2 static weight", check=_check, macs=_macs, weight_args=(1,),
                    quantization="int8 activations; int8 symmetric per-tensor weights"),
]
