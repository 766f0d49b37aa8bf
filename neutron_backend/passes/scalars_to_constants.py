"""Python scalars of elementwise arithmetic -> 0-d constant tensors.

`x + 3.0`, `x * 0.5`, `1 - x` carry their number as an argument, which the quantizer cannot observe or quantize,
so the operator would stay in float. As a constant tensor the number gets its own int8 qparams and the operator
becomes an ordinary two-tensor add/sub/mul.
"""

from __future__ import annotations

import logging

import torch
from torch.fx import GraphModule, Node

from neutron_backend.passes._graph import is_float_value, is_number, new_constant

ORDER = 20

logger = logging.getLogger(__name__)
aten = torch.ops.aten

# op -> the two-tensor op it becomes
_BINARY = {
    aten.add.Tensor: aten.add.Tensor, aten.add.Scalar: aten.add.Tensor,
    aten.sub.Tensor: aten.sub.Tensor, aten.sub.Scalar: aten.sub.Tensor,
    aten.mul.Tensor: aten.mul.Tensor, aten.mul.Scalar: aten.mul.Tensor,
}
_REVERSED = (aten.rsub.Scalar, aten.rsub.Tensor)  # rsub(x, c, alpha) = c - alpha * x


def _alpha(node: Node) -> float:
    return node.args[2] if len(node.args) > 2 else node.kwargs.get("alpha", 1)


def _constant(graph_module: GraphModule, number: float, node: Node) -> Node:
    """A 0-d float32 constant holding `number`, inserted before `node`."""
    with graph_module.graph.inserting_before(node):
        return new_constant(graph_module, "_neutron_scalar", torch.tensor(number, dtype=torch.float32), node)


def _rewrite(graph_module: GraphModule, node: Node) -> bool:
    if (node.target not in _BINARY and node.target not in _REVERSED) or len(node.args) < 2:
        return False
    tensor, number = node.args[0], node.args[1]
    if not (is_float_value(node) and is_float_value(tensor) and is_number(number)):
        return False
    alpha = _alpha(node)
    if node.target in _REVERSED:
        constant = _constant(graph_module, float(number), node)
        node.target = aten.sub.Tensor
        node.args, node.kwargs = (constant, tensor), ({} if alpha == 1 else {"alpha": alpha})
        return True
    # add/sub scale their second operand by alpha: fold it into the number.
    value = float(number) if node.target in (aten.mul.Tensor, aten.mul.Scalar) else float(number) * alpha
    node.target = _BINARY[node.target]
    node.args, node.kwargs = (tensor, _constant(graph_module, value, node)), {}
    return True


def run(graph_module: GraphModule) -> int:
    """Replaces the number operand of float add/sub/mul/rsub with a 0-d constant tensor.

    Returns the number of operators rewritten."""
    changed = sum(_rewrite(graph_module, node) for node in list(graph_module.graph.nodes)
                  if node.op == "call_function")
    if changed:
        graph_module.recompile()
        logger.debug("scalars_to_constants: %d scalar operand(s) made constant tensors", changed)
    return changed
