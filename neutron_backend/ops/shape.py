"""Shape operators: they move data only, so alone in a partition they are no-ops."""

from __future__ import annotations

from torch.fx import Node

from neutron_backend.ops.base import SUPPORTED, CheckContext, NeutronOperator, OpKind, Verdict
from neutron_backend.ops.edge import edge


def _check(node: Node, ctx: CheckContext) -> Verdict:
    return SUPPORTED


_CONSTRAINTS = "static shape; alone in a partition it is a no-op and stays on the CPU"
OPERATORS = [
    NeutronOperator(name="aten.view_copy.default", targets=(edge("aten.view_copy.default"),), kind=OpKind.SHAPE,
                    constraints=_CONSTRAINTS, check=_check, quantization="int8; output shares the input's qparams"),
    NeutronOperator(name="aten.permute_copy.default", targets=(edge("aten.permute_copy.default"),),
                    kind=OpKind.SHAPE, constraints=_CONSTRAINTS, check=_check,
                    quantization="int8; output shares the input's qparams"),
    NeutronOperator(name="aten.clone.default", targets=(edge("aten.clone.default"),
                                                        edge("dim_order_ops._clone_dim_order.default")),
                    kind=OpKind.SHAPE, constraints=_CONSTRAINTS, check=_check,
                    quantization="int8; output shares the input's qparams"),
]
