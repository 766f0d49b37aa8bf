"""A reshape straight back to the shape it came from -> nothing.

The 1D -> 2D rewrites view every 1D operator's input to [N, C, 1, L] and its output back to [N, C, L]; between two
such operators (a conv1d stack, conv1d -> max_pool1d) that leaves view-to-3D followed by view-to-4D, which would
cost a RESHAPE and two TRANSPOSEs per layer once the 4D images are channels-last in the IR. Removing the pair keeps
the whole stack 4D. Exact: the values are the same elements in the same order.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from neutron_backend.passes._graph import static_shape

ORDER = 90  # after every rewrite that introduces views

_RESHAPES = {torch.ops.aten.view.default, torch.ops.aten.reshape.default}


def _is_reshape(node: object) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in _RESHAPES


def run(graph_module: GraphModule) -> int:
    """Removes every reshape pair whose second reshape restores the first one's input shape; returns how many."""
    graph = graph_module.graph
    count = 0
    for node in list(graph.nodes):
        if not _is_reshape(node):
            continue
        inner = node.args[0]
        if not _is_reshape(inner) or len(inner.users) != 1 or not isinstance(inner.args[0], Node):
            continue
        source = inner.args[0]
        shape = static_shape(node)
        if shape is None or shape != static_shape(source):
            continue
        node.replace_all_uses_with(source)
        graph.erase_node(node)
        graph.erase_node(inner)
        count += 1
    return count
