"""Division by a constant -> multiplication by its reciprocal.

The NPU multiplies but does not divide. `x / c` becomes `x * (1 / c)`: exact when c is a power of two, otherwise
within one float32 rounding of the division, far below an int8 quantization step.
"""

from __future__ import annotations

import logging

import torch
from torch.fx import GraphModule

from neutron_backend.passes._graph import constant_value, is_float_value, is_number, new_constant

ORDER = 10

logger = logging.getLogger(__name__)
aten = torch.ops.aten
_DIVISIONS = (aten.div.Tensor, aten.div.Scalar)


def run(graph_module: GraphModule) -> int:
    """Rewrites every float division by a nonzero constant (number or constant tensor) into a multiplication.

    Returns the number of divisions rewritten. Divisions with a rounding mode or by a value containing zero stay.
    """
    changed = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node.target not in _DIVISIONS or node.kwargs or len(node.args) != 2:
            continue
        dividend, divisor = node.args
        if not is_float_value(dividend) or not is_float_value(node):
            continue
        if is_number(divisor):
            if divisor == 0:
                continue
            reciprocal = 1.0 / float(divisor)
        else:
            value = constant_value(graph_module, divisor)
            if value is None or not value.is_floating_point() or bool((value == 0).any()):
                continue
            with graph_module.graph.inserting_before(node):
                reciprocal = new_constant(graph_module, "_neutron_reciprocal", torch.reciprocal(value.detach()),
                                          node)
        node.target = aten.mul.Tensor
        node.args = (dividend, reciprocal)
        changed += 1
    if changed:
        graph_module.recompile()
        logger.debug("div_to_mul: %d division(s) by a constant rewritten as multiplication", changed)
    return changed
