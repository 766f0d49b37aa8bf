"""Binary elementwise arithmetic: add, sub, mul, maximum, minimum.

Broadcasting follows torch: the operand of lower rank is aligned to the output's trailing dimensions. In the IR an
image output is NHWC, so a broadcast operand (a [1, C, 1, 1] gate, a [C, 1, 1] bias-like constant) is brought to
the output's rank and permuted the same way, which keeps its channels on the channel axis.
"""

from __future__ import annotations

import numpy as np
from torch.fx import Node

from neutron_backend.ir import channels_last_perm
from neutron_backend.ops.base import (
    SUPPORTED,
    CheckContext,
    Layout,
    NeutronOperator,
    OpKind,
    QParamsContract,
    Verdict,
    arg,
    flat_inputs,
    numel,
    reject,
    shape_of,
)
from neutron_backend.ops.edge import edge
from neutron_backend.ops.limits import VersionedLimit, applies
from neutron_backend.quantizer.kinds import (
    INDEPENDENT,
    SharedAll,
    aten,
)

ONE_FULL_OPERAND = VersionedLimit("one input has the output's element count (no broadcasting of both inputs)")


def _check_operands(node: Node, ctx: CheckContext) -> Verdict:
    # Both operands are tensors here: to_edge lifts Python scalars to constants, and NeutronQuantizer's
    # scalars_to_constants rewrite has already made them quantized ones.
    a, b = node.args[0], node.args[1]
    out = numel(shape_of(node))
    if numel(shape_of(a)) != out and numel(shape_of(b)) != out and applies(ONE_FULL_OPERAND, ctx.flavor):
        return reject(f"broadcasting both inputs {list(shape_of(a))} and {list(shape_of(b))} to "
                      f"{list(shape_of(node))}; the converter of flavor {ctx.flavor} needs one input with the "
                      f"output's element count (converters from {ONE_FULL_OPERAND.first_free_flavor} on do not)")
    return SUPPORTED


def _check_arithmetic(node: Node, ctx: CheckContext) -> Verdict:
    verdict = _check_operands(node, ctx)
    if not verdict:
        return verdict
    alpha = arg(node, 2, "alpha", 1)
    if alpha != 1:
        return reject(f"alpha={alpha}; only alpha = 1 is supported")
    return SUPPORTED


def _check_selection(node: Node, ctx: CheckContext) -> Verdict:
    """maximum/minimum pick one input's value without rescaling it: their declared contract shares qparams."""
    return _check_operands(node, ctx)


def _keeps_memory_order(shape: tuple[int, ...], perm: tuple[int, ...]) -> bool:
    """Whether permuting `shape` by `perm` moves only size-1 dims, so a RESHAPE does the same as a TRANSPOSE."""
    moved = [axis for axis in perm if shape[axis] != 1]
    return moved == sorted(moved)


def _operand(node: Node, ctx, index: int, channels_last: bool) -> int:
    """The IR tensor of operand `index`, with the output's rank and layout (broadcast dims kept at size 1)."""
    source = flat_inputs(node)[index]
    rank = len(shape_of(node))
    shape = tuple(shape_of(source))
    padded = (1,) * (rank - len(shape)) + shape
    perm = channels_last_perm(rank) if channels_last else tuple(range(rank))
    if ctx.is_constant_input(node, index):
        values, q = ctx.weight(node, index)
        data = np.ascontiguousarray(values.reshape(padded).transpose(perm))
        return ctx.builder.add_tensor(ctx.name(f"{node.name}_operand{index}"), data.shape, "int8", scale=q.scale,
                                      zero_point=q.zero_point, data=data)
    if len(shape) == rank:
        return ctx.input(node, index, channels_last=channels_last)
    # A lower-rank run-time operand: in torch layout, reshaped to the output's rank, then moved like the output.
    tensor = ctx.input(node, index, channels_last=False)
    q = ctx.input_qparams(node, index)
    target = tuple(padded[axis] for axis in perm)
    direct = _keeps_memory_order(padded, perm)
    reshaped = ctx.new_tensor(f"{source.name}_rank{rank}", target if direct else padded, q)
    ctx.builder.add_operator("RESHAPE", [tensor, ctx.int32_constant(f"{source.name}_shape",
                                                                   target if direct else padded)], [reshaped])
    if direct:
        return reshaped
    permuted = ctx.new_tensor(f"{source.name}_permuted", target, q)
    ctx.builder.add_operator("TRANSPOSE", [reshaped, ctx.int32_constant(f"{source.name}_perm", perm)], [permuted])
    return permuted


