"""Shape operators: they move data only, so alone in a partition they are no-ops."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.fx import Node

from neutron_backend.ops.base import (
    SUPPORTED,
    CheckContext,
    Layout,
    NeutronOperator,
    OpKind,
    QParamsContract,
    Verdict,
    arg,
    reject,
    shape_of,
)
from neutron_backend.ops.edge import edge
from neutron_backend.quantizer.kinds import (
    SHARED,
    aten,
)


def to_ir_order(values: Sequence, channels_last: bool) -> list:
    """Per-dimension values of a torch tensor, in the IR's axis order for the given layout."""
    if not channels_last or len(values) < 3:
        return list(values)
    return [values[d] for d in (0, *range(2, len(values)), 1)]


def value_layout(node: Node, ctx) -> bool:
    """Whether the node's input value is channels-last in the IR (only rank-3..5 values can be)."""
    return 3 <= len(shape_of(node.args[0])) <= 5 and ctx.input_is_channels_last(node, 0)


def _check(node: Node, ctx: CheckContext) -> Verdict:
    """Nothing beyond keeping the input's qparams (the declared contract, checked by the partitioner)."""
    return SUPPORTED


def _convert_view(node: Node, ctx) -> None:
    in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
    flattens_image = len(in_shape) == 4 and list(out_shape) == [in_shape[0], in_shape[1] * in_shape[2] * in_shape[3]]
    if flattens_image and ctx.input_is_channels_last(node, 0) and ctx.feeds_only_linear_inputs(node):
        # Flatten in NHWC order; the linear layer permutes its weights to match (no TRANSPOSE needed).
        x = ctx.input(node, 0)
        output = ctx.output(node, channels_last=False, flattened_from=tuple(in_shape[1:]))
        ctx.builder.add_operator("RESHAPE", [x, ctx.int32_constant(f"{node.name}_shape", out_shape)], [output])
    else:
        _convert_reshape(node, ctx)


def _convert_reshape(node: Node, ctx) -> None:
    """Any reshape (view, squeeze, unsqueeze) in torch's element order: a channels-last input goes back to NCHW."""
    x = ctx.input(node, 0, channels_last=False)
    output = ctx.output(node, channels_last=False)
    ctx.builder.add_operator("RESHAPE", [x, ctx.int32_constant(f"{node.name}_shape", shape_of(node))], [output])


def _slice_start(node: Node, size: int) -> int:
    start = arg(node, 2, "start", None)
    start = 0 if start is None else int(start)
    start = start + size if start < 0 else start
    return min(max(start, 0), size)


def _check_slice(node: Node, ctx: CheckContext) -> Verdict:
    step = arg(node, 4, "step", 1)
    if step != 1:
        return reject(f"slice step {step} is not supported; only step 1 (contiguous slices)")
    return _check(node, ctx)


def _emit_slice(node: Node, ctx, dim: int, start: int, output_shape: Sequence[int], output: int | None = None) -> int:
    """A SLICE of the node's input along torch dim `dim` from `start`, keeping the input's layout."""
    rank = len(shape_of(node.args[0]))
    channels_last = value_layout(node, ctx)
    x = ctx.input(node, 0, channels_last=channels_last)
    begin = [0] * rank
    begin[dim] = start
    if output is None:
        output = ctx.output(node, channels_last=channels_last)
    ctx.builder.add_operator("SLICE", [x, ctx.int32_constant(f"{node.name}_begin", to_ir_order(begin, channels_last)),
                                       ctx.int32_constant(f"{node.name}_size",
                                                          to_ir_order(output_shape, channels_last))], [output])
    return output


def _convert_slice(node: Node, ctx) -> None:
    in_shape = shape_of(node.args[0])
    dim = arg(node, 1, "dim", 0) % len(in_shape)
    _emit_slice(node, ctx, dim, _slice_start(node, in_shape[dim]), shape_of(node))


def _convert_select(node: Node, ctx) -> None:
    """select = a size-1 SLICE, then a RESHAPE dropping the selected dim."""
    in_shape = shape_of(node.args[0])
    dim = node.args[1] % len(in_shape)
    index = node.args[2] % in_shape[dim]
    sliced_shape = list(in_shape)
    sliced_shape[dim] = 1
    channels_last = value_layout(node, ctx)
    sliced = ctx.new_tensor(f"{node.name}_slice", to_ir_order(sliced_shape, channels_last), ctx.output_qparams(node))
    _emit_slice(node, ctx, dim, index, sliced_shape, output=sliced)
    if channels_last and dim != 1:  # one channel left: NHWC and NCHW hold the elements in the same order
        sliced = ctx.transpose(sliced, node.args[0], to_channels_last=False)
    output = ctx.output(node, channels_last=False)
    ctx.builder.add_operator("RESHAPE", [sliced, ctx.int32_constant(f"{node.name}_shape", shape_of(node))], [output])


def _convert_permute(node: Node, ctx) -> None:
    rank = len(shape_of(node))
    perm = [d % rank for d in node.args[1]]
    x = ctx.input(node, 0, channels_last=False)
    output = ctx.output(node, channels_last=False)
    ctx.builder.add_operator("TRANSPOSE", [x, ctx.int32_constant(f"{node.name}_perm", perm)], [output])


def _convert_clone(node: Node, ctx) -> None:
    ctx.alias(node, node.args[0])


