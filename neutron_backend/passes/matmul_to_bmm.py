"""Matrix product of two activations -> batched matrix multiplication (bmm).

Neutron multiplies two run-time tensors only as a rank-3 batched product. `a @ b` with equal batch dimensions
becomes `bmm` directly (rank 3) or between reshapes that merge the batch dimensions into one (rank 2, rank > 3).
Without this, export's `matmul` decomposes into expand/view/bmm/view with the quantize after the last view, so
the product is never a quantized operator.
"""

from __future__ import annotations

import logging
import math

import torch
from torch.fx import GraphModule, Node

from neutron_backend.passes._graph import call, constant_value, is_float_value, static_shape

ORDER = 26

logger = logging.getLogger(__name__)
aten = torch.ops.aten


def _rewrite(graph_module: GraphModule, node: Node) -> bool:
    a, b = node.args
    if not (is_float_value(a) and is_float_value(b) and is_float_value(node)):
        return False
    if constant_value(graph_module, a) is not None or constant_value(graph_module, b) is not None:
        return False
    a_shape, b_shape, out_shape = static_shape(a), static_shape(b), static_shape(node)
    if a_shape is None or b_shape is None or out_shape is None:
        return False
    if len(a_shape) != len(b_shape) or len(a_shape) < 2 or a_shape[:-2] != b_shape[:-2]:
        return False
    if len(a_shape) == 3:
        node.target = aten.bmm.default
        return True
    batch = math.prod(a_shape[:-2])
    with graph_module.graph.inserting_before(node):
        a3 = call(graph_module, aten.reshape.default, (a, [batch, *a_shape[-2:]]), node)
        b3 = call(graph_module, aten.reshape.default, (b, [batch, *b_shape[-2:]]), node)
        product = call(graph_module, aten.bmm.default, (a3, b3), node)
        result = call(graph_module, aten.reshape.default, (product, list(out_shape)), node)
    node.replace_all_uses_with(result)
    graph_module.graph.erase_node(node)
    return True


def run(graph_module: GraphModule) -> int:
    """Rewrites `matmul`/`mm` of two float activations with equal batch dimensions into `bmm`.

    Returns the number of products rewritten. Products whose batch dimensions broadcast stay as they are."""
    changed = sum(_rewrite(graph_module, node) for node in list(graph_module.graph.nodes)
                  if node.op == "call_function" and node.target in (aten.matmul.default, aten.mm.default))
    if changed:
        graph_module.recompile()
        logger.debug("matmul_to_bmm: %d product(s) of activations rewritten as bmm", changed)
    return changed
