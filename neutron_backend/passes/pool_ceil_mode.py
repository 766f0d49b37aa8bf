"""2D pooling with `ceil_mode=True` -> the same pooling with `ceil_mode=False` (what Neutron runs), exactly.

With ceil_mode, PyTorch adds a last, partial window per axis when the input does not end on a window boundary
(the window must start inside the input or its left padding; torch.nn.MaxPool2d docs). Per axis:

- when floor and ceil give the same output size the windows are the same, so the flag alone flips (SqueezeNet 1.1's
  pools over 111/55/27 pixels);
- otherwise, for max pooling, the input grows by `extra` copies of its last row/column (a slice and a cat, both
  data movement that keeps the qparams) and pools without ceil_mode. Exact: every partial window starts at or
  before the last real row and reaches past it, so it holds that row, and copies of an element a window already
  holds do not change its maximum. Padding with the dtype minimum would be the same on the NPU, but a float pad
  value below every activation would reach the quantizer's observers (which then see -inf); the copies never do.
- avg pooling with a partial window divides by a count that depends on the window, and a dilated max pooling's
  partial window may skip the last row; both stay as they are (the partitioner's reason says why).
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from neutron_backend.ops.base import arg, pair
from neutron_backend.passes._graph import call, set_value, static_shape

ORDER = 25

aten = torch.ops.aten

# Position of ceil_mode in each pooling's schema.
_CEIL_INDEX = {aten.max_pool2d.default: 5, aten.avg_pool2d.default: 4}


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output size along one axis (aten/src/ATen/native/Pool.h, pooling_output_shape)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def extra_rows(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """How many elements past the end a ceil_mode pooling axis needs so that floor mode yields the same windows."""
    out = _output_size(size, kernel, stride, padding, dilation, ceil_mode=True)
    return max(0, (out - 1) * stride + dilation * (kernel - 1) + 1 - 2 * padding - size)


def _window(node: Node) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    kernel = pair(node.args[1])
    stride_arg = arg(node, 2, "stride", [])
    stride = pair(stride_arg) if stride_arg not in ([], (), None) else kernel
    padding = pair(arg(node, 3, "padding", 0))
    dilation = pair(arg(node, 4, "dilation", 1)) if node.target == aten.max_pool2d.default else (1, 1)
    return kernel, stride, padding, dilation


def _repeat_last(graph_module: GraphModule, x: Node, dim: int, extra: int, like: Node) -> Node:
    """`x` with its last index along `dim` appended `extra` times (slice + cat)."""
    size = static_shape(x)[dim]
    last = call(graph_module, aten.slice.Tensor, (x, dim, size - 1, size), like)
    return call(graph_module, aten.cat.default, ([x, *[last] * extra], dim), like)


def _rewrite(graph_module: GraphModule, node: Node) -> bool:
    x = node.args[0]
    shape = static_shape(x) if isinstance(x, Node) else None
    if shape is None or len(shape) != 4 or static_shape(node) is None:
        return False
    kernel, stride, padding, dilation = _window(node)
    extras = [extra_rows(shape[2 + axis], kernel[axis], stride[axis], padding[axis], dilation[axis])
              for axis in range(2)]
    if any(extras) and (node.target != aten.max_pool2d.default or dilation != (1, 1)):
        return False
    with graph_module.graph.inserting_before(node):
        pooled_input = x
        for axis, extra in enumerate(extras):
            if extra:
                pooled_input = _repeat_last(graph_module, pooled_input, 2 + axis, extra, node)
    if node.target == aten.max_pool2d.default:
        node.args = (pooled_input, node.args[1], arg(node, 2, "stride", []), arg(node, 3, "padding", 0),
                     arg(node, 4, "dilation", 1), False)
    else:
        node.args = (pooled_input, node.args[1], arg(node, 2, "stride", []), arg(node, 3, "padding", 0), False,
                     arg(node, 5, "count_include_pad", True), arg(node, 6, "divisor_override", None))
    node.kwargs = {}
    set_value(node)
    return True


def run(graph_module: GraphModule) -> int:
    """Rewrites every 2D max pooling with ceil_mode (and avg pooling whose ceil_mode changes nothing); returns how
    many."""
    count = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function":
            continue
        ceil_index = _CEIL_INDEX.get(node.target)
        if ceil_index is not None and arg(node, ceil_index, "ceil_mode", False) and _rewrite(graph_module, node):
            count += 1
    return count
