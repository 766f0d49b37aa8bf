"""scaled_dot_product_attention -> matmul, scale, softmax, matmul.

Left whole, the quantizer cannot annotate attention's inner operators: ExecuTorch decomposes it only while lowering,
after quantization, so the score products and the softmax run in float on the CPU (and the decomposition's strides
crashed `run_decompositions` on a ViT block, issue 13). Written out before annotation, each operator is quantized on
its own: the products become bmm (matmul_to_bmm), the scale a multiplication by a constant (scalars_to_constants),
and the softmax a fixed-output one, all of which run on the NPU. Only the plain form is rewritten: no mask, no
dropout, not causal, no grouped-query broadcasting.
"""

from __future__ import annotations

import logging
import math

import torch
from torch.fx import GraphModule, Node

from neutron_backend.passes._graph import call, is_float_value, static_shape

ORDER = 5  # before scalars_to_constants (20) and matmul_to_bmm (26), which take up what it writes

logger = logging.getLogger(__name__)
aten = torch.ops.aten
_PARAMETERS = ("attn_mask", "dropout_p", "is_causal")


def _rewrite(graph_module: GraphModule, node: Node) -> bool:
    q, k, v = node.args[:3]
    given = dict(zip(_PARAMETERS, node.args[3:6], strict=False)) | dict(node.kwargs)
    if (given.get("attn_mask") is not None or given.get("dropout_p", 0.0) != 0.0 or given.get("is_causal", False)
            or given.get("enable_gqa", False)):
        return False
    shapes = [static_shape(x) for x in (q, k, v)]
    if not all(is_float_value(x) for x in (q, k, v)) or any(s is None for s in shapes):
        return False
    if shapes[0][:-2] != shapes[1][:-2] or shapes[1][:-2] != shapes[2][:-2]:
        return False  # broadcast batch dims: left to ExecuTorch
    scale = given.get("scale")
    scale = 1.0 / math.sqrt(shapes[0][-1]) if scale is None else float(scale)
    with graph_module.graph.inserting_before(node):
        k_t = call(graph_module, aten.transpose.int, (k, -2, -1), node)
        scores = call(graph_module, aten.matmul.default, (q, k_t), node)
        scaled = call(graph_module, aten.mul.Tensor, (scores, scale), node)
        weights = call(graph_module, aten.softmax.int, (scaled, -1), node)
        result = call(graph_module, aten.matmul.default, (weights, v), node)
    node.replace_all_uses_with(result)
    graph_module.graph.erase_node(node)
    return True


def run(graph_module: GraphModule) -> int:
    """Writes out every plain float scaled_dot_product_attention; returns how many were rewritten."""
    changed = sum(_rewrite(graph_module, node) for node in list(graph_module.graph.nodes)
                  if node.op == "call_function" and node.target == aten.scaled_dot_product_attention.default)
    if changed:
        graph_module.recompile()
        logger.debug("sdpa_to_matmul_softmax: %d attention(s) written out", changed)
    return changed
