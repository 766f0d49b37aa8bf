"""Helpers the rewrites share: new nodes carrying the metadata the quantizer reads, constants as graph attributes,
and the lift of a 1D operator to its 2D form."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch._guards import detect_fake_mode
from torch.fx import GraphModule, Node
from torch.utils._pytree import tree_leaves, tree_map

aten = torch.ops.aten

# Metadata saying where a node came from: the quantizer resolves per-module configurations from
# nn_module_stack, and the rest keeps error messages and debug output pointing at the user's code.
_PROVENANCE = ("nn_module_stack", "source_fn_stack", "stack_trace", "torch_fn", "custom", "from_node")

@functools.cache
def _elementwise_activations() -> frozenset:
    """The pre-dispatch targets of the activation operators (relu, relu6, hardtanh, clamp...), read from their
    declarations: elementwise, so they commute with a reshape and a rewrite may apply them to the 4D value and
    reshape after them, where a conv keeps its activation fused."""
    from neutron_backend import ops

    return frozenset(target for operator in ops.operators() if operator.kind is ops.OpKind.ACTIVATION
                     for target in operator.annotated_as)


def value(node: Any) -> Any:
    """The fake value (`meta['val']`) of a node; other arguments as they are."""
    return node.meta.get("val") if isinstance(node, Node) else node


def static_shape(node: Node) -> tuple[int, ...] | None:
    """The node's shape when every dimension is a plain int, else None (dynamic shapes are not rewritten)."""
    val = value(node)
    if not isinstance(val, torch.Tensor) or not all(isinstance(d, int) for d in val.shape):
        return None
    return tuple(val.shape)


def is_float_value(node: Any) -> bool:
    """Whether `node` is a graph node producing a float32 tensor (the only values the quantizer quantizes)."""
    val = value(node) if isinstance(node, Node) else None
    return isinstance(val, torch.Tensor) and val.dtype == torch.float32


def is_number(argument: Any) -> bool:
    """Whether an operator argument is a Python int or float (not a bool, a tensor or a node)."""
    return isinstance(argument, int | float) and not isinstance(argument, bool)


def call(graph_module: GraphModule, target: Any, args: tuple, like: Node) -> Node:
    """A new call_function node at the graph's insertion point, with `like`'s provenance and its fake value."""
    node = graph_module.graph.call_function(target, args)
    node.meta.update({key: like.meta[key] for key in _PROVENANCE if key in like.meta})
    set_value(node)
    return node


def set_value(node: Node) -> None:
    """(Re)computes `meta['val']` by running the node's op on its inputs' fake values."""
    args = tree_map(value, node.args)
    kwargs = tree_map(value, node.kwargs)
    # Leaves, so a list operand (cat's tensors) finds the fake mode too.
    fake_mode = detect_fake_mode([a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)])
    with fake_mode:
        node.meta["val"] = node.target(*args, **kwargs)


def constant_value(graph_module: GraphModule, node: object) -> torch.Tensor | None:
    """The tensor behind a get_attr node (a parameter, buffer or constant), else None."""
    if not isinstance(node, Node) or node.op != "get_attr":
        return None
    owner, attribute = _owner(graph_module, str(node.target))
    return getattr(owner, attribute)


def constant(graph_module: GraphModule, get_attr: Node, transform: Callable[[torch.Tensor], torch.Tensor],
             readers: Mapping[str, int]) -> Node:
    """A get_attr node holding `transform` of the constant behind `get_attr`, so the result stays a constant
    (a weight the quantizer observes and folds) rather than a computation on it.

    `readers` counts the get_attr nodes per attribute. The attribute is replaced in place when `get_attr` is its
    only reader and has no other user; otherwise a new one is added.
    """
    original = constant_value(graph_module, get_attr)
    tensor = transform(original.detach())
    if isinstance(original, torch.nn.Parameter):
        tensor = torch.nn.Parameter(tensor, requires_grad=original.requires_grad)
    if readers.get(str(get_attr.target)) == 1 and len(get_attr.users) == 1:
        _assign(graph_module, str(get_attr.target), tensor)
        node = get_attr
    else:
        name = _unique_attribute(graph_module, str(get_attr.target).replace(".", "_") + "_neutron")
        _assign(graph_module, name, tensor)
        node = graph_module.graph.get_attr(name)
    node.meta["val"] = detect_fake_mode([value(get_attr)]).from_tensor(tensor, static_shapes=True)
    return node


