"""1D pooling over a rank-3 input [N, C, L] -> 2D pooling over [N, C, 1, L] (what Neutron runs).

`max_pool1d`, `avg_pool1d` and `adaptive_avg_pool1d` (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d) become a
view to [N, C, 1, L], the 2D pool with a 1 x k window (stride 1 x s, padding 0 x p), and a view back. Exact: a
height-1 window over a height-1 image pools the same elements.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from neutron_backend.ops.base import arg
from neutron_backend.passes._graph import lift_to_2d, single_int, static_shape

ORDER = 20

aten = torch.ops.aten


def _window(node: Node) -> tuple[list[int], list[int], list[int]]:
    """(kernel, stride, padding) as 2D lists; an empty stride keeps its meaning (= kernel)."""
    kernel = single_int(node.args[1])
    stride = arg(node, 2, "stride", [])
    stride_2d = [1, single_int(stride)] if stride not in ([], ()) else []
    padding = single_int(arg(node, 3, "padding", 0))
    return [1, kernel], stride_2d, [0, padding]


def _max_pool_args(node: Node, x_4d: Node) -> tuple:
    kernel, stride, padding = _window(node)
    dilation = single_int(arg(node, 4, "dilation", 1))
    return (x_4d, kernel, stride, padding, [1, dilation], arg(node, 5, "ceil_mode", False))


def _avg_pool_args(node: Node, x_4d: Node) -> tuple:
    kernel, stride, padding = _window(node)
    return (x_4d, kernel, stride, padding, arg(node, 4, "ceil_mode", False),
            arg(node, 5, "count_include_pad", True), None)


def _adaptive_avg_pool_args(node: Node, x_4d: Node) -> tuple:
    return (x_4d, [1, single_int(node.args[1])])


_REWRITES = {
    aten.max_pool1d.default: (aten.max_pool2d.default, _max_pool_args),
    aten.avg_pool1d.default: (aten.avg_pool2d.default, _avg_pool_args),
    aten.adaptive_avg_pool1d.default: (aten.adaptive_avg_pool2d.default, _adaptive_avg_pool_args),
}


def run(graph_module: GraphModule) -> int:
    """Rewrites every 1D pooling over a static rank-3 input as 2D pooling; returns how many."""
    count = 0
    for node in list(graph_module.graph.nodes):
        rewrite = _REWRITES.get(node.target) if node.op == "call_function" else None
        if rewrite is None:
            continue
        shape = static_shape(node.args[0]) if isinstance(node.args[0], Node) else None
        if shape is None or len(shape) != 3 or static_shape(node) is None:
            continue
        target, make_args = rewrite
        lift_to_2d(graph_module, node, target, lambda x_4d, node=node, make_args=make_args: make_args(node, x_4d))
        count += 1
    return count
