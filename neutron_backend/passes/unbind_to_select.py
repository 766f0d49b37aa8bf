"""unbind -> one select per used item.

`q, k, v = qkv.unbind(0)` is one operator with several outputs, which the quantizer does not annotate; ExecuTorch
turns it into selects only while lowering, after quantization, so all three share one dequantize and each runs on
the CPU with a round trip ("its input dequantize ... also feeds"). As selects before annotation, each is a
data-movement operator quantized on its own, sharing its input's qparams.
"""

from __future__ import annotations

import logging
import operator

import torch
from torch.fx import GraphModule, Node

from neutron_backend.passes._graph import call, is_float_value

ORDER = 4  # before sdpa_to_matmul_softmax, so attention reads the selects

logger = logging.getLogger(__name__)
aten = torch.ops.aten


def _rewrite(graph_module: GraphModule, node: Node) -> bool:
    x = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    users = list(node.users)
    if not is_float_value(x) or not all(u.op == "call_function" and u.target is operator.getitem for u in users):
        return False
    for item in users:
        with graph_module.graph.inserting_before(item):
            select = call(graph_module, aten.select.int, (x, dim, item.args[1]), item)
        item.replace_all_uses_with(select)
        graph_module.graph.erase_node(item)
    graph_module.graph.erase_node(node)
    return True


def run(graph_module: GraphModule) -> int:
    """Rewrites every float unbind whose items are read by getitem; returns how many were rewritten."""
    changed = sum(_rewrite(graph_module, node) for node in list(graph_module.graph.nodes)
                  if node.op == "call_function" and node.target == aten.unbind.int)
    if changed:
        graph_module.recompile()
        logger.debug("unbind_to_select: %d unbind(s) written as selects", changed)
    return changed
