"""1D convolution -> 2D convolution over a height-1 image (what Neutron runs).

`conv1d(x[N, C, L], w[O, I, K])` becomes `view(x, [N, C, 1, L])`, `conv2d` with the weight constant itself
reshaped to [O, I, 1, K] (so it is quantized per channel and folded like any conv weight), stride/padding/
dilation (1, s)/(0, p)/(1, d), then a view back to [N, O, L']. `conv_transpose1d` becomes `conv_transpose2d` the
same way (weight [I, O/groups, 1, K]). An activation chain after the conv (ReLU, ReLU6) moves onto the 4D value,
so it stays fused. Exact: a height-1 2D convolution is the 1D one.

Left as they are (the partitioner then converts the rank-3 convolution itself, RESHAPE + CONV_2D + RESHAPE):
a conv whose weight is computed rather than a constant (QAT's conv+batchnorm fusion scales it), a conv feeding a
batchnorm (QAT fuses the pair after annotation by matching the 1D pattern), unbatched or dynamic shapes.
"""

from __future__ import annotations

import logging

import torch
from torch.fx import GraphModule, Node

from neutron_backend.ops.base import arg
from neutron_backend.passes._graph import attribute_readers, constant, lift_to_2d, single_int, static_shape

logger = logging.getLogger(__name__)

ORDER = 20

aten = torch.ops.aten
_BATCH_NORMS = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default,
                aten._native_batch_norm_legit.default}


def _rewritable(node: Node) -> bool:
    x, weight = node.args[0], node.args[1]
    shape = static_shape(x) if isinstance(x, Node) else None
    if shape is None or len(shape) != 3 or static_shape(node) is None:
        return False
    if not isinstance(weight, Node) or weight.op != "get_attr":
        return False
    return not any(user.target in _BATCH_NORMS for user in node.users)


def _rewrite_conv(graph_module: GraphModule, node: Node, readers: dict[str, int]) -> None:
    weight, bias = node.args[1], arg(node, 2, "bias", None)
    stride = single_int(arg(node, 3, "stride", 1))
    padding = single_int(arg(node, 4, "padding", 0))
    dilation = single_int(arg(node, 5, "dilation", 1))
    groups = arg(node, 6, "groups", 1)
    with graph_module.graph.inserting_before(node):
        weight_4d = constant(graph_module, weight, lambda w: w.unsqueeze(2), readers)
    lift_to_2d(graph_module, node, aten.conv2d.default,
               lambda x_4d: (x_4d, weight_4d, bias, [1, stride], [0, padding], [1, dilation], groups))


def _rewrite_conv_transpose(graph_module: GraphModule, node: Node, readers: dict[str, int]) -> None:
    weight, bias = node.args[1], arg(node, 2, "bias", None)
    stride = single_int(arg(node, 3, "stride", 1))
    padding = single_int(arg(node, 4, "padding", 0))
    output_padding = single_int(arg(node, 5, "output_padding", 0))
    groups = arg(node, 6, "groups", 1)
    dilation = single_int(arg(node, 7, "dilation", 1))
    with graph_module.graph.inserting_before(node):
        weight_4d = constant(graph_module, weight, lambda w: w.unsqueeze(2), readers)
    lift_to_2d(graph_module, node, aten.conv_transpose2d.input,
               lambda x_4d: (x_4d, weight_4d, bias, [1, stride], [0, padding], [0, output_padding], groups,
                             [1, dilation]))


_REWRITES = {aten.conv1d.default: _rewrite_conv, aten.conv_transpose1d.default: _rewrite_conv_transpose}


def run(graph_module: GraphModule) -> int:
    """Rewrites every eligible 1D (transposed) convolution as a 2D one; returns how many."""
    count = 0
    readers = attribute_readers(graph_module)
    for node in list(graph_module.graph.nodes):
        rewrite = _REWRITES.get(node.target) if node.op == "call_function" else None
        if rewrite is None:
            continue
        if not _rewritable(node):
            logger.debug("%s left 1D (computed weight, feeds a batchnorm, or not a static [N, C, L] input)",
                         node.name)
            continue
        rewrite(graph_module, node, readers)
        count += 1
    return count
