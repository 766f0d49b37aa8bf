"""Matrix product with a constant right operand -> linear layer.

`x @ W` with a constant 2-D W is `linear(x, W^T)`: quantized like any linear layer (symmetric int8 weights) and run
as FULLY_CONNECTED.
"""

from __future__ import annotations

import logging

import torch
from torch.fx import GraphModule

from neutron_backend.passes._graph import constant_value, is_float_value, new_constant, static_shape

ORDER = 25

logger = logging.getLogger(__name__)
aten = torch.ops.aten


def run(graph_module: GraphModule) -> int:
    """Rewrites `matmul(x, W)` / `mm(x, W)` with a constant 2-D float W into `linear(x, W^T)`.

    Returns the number of products rewritten."""
    changed = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node.target not in (aten.matmul.default, aten.mm.default):
            continue
        x, weight = node.args
        value = constant_value(graph_module, weight)
        shape = static_shape(x)
        if value is None or value.dim() != 2 or not is_float_value(x) or shape is None or len(shape) < 2:
            continue
        with graph_module.graph.inserting_before(node):
            transposed = new_constant(graph_module, "_neutron_linear_weight", value.detach().t().contiguous(), node)
        node.target, node.args, node.kwargs = aten.linear.default, (x, transposed), {}
        if not weight.users:
            graph_module.graph.erase_node(weight)
        changed += 1
    if changed:
        graph_module.recompile()
        logger.debug("matmul_by_constant_to_linear: %d product(s) rewritten as linear layers", changed)
    return changed