def attribute_readers(graph_module: GraphModule) -> dict[str, int]:
    """How many get_attr nodes read each attribute (for `constant`)."""
    return Counter(str(node.target) for node in graph_module.graph.nodes if node.op == "get_attr")


def new_constant(graph_module: GraphModule, base: str, tensor: torch.Tensor, like: Node) -> Node:
    """A get_attr node for a new constant `tensor` (its fake value made in the fake mode of `like`'s value)."""
    name = _unique_attribute(graph_module, base)
    _assign(graph_module, name, tensor)
    node = graph_module.graph.get_attr(name)
    node.meta["val"] = detect_fake_mode([value(like)]).from_tensor(tensor, static_shapes=True)
    return node


def _owner(graph_module: GraphModule, qualified_name: str) -> tuple[torch.nn.Module, str]:
    owner_name, _, attribute = qualified_name.rpartition(".")
    return (graph_module.get_submodule(owner_name) if owner_name else graph_module), attribute


def _assign(graph_module: GraphModule, qualified_name: str, tensor: torch.Tensor) -> None:
    owner, attribute = _owner(graph_module, qualified_name)
    if hasattr(owner, attribute):
        delattr(owner, attribute)
    if isinstance(tensor, torch.nn.Parameter):
        owner.register_parameter(attribute, tensor)
    else:
        owner.register_buffer(attribute, tensor)


def _unique_attribute(graph_module: GraphModule, base: str) -> str:
    name, counter = base, 0
    while hasattr(graph_module, name):
        counter += 1
        name = f"{base}_{counter}"
    return name


def activation_chain(node: Node) -> list[Node]:
    """The elementwise activations applied one after another to `node`'s value, each the only user of the one
    before (e.g. the ReLU after a conv)."""
    chain: list[Node] = []
    current = node
    while len(current.users) == 1:
        (user,) = current.users
        if user.op != "call_function" or user.target not in _elementwise_activations() or user.args[0] is not current:
            break
        chain.append(user)
        current = user
    return chain


def lift_to_2d(graph_module: GraphModule, node: Node, target: Any, args_2d: Callable[[Node], tuple]) -> Node:
    """Replaces `node`, an operator on an [N, C, L] (or [N, C]) input, by `target` on the input viewed as the image
    [N, C, 1, L] (or [N, C, 1, 1]), and views the result back to `node`'s shape after any activation chain (which
    moves onto the 4D value, so a conv keeps its activation fused). `args_2d(input_4d)` gives `target`'s arguments.

    Returns the node that now produces the original value (the view back).
    """
    graph = graph_module.graph
    x = node.args[0]
    n, c, *length = static_shape(x)
    with graph.inserting_before(node):
        x_4d = call(graph_module, aten.view.default, (x, [n, c, 1, length[0] if length else 1]), node)
        lifted = call(graph_module, target, args_2d(x_4d), node)
    chain = activation_chain(node)
    last = lifted
    for activation in chain:
        activation.args = (last, *activation.args[1:])
        set_value(activation)
        last = activation
    with graph.inserting_after(last):
        back = call(graph_module, aten.view.default, (last, list(static_shape(node))), node)
    if chain:
        # The chain's last activation now yields 4D values; its old users take the view back instead.
        last.replace_all_uses_with(back, delete_user_cb=lambda user: user is not back)
    else:
        node.replace_all_uses_with(back)
    graph.erase_node(node)
    return back


def single_int(value: Sequence[int] | int) -> int:
    """A 1D operator's int-or-list parameter (kernel, stride, padding...) as an int."""
    return value if isinstance(value, int) else int(value[0])
