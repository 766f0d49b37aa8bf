"""A standalone batchnorm (inference) -> a depthwise 1x1 convolution (beyond NXP's backend, which leaves it on the
CPU).

prepare_pt2e folds a batchnorm that follows a conv or linear into its weights before this runs; one that follows
anything else (a model input, an add, a pool) is per-channel `x * scale + shift` with constants
`scale = gamma / sqrt(running_var + eps)`, `shift = beta - running_mean * scale`: exactly a depthwise conv with a
1x1 kernel, weight `scale` and bias `shift`, which Neutron runs. A rank-4 input is convolved directly; rank 2
([N, C]) and rank 3 ([N, C, L]) inputs are viewed as [N, C, 1, 1] / [N, C, 1, L] and back, and an activation right
after the batchnorm moves onto the 4D value so it stays fused.

Left as they are: a batchnorm in training mode (its statistics are not constants), one without running statistics,
and one right after a conv/linear (in QAT, `prepare_qat_pt2e` fuses that pair itself after annotation).
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from neutron_backend.passes._graph import call, constant_value, lift_to_2d, new_constant, static_shape

ORDER = 20

aten = torch.ops.aten
# Producers whose following batchnorm torchao folds (prepare_pt2e) or fuses (prepare_qat_pt2e).
_FOLDED_INTO = {
    aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.conv_transpose1d.default,
    aten.conv_transpose2d.input, aten.conv_transpose3d.input, aten.linear.default,
}


def _tensor(graph_module: GraphModule, node: object) -> torch.Tensor | None:
    value = constant_value(graph_module, node)
    return None if value is None else value.detach()


def _scale_and_shift(graph_module: GraphModule, node: Node) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) of an inference batchnorm with constant statistics, else None."""
    _, weight, bias, running_mean, running_var, training, _, eps = node.args[:8]
    if training:
        return None
    mean, var = _tensor(graph_module, running_mean), _tensor(graph_module, running_var)
    if mean is None or var is None:
        return None
    gamma = torch.ones_like(mean) if weight is None else _tensor(graph_module, weight)
    beta = torch.zeros_like(mean) if bias is None else _tensor(graph_module, bias)
    if gamma is None or beta is None:
        return None
    scale = gamma.double() / torch.sqrt(var.double() + eps)
    shift = beta.double() - mean.double() * scale
    return scale.float(), shift.float()


def _rewrite(graph_module: GraphModule, node: Node, scale: torch.Tensor, shift: torch.Tensor) -> None:
    graph = graph_module.graph
    x = node.args[0]
    shape = static_shape(x)
    channels = shape[1]
    with graph.inserting_before(node):
        weight = new_constant(graph_module, f"{node.name}_scale", scale.reshape(channels, 1, 1, 1), x)
        bias = new_constant(graph_module, f"{node.name}_shift", shift, x)

    def conv_args(x_4d: Node) -> tuple:
        return (x_4d, weight, bias, [1, 1], [0, 0], [1, 1], channels)

    if len(shape) == 4:
        with graph.inserting_before(node):
            conv = call(graph_module, aten.conv2d.default, conv_args(x), node)
        node.replace_all_uses_with(conv)
        graph.erase_node(node)
    else:
        lift_to_2d(graph_module, node, aten.conv2d.default, conv_args)


def run(graph_module: GraphModule) -> int:
    """Rewrites every eligible standalone inference batchnorm as a depthwise 1x1 conv; returns how many."""
    count = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node.target != aten.batch_norm.default:
            continue
        x = node.args[0]
        if not isinstance(x, Node) or (x.op == "call_function" and x.target in _FOLDED_INTO):
            continue
        shape = static_shape(x)
        if shape is None or len(shape) not in (2, 3, 4) or static_shape(node) is None:
            continue
        if (constants := _scale_and_shift(graph_module, node)) is None:
            continue
        _rewrite(graph_module, node, *constants)
        count += 1
    return count