def _converter(op: str, options_type: str | None):
    def convert(node: Node, ctx) -> None:
        from ai_edge_litert import schema_py_generated as schema

        channels_last = ctx.prefers_channels_last(node)
        a = _operand(node, ctx, 0, channels_last)
        b = _operand(node, ctx, 1, channels_last)
        output = ctx.output(node, channels_last=channels_last)
        options = None
        if options_type is not None:
            options = getattr(schema, options_type)()
            options.fusedActivationFunction = ctx.fused_activation(node)
        elif ctx.fused_activation(node) != schema.ActivationFunctionType.NONE:
            from neutron_backend.lowering import LoweringError

            raise LoweringError(f"{op} has no fused activation; '{node.name}' is followed by one")
        ctx.builder.add_operator(op, [a, b], [output], options)

    return convert


_ARITHMETIC = "two tensors (scalars become constants first); alpha = 1"
_SELECTION = "two tensors; both inputs and the output share qparams"
OPERATORS = [
    NeutronOperator(name="aten.add.Tensor",
                    annotated_as={
                        aten.add.Tensor: INDEPENDENT,
                        # In-place residuals (`x += y`, torchvision's MobileNetV3/EfficientNet blocks).
                        aten.add_.Tensor: INDEPENDENT,
                    }, targets=(edge("aten.add.Tensor"),),
                    layout=Layout.CARRIES, kind=OpKind.COMPUTE,
                    constraints=_ARITHMETIC, check=_check_arithmetic, convert=_converter("ADD", "AddOptionsT"),
                    versioned_limits=(ONE_FULL_OPERAND,)),
    NeutronOperator(name="aten.sub.Tensor",
                    annotated_as={
                        aten.sub.Tensor: INDEPENDENT,
                        aten.sub_.Tensor: INDEPENDENT,
                    }, targets=(edge("aten.sub.Tensor"),),
                    layout=Layout.CARRIES, kind=OpKind.COMPUTE,
                    constraints=_ARITHMETIC, check=_check_arithmetic, convert=_converter("SUB", "SubOptionsT"),
                    versioned_limits=(ONE_FULL_OPERAND,)),
    NeutronOperator(name="aten.mul.Tensor",
                    annotated_as={
                        aten.mul.Tensor: INDEPENDENT,
                        aten.mul_.Tensor: INDEPENDENT,
                    }, aliases=("div",), targets=(edge("aten.mul.Tensor"),),
                    layout=Layout.CARRIES, kind=OpKind.COMPUTE,
                    constraints="two tensors (scalars become constants first)", check=_check_operands,
                    convert=_converter("MUL", "MulOptionsT"), versioned_limits=(ONE_FULL_OPERAND,)),
    NeutronOperator(name="aten.maximum.default",
                    annotated_as={
                        aten.maximum.default: SharedAll(),
                    }, targets=(edge("aten.maximum.default"),),
                    layout=Layout.CARRIES, kind=OpKind.COMPUTE,
                    constraints=_SELECTION, check=_check_selection, convert=_converter("MAXIMUM", None),
                    quantization="int8; both inputs and the output share one qparams", qparams=QParamsContract.SHARED,
                    versioned_limits=(ONE_FULL_OPERAND,)),
    NeutronOperator(name="aten.minimum.default",
                    annotated_as={
                        aten.minimum.default: SharedAll(),
                    }, targets=(edge("aten.minimum.default"),),
                    layout=Layout.CARRIES, kind=OpKind.COMPUTE,
                    constraints=_SELECTION, check=_check_selection, convert=_converter("MINIMUM", None),
                    quantization="int8; both inputs and the output share one qparams", qparams=QParamsContract.SHARED,
                    versioned_limits=(ONE_FULL_OPERAND,)),
]
