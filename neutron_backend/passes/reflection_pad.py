"""pad(mode="reflect") -> reflection_pad1d / reflection_pad2d.

`aten.pad` is a composite operator: ExecuTorch's edge lowering turns a reflection pad into arange/abs/sub/index
operators that no NPU runs. Written as the reflection_pad operator itself, it reaches the partitioner whole
(NeutronPartitioner.ops_to_not_decompose keeps registered operators whole where it delegates them) and lowers to
MIRROR_PAD. Exact: aten.pad dispatches to the same operator.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule

ORDER = 10

aten = torch.ops.aten
# Padded dims -> (operator, input ranks it accepts), as aten.pad dispatches a reflection pad.
_REFLECTION = {1: (aten.reflection_pad1d.default, (2, 3)), 2: (aten.reflection_pad2d.default, (3, 4))}


def run(graph_module: GraphModule) -> int:
    """Rewrites every reflection aten.pad that has a reflection_pad1d/2d form; returns how many."""
    rewritten = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target != aten.pad.default:
            continue
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        pad = list(node.args[1])
        value = node.args[0].meta.get("val")
        if mode != "reflect" or len(pad) % 2 or len(pad) // 2 not in _REFLECTION or value is None:
            continue
        target, ranks = _REFLECTION[len(pad) // 2]
        if value.dim() not in ranks:
            continue
        node.target, node.args, node.kwargs = target, (node.args[0], pad), {}
        rewritten += 1
    if rewritten:
        graph_module.recompile()
    return rewritten
