"""Helpers shared by the rewrites: constant tensors and new nodes in the pre-dispatch ATen graph.

New nodes get `meta["val"]` (a fake tensor, like every node of an exported graph, so the quantizer can tell float
tensors from the rest) and the source node's module stack (so `NeutronQuantizer.set_module_name/type` still apply).
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch._guards import detect_fake_mode
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg

# Metadata copied from the node a rewrite replaces: where it came from in the user's model.
_PROVENANCE = ("nn_module_stack", "source_fn_stack", "stack_trace", "custom", "from_node")


def is_number(value: Any) -> bool:
    """A Python int or float argument (not a bool, not a tensor)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_float_value(node: Any) -> bool:
    """A graph node producing a float32 tensor."""
    if not isinstance(node, Node):
        return False
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) and value.dtype == torch.float32


def constant_value(graph_module: GraphModule, node: Any) -> torch.Tensor | None:
    """The tensor behind a get_attr node (a parameter, buffer or constant of the module), else None."""
    if not isinstance(node, Node) or node.op != "get_attr":
        return None
    value = graph_module
    for part in str(node.target).split("."):
        value = getattr(value, part, None)
    return value if isinstance(value, torch.Tensor) else None


def _fake(graph_module: GraphModule, value: torch.Tensor) -> torch.Tensor:
    mode = detect_fake_mode([n.meta.get("val") for n in graph_module.graph.nodes])
    return value if mode is None else mode.from_tensor(value)


def add_constant(graph_module: GraphModule, base: str, value: torch.Tensor, before: Node) -> Node:
    """A get_attr node, inserted before `before`, reading a new constant tensor attribute of the module."""
    name, counter = f"_neutron_{base}", 0
    while hasattr(graph_module, name):
        counter += 1
        name = f"_neutron_{base}_{counter}"
    graph_module.register_buffer(name, value.detach().clone())
    with graph_module.graph.inserting_before(before):
        node = graph_module.graph.get_attr(name)
    node.meta["val"] = _fake(graph_module, getattr(graph_module, name))
    copy_provenance(before, node)
    return node


def scalar_constant(graph_module: GraphModule, value: float, like: Node, before: Node) -> Node:
    """A 0-d constant holding `value` with the dtype of `like`'s value (float32 for the float ops rewritten)."""
    dtype = like.meta["val"].dtype if isinstance(like.meta.get("val"), torch.Tensor) else torch.float32
    return add_constant(graph_module, "scalar", torch.tensor(value, dtype=dtype), before)


def copy_provenance(source: Node, target: Node) -> None:
    for key in _PROVENANCE:
        if key in source.meta:
            target.meta[key] = source.meta[key]


def call(graph_module: GraphModule, target: Any, args: tuple, kwargs: dict | None = None, *,
         before: Node, like: Node) -> Node:
    """A new call_function node before `before`, its fake value computed from its inputs', provenance of `like`."""
    with graph_module.graph.inserting_before(before):
        node = graph_module.graph.call_function(target, args, kwargs or {})
    values = map_arg((args, kwargs or {}), lambda n: n.meta["val"])
    node.meta["val"] = target(*values[0], **values[1])
    copy_provenance(like, node)
    return node