def _moved_like(node: Node, tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(shape_of(node))


# Data movement that may stand between a constant's dequantize and the operator using it (a linear weight's
# permute, ...), with how each applies to the constant: ClusterIndex treats exactly these as auxiliary nodes, and
# lowering folds them into the constant the IR gets.
CONSTANT_MOVES: dict[str, Callable[[Node, torch.Tensor], torch.Tensor]] = {
    "permute_copy": lambda node, tensor: tensor.permute(*node.args[1]),
    "view_copy": _moved_like,
    "squeeze_copy": _moved_like,
    "unsqueeze_copy": _moved_like,
    "t_copy": lambda node, tensor: tensor.t(),
    "expand_copy": lambda node, tensor: tensor.expand(node.args[1]),
    "clone": lambda node, tensor: tensor,
    "_clone_dim_order": lambda node, tensor: tensor,
}


_CONSTRAINTS = "static shape; alone in a partition it is a no-op and stays on the CPU"
_SHARED = "int8; output shares the input's qparams"
OPERATORS = [
    NeutronOperator(name="aten.view_copy.default",
                    annotated_as={
                        aten.view.default: SHARED,
                        aten.reshape.default: SHARED,
                        aten.flatten.using_ints: SHARED,
                        # nn.MultiheadAttention's `unflatten` of the packed q/k/v projection (ViT): left out, its
                        # output took bmm's symmetric spec while its input kept the projection's.
                        aten.unflatten.int: SHARED,
                        aten.view_as.default: SHARED,
                        aten.reshape_as.default: SHARED,
                    }, aliases=("view", "reshape", "flatten", "unflatten"),
                    targets=(edge("aten.view_copy.default"),), kind=OpKind.SHAPE,
                    constraints=_CONSTRAINTS, check=_check, convert=_convert_view,
                    quantization=_SHARED, qparams=QParamsContract.OUTPUT_EQUALS_INPUT),
    NeutronOperator(name="aten.permute_copy.default",
                    annotated_as={
                        aten.transpose.int: SHARED,
                        aten.permute.default: SHARED,
                        aten.swapaxes.default: SHARED,
                        aten.movedim.int: SHARED,
                        aten.t.default: SHARED,
                        aten.mT.default: SHARED,
                    }, aliases=("permute", "transpose"),
                    targets=(edge("aten.permute_copy.default"),),
                    kind=OpKind.SHAPE, constraints=_CONSTRAINTS, check=_check, convert=_convert_permute,
                    quantization=_SHARED, qparams=QParamsContract.OUTPUT_EQUALS_INPUT),
    NeutronOperator(name="aten.clone.default",
                    annotated_as={
                        aten.clone.default: SHARED,
                        # Identities and aliases (channel shuffle's `.contiguous()`, `.detach()`, eval-mode dropout):
                        # data movement keeping the input's qparams, so no requantization splits the data movement.
                        aten.contiguous.default: SHARED,
                        aten.alias.default: SHARED,
                        aten.detach.default: SHARED,
                        aten.detach_.default: SHARED,
                        aten.dropout.default: SHARED,
                        aten.dropout_.default: SHARED,
                    }, targets=(edge("aten.clone.default"), edge("dim_order_ops._clone_dim_order.default")),
                    layout=Layout.CARRIES, kind=OpKind.SHAPE,
                    constraints=_CONSTRAINTS, check=_check, convert=_convert_clone,
                    quantization=_SHARED, qparams=QParamsContract.OUTPUT_EQUALS_INPUT),
    NeutronOperator(name="aten.slice_copy.Tensor",
                    annotated_as={
                        aten.slice.Tensor: SHARED,
                        aten.narrow.default: SHARED,
                    }, aliases=("slice", "narrow"),
                    targets=(edge("aten.slice_copy.Tensor"),), layout=Layout.CARRIES, kind=OpKind.SHAPE,
                    constraints=f"step 1; {_CONSTRAINTS}", check=_check_slice,
                    convert=_convert_slice, quantization=_SHARED, qparams=QParamsContract.OUTPUT_EQUALS_INPUT),
    NeutronOperator(name="aten.select_copy.int", annotated_as={aten.select.int: SHARED}, aliases=("select",),
                    targets=(edge("aten.select_copy.int"),), kind=OpKind.SHAPE,
                    constraints=_CONSTRAINTS, check=_check, convert=_convert_select,
                    quantization=_SHARED, qparams=QParamsContract.OUTPUT_EQUALS_INPUT),
    NeutronOperator(name="aten.squeeze_copy.dims",
                    annotated_as={
                        aten.squeeze.default: SHARED,
                        aten.squeeze.dim: SHARED,
                        aten.squeeze.dims: SHARED,
                    }, aliases=("squeeze",),
                    targets=(edge("aten.squeeze_copy.dims"), edge("aten.squeeze_copy.dim"),
                             edge("aten.squeeze_copy.default")),
                    kind=OpKind.SHAPE, constraints=_CONSTRAINTS, check=_check, convert=_convert_reshape,
                    quantization=_SHARED, qparams=QParamsContract.OUTPUT_EQUALS_INPUT),
    NeutronOperator(name="aten.unsqueeze_copy.default",
                    annotated_as={
                        aten.unsqueeze.default: SHARED,
                    }, aliases=("unsqueeze",),
                    targets=(edge("aten.unsqueeze_copy.default"),),
                    kind=OpKind.SHAPE, constraints=_CONSTRAINTS, check=_check, convert=_convert_reshape,
                    quantization=_SHARED, qparams=QParamsContract.OUTPUT_EQUALS_INPUT),
]
