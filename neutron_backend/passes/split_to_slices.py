"""split / split_with_sizes / chunk -> one slice per used piece.

to_edge turns every split into `split_with_sizes_copy`, a multi-output operator with no Neutron IR form; each
piece is a contiguous slice (SLICE), which the NPU runs and the quantizer annotates like any data movement
(output shares the input's qparams). Exact: a slice copies the same elements the split piece holds.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

ORDER = 10

aten = torch.ops.aten
_SPLITS = {aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default, aten.split.sizes}


def _dim(node: Node) -> int:
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    return int(dim)


def _piece_sizes(node: Node, dim: int) -> list[int] | None:
    """The size of every piece along `dim`, from the traced output values; None when not static."""
    pieces = node.meta.get("val")
    if not isinstance(pieces, (list, tuple)):
        return None
    sizes = [piece.shape[dim] for piece in pieces]
    return sizes if all(isinstance(size, int) for size in sizes) else None


def run(graph_module: GraphModule) -> int:
    """Replaces each getitem of a split by aten.slice.Tensor; returns the number of splits rewritten."""
    graph = graph_module.graph
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _SPLITS:
            continue
        users = list(node.users)
        if not users or not all(u.target is operator.getitem and isinstance(u.args[1], int) for u in users):
            continue
        source = node.args[0]
        rank = len(source.meta["val"].shape)
        dim = _dim(node) % rank
        sizes = _piece_sizes(node, dim)
        if sizes is None:
            continue
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        for getitem in users:
            if not getitem.users:  # an unused piece needs no slice
                graph.erase_node(getitem)
                continue
            index = getitem.args[1] % len(sizes)
            with graph.inserting_before(getitem):
                piece = graph.call_function(aten.slice.Tensor, (source, dim, starts[index],
                                                                starts[index] + sizes[index]))
            piece.meta = {**node.meta, **getitem.meta}
            getitem.replace_all_uses_with(piece)
            graph.erase_node(getitem)
        graph.erase_node(node)
        rewritten += 1
    if rewritten:
        graph_module.recompile()
    return rewritten
