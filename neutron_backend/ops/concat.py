"""Concatenation."""

from __future__ import annotations

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
from neutron_backend.ops.limits import VersionedLimit, applies
from neutron_backend.quantizer.kinds import (
    SharedAll,
    aten,
)

CHANNEL_MULTIPLE = VersionedLimit("along the channel axis every input's channel count is a multiple of num_macs "
                                  "(CustomDelegationOptions(force_delegate_cat=True) overrides)")


def cat_dim(node: Node) -> int:
    """The concatenation axis, non-negative."""
    return arg(node, 1, "dim", 0) % len(shape_of(node))


def _check(node: Node, ctx: CheckContext) -> Verdict:
    """Nothing beyond the shared qparams (the declared contract, checked by the partitioner)."""
    return SUPPORTED


def _check_target(node: Node, ctx: CheckContext) -> Verdict:
    rank = len(shape_of(node))
    channel_axis = 1 if rank >= 3 and ctx.is_channels_first(node) else rank - 1
    if cat_dim(node) != channel_axis or ctx.options.force_delegate_cat or not applies(CHANNEL_MULTIPLE, ctx.flavor):
        return SUPPORTED
    num_macs = ctx.target.num_macs
    for index, item in enumerate(node.args[0]):
        channels = shape_of(item)[channel_axis]
        if channels % num_macs:
            return reject(f"input {index} has {channels} channels, not a multiple of num_macs={num_macs}; the "
                          f"converter of flavor {ctx.flavor} rejects this (converters from "
                          f"{CHANNEL_MULTIPLE.first_free_flavor} on accept it; or set "
                          "CustomDelegationOptions(force_delegate_cat=True) if yours does)")
    return SUPPORTED


def _convert(node: Node, ctx) -> None:
    from ai_edge_litert import schema_py_generated as schema

    channels_last = ctx.prefers_channels_last(node)
    inputs = [ctx.input(node, i, channels_last=channels_last) for i in range(len(node.args[0]))]
    output = ctx.output(node, channels_last=channels_last)
    options = schema.ConcatenationOptionsT()
    options.axis = ctx.torch_axis(node, cat_dim(node), channels_last)
    ctx.builder.add_operator("CONCATENATION", inputs, [output], options)


OPERATORS = [
    NeutronOperator(name="aten.cat.default",
                    annotated_as={
                        aten.cat.default: SharedAll(),
                    }, targets=(edge("aten.cat.default"),),
                    layout=Layout.CARRIES, kind=OpKind.COMPUTE,
                    constraints="all inputs and the output share qparams",
                    check=_check, check_target=_check_target, convert=_convert, versioned_limits=(CHANNEL_MULTIPLE,),
                    quantization="int8; all inputs and the output share one qparams",
                    qparams=QParamsContract.SHARED, requantizations=0),
]
