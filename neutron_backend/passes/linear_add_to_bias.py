"""Linear layer followed by the addition of a constant -> linear layer with that constant in its bias.

`linear(x, W) + c` (c broadcast along the output features only) is `linear(x, W, b + c)`: one operator instead of
two, and the addition costs nothing on the NPU. Subtracting a constant folds the same way with -c.
"""

from __future__ import annotations

import logging

import torch
from torch.fx import GraphModule, Node

from neutron_backend.passes._graph import constant_value, new_constant, static_shape

ORDER = 30

logger = logging.getLogger(__name__)
aten = torch.ops.aten


def _bias_of(node: Node) -> Node | None:
    return node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")


def _feature_vector(value: torch.Tensor, features: int) -> torch.Tensor | None:
    """`value` as a [features] vector when it broadcasts along the last dim only (shape [..1.., F] or [..1..])."""
    if not value.is_floating_point() or value.numel() not in (1, features):
        return None
    if value.dim() and value.shape[-1] not in (1, features):
        return None
    return value.reshape(-1).expand(features).to(torch.float32)


def _fold(graph_module: GraphModule, node: Node) -> bool:
    extra = {k: v for k, v in node.kwargs.items() if not (k == "alpha" and v == 1)}
    if len(node.args) != 2 or extra:
        return False
    linear, other = node.args
    if node.target == aten.add.Tensor and isinstance(other, Node) and other.target == aten.linear.default:
        linear, other = other, linear  # c + linear(x)
    if not (isinstance(linear, Node) and linear.target == aten.linear.default and len(linear.users) == 1):
        return False
    value = constant_value(graph_module, other)
    out_shape = static_shape(linear)
    if value is None or out_shape is None or static_shape(node) != out_shape:
        return False
    vector = _feature_vector(value, out_shape[-1])
    bias = _bias_of(linear)
    old_bias = None if bias is None else constant_value(graph_module, bias)
    if vector is None or (bias is not None and old_bias is None):
        return False
    sign = -1.0 if node.target == aten.sub.Tensor else 1.0
    folded = sign * vector if old_bias is None else old_bias + sign * vector
    with graph_module.graph.inserting_before(linear):
        new_bias = new_constant(graph_module, "_neutron_linear_bias", folded.contiguous(), linear)
    linear.args, linear.kwargs = (linear.args[0], linear.args[1], new_bias), {}
    node.replace_all_uses_with(linear)
    graph_module.graph.erase_node(node)
    for constant in (other, bias):
        if isinstance(constant, Node) and not constant.users:
            graph_module.graph.erase_node(constant)
    return True


def run(graph_module: GraphModule) -> int:
    """Folds `linear(...) + c`, `c + linear(...)` and `linear(...) - c` (c a constant along the output features)
    into the bias.

    Returns the number of additions folded."""
    changed = sum(_fold(graph_module, node) for node in list(graph_module.graph.nodes)
                  if node.op == "call_function" and node.target in (aten.add.Tensor, aten.sub.Tensor))
    if changed:
        graph_module.recompile()
        logger.debug("linear_add_to_bias: %d constant addition(s) folded into linear biases", changed)
    return changed
