"""Tensor format inference: which tensors are channels-first images (NCHW in torch, NHWC inside Neutron).

Each operator declares its `Layout` (neutron_backend.ops): convolution and pooling force channels-first on their
activation input and output; elementwise operators, cat, pads and reductions carry the format through unchanged
(as do quantization nodes); reshapes, permutes and matmuls break the chain, so their outputs are formatless (same
layout in torch and in the IR). Union-find over the carrying edges: linear time.
"""

from __future__ import annotations

import enum
import functools

from torch.fx import Graph, Node

# Not operators but plumbing around them: quantization and the items of multi-output operators keep the format.
_PLUMBING = {"dequantize_per_tensor", "getitem"}


@functools.cache
def _layouts() -> dict[str, object]:
    """Base operator name -> Layout, from the operator declarations. Operators without one (and aliases, which name
    operators before decomposition) break the chain: formatless is always a correct layout, at worst a slower one."""
    from neutron_backend import ops

    return {target._schema.name.split("::")[-1]: operator.layout
            for operator in ops.operators() for target in operator.targets}


class Format(enum.Enum):
    CHANNELS_FIRST = "channels_first"
    FORMATLESS = "formatless"


def _name(node: Node) -> str:
    if node.op != "call_function":
        return ""
    schema = getattr(node.target, "_schema", None)
    if schema is not None:
        return schema.name.split("::")[-1]
    return getattr(node.target, "__name__", "")


def _rank(node: Node) -> int | None:
    value = node.meta.get("val")
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    shape = getattr(value, "shape", None)
    return None if shape is None else len(shape)


class FormatMap:
    """The inferred format of every node's value in a graph."""

    def __init__(self, graph: Graph) -> None:
        self._parent: dict[Node, Node] = {}
        forced: list[Node] = []
        from neutron_backend.ops.base import Layout

        layouts = _layouts()
        for node in graph.nodes:
            name = _name(node)
            layout = Layout.CARRIES if name in _PLUMBING else layouts.get(name)
            if layout is Layout.CARRIES:
                rank = _rank(node)
                for source in node.all_input_nodes:
                    if _rank(source) == rank:
                        self._union(node, source)
            if layout is Layout.CHANNELS_FIRST:
                forced.append(node)
                forced.append(node.args[0])
        self._channels_first = {self._find(node) for node in forced if isinstance(node, Node)}

    def _find(self, node: Node) -> Node:
        root = node
        while self._parent.get(root, root) is not root:
            root = self._parent[root]
        while node is not root:
            self._parent[node], node = root, self._parent.get(node, root)
        return root

    def _union(self, a: Node, b: Node) -> None:
        root_a, root_b = self._find(a), self._find(b)
        if root_a is not root_b:
            self._parent[root_a] = root_b

    def format(self, node: Node) -> Format:
        """CHANNELS_FIRST for an image tensor of rank >= 3 in a conv/pool chain, else FORMATLESS."""
        rank = _rank(node)
        if rank is not None and rank >= 3 and self._find(node) in self._channels_first:
            return Format.CHANNELS_FIRST
        return Format.FORMATLESS

    def is_channels_first(self, node: Node) -> bool:
        return self.format(node) is Format.CHANNELS_FIRST
