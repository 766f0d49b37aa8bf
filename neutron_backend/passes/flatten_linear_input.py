"""Linear layer on a rank > 2 input -> reshape to rank 2, linear layer, reshape back.

to_edge decomposes such a linear into view/addmm/view with the output quantize after the last view, so the addmm
is not a quantized operator and stays on the CPU. Made explicit before quantization, each of the three operators
is quantized on its own (the reshapes share their input's qparams) and all three run on the NPU.
"""

from __future__ import annotations

import logging
import math

import torch
from torch.fx import GraphModule, Node

from neutron_backend.passes._graph import call, is_float_value, static_shape

ORDER = 50

logger = logging.getLogger(__name__)
aten = torch.ops.aten


def _rewrite(graph_module: GraphModule, node: Node) -> bool:
    x, weight = node.args[0], node.args[1]
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    in_shape, out_shape = static_shape(x), static_shape(node)
    if not (is_float_value(x) and is_float_value(node)) or in_shape is None or out_shape is None:
        return False
    if len(in_shape) <= 2:
        return False
    with graph_module.graph.inserting_before(node):
        flat = call(graph_module, aten.reshape.default, (x, [math.prod(in_shape[:-1]), in_shape[-1]]), node)
        linear = call(graph_module, aten.linear.default, (flat, weight, bias), node)
        result = call(graph_module, aten.reshape.default, (linear, list(out_shape)), node)
    node.replace_all_uses_with(result)
    graph_module.graph.erase_node(node)
    return True


def run(graph_module: GraphModule) -> int:
    """Wraps every float linear layer whose input has rank > 2 in reshapes to and from rank 2.

    Returns the number of linear layers rewritten."""
    changed = sum(_rewrite(graph_module, node) for node in list(graph_module.graph.nodes)
                  if node.op == "call_function" and node.target == aten.linear.default)
    if changed:
        graph_module.recompile()
        logger.debug("flatten_linear_input: %d linear layer(s) on rank > 2 inputs flattened", changed)
    return changed
