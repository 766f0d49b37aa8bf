"""ReLU and its clamp/hardtanh forms."""

from __future__ import annotations

import math

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
)
from neutron_backend.ops.edge import edge
from neutron_backend.ops.limits import VersionedLimit, applies
from neutron_backend.quantizer.kinds import (
    Clamp,
    Independent,
    aten,
)

# Clamp bounds Neutron runs as an activation, with the TFLite activation each maps to.
RELU_FORMS: dict[tuple[float, float], str] = {
    (0.0, math.inf): "RELU",
    (0.0, 6.0): "RELU6",
    (-1.0, 1.0): "RELU_N1_TO_1",
    (0.0, 1.0): "RELU_0_TO_1",
}


RELU_BOUNDS_ONLY = VersionedLimit("clamp/hardtanh bounds are a ReLU form (other bounds are rejected even with equal "
                                  "input and output qparams)")


def bounds(node: Node) -> tuple[float, float]:
    """(min, max) of relu, hardtanh or clamp; missing bounds are infinite."""
    name = node.target._schema.name
    if name == "aten::relu":
        return (0.0, math.inf)
    if name == "aten::hardtanh":
        return (float(arg(node, 1, "min_val", -1.0)), float(arg(node, 2, "max_val", 1.0)))
    low, high = arg(node, 1, "min", None), arg(node, 2, "max", None)
    return (-math.inf if low is None else float(low), math.inf if high is None else float(high))


def relu_form(node: Node) -> str | None:
    """The TFLite activation for this node's bounds, or None when they are not a ReLU form."""
    return RELU_FORMS.get(bounds(node))


def _fusable(node: Node) -> bool:
    """TFLite fuses RELU, RELU6 and RELU_N1_TO_1 into conv/linear; RELU_0_TO_1 needs its own operator."""
    return relu_form(node) in ("RELU", "RELU6", "RELU_N1_TO_1")


def _check(node: Node, ctx: CheckContext) -> Verdict:
    """Any bounds on the current converter: ReLU forms requantize, others clamp in the integer domain under their
    declared contract. Converters before RELU_BOUNDS_ONLY.first_free_flavor run ReLU forms only."""
    if relu_form(node) is None and applies(RELU_BOUNDS_ONLY, ctx.flavor):
        low, high = bounds(node)
        return reject(f"clamp bounds ({low:g}, {high:g}) are not a ReLU form {sorted(RELU_FORMS)}; the converter of "
                      f"flavor {ctx.flavor} runs no other bounds (converters from "
                      f"{RELU_BOUNDS_ONLY.first_free_flavor} on do, with equal input and output qparams)")
    return SUPPORTED


def _contract(node: Node) -> QParamsContract:
    """ReLU forms run as TFLite activations, which requantize; other bounds clamp integers, keeping the qparams."""
    return QParamsContract.FREE if relu_form(node) is not None else QParamsContract.OUTPUT_EQUALS_INPUT


def _convert(node: Node, ctx) -> None:
    import numpy as np

    channels_last = ctx.input_is_channels_last(node, 0)
    x = ctx.input(node, 0)
    output = ctx.output(node, channels_last=channels_last)
    form = relu_form(node)
    if form is not None:
        ctx.builder.add_operator(form, [x], [output])
        return
    # Other bounds (input and output share qparams, see _check): clamp in the integer domain.
    q = ctx.output_qparams(node)
    steps = [(op, bound) for op, bound in zip(("MAXIMUM", "MINIMUM"), bounds(node), strict=True)
             if np.isfinite(bound)]
    current = x
    for position, (op, bound) in enumerate(steps):
        level = int(np.clip(np.round(bound / q.scale) + q.zero_point, q.qmin, q.qmax))
        constant = ctx.builder.add_tensor(ctx.name(f"{node.name}_{op.lower()}"), [], "int8", scale=q.scale,
                                          zero_point=q.zero_point, data=np.array(level, np.int8))
        last = position == len(steps) - 1
        result = output if last else ctx.new_tensor(f"{node.name}_{op.lower()}d", ctx.builder.tensor_shape(x), q)
        ctx.builder.add_operator(op, [current, constant], [result])
        current = result


_CONSTRAINTS = ("bounds (0, inf), (0, 6), (-1, 1) run as RELU, RELU6, RELU_N1_TO_1, fused into a preceding "
                "convolution or linear layer; (0, 1) as RELU_0_TO_1; other bounds need equal input/output qparams "
                "(clamped in the integer domain)")
_HARDTANH_BOUNDS = Clamp(low=(1, "min_val", -1.0), high=(2, "max_val", 1.0))
_CLAMP_BOUNDS = Clamp(low=(1, "min", None), high=(2, "max", None))
OPERATORS = [
    NeutronOperator(name="aten.relu.default",
                    annotated_as={
                        aten.relu.default: Independent(fusable=True),
                        aten.relu_.default: Independent(fusable=True),
                    }, targets=(edge("aten.relu.default"),),
                    layout=Layout.CARRIES, kind=OpKind.ACTIVATION,
                    constraints="fused into a preceding convolution or linear layer when it follows one",
                    check=_check, fusable=_fusable, convert=_convert,
                    qparams=_contract),
    NeutronOperator(name="aten.hardtanh.default",
                    annotated_as={
                        aten.relu6.default: Independent(fusable=True),
                        aten.hardtanh.default: _HARDTANH_BOUNDS,
                        aten.hardtanh_.default: _HARDTANH_BOUNDS,
                    }, aliases=("relu6",), targets=(edge("aten.hardtanh.default"),),
                    layout=Layout.CARRIES, kind=OpKind.ACTIVATION,
                    constraints=_CONSTRAINTS, check=_check, fusable=_fusable, convert=_convert,
                    qparams=_contract, versioned_limits=(RELU_BOUNDS_ONLY,)),
    NeutronOperator(name="aten.clamp.default",
                    annotated_as={
                        aten.clamp.default: _CLAMP_BOUNDS,
                        aten.clamp_.default: _CLAMP_BOUNDS,
                        aten.clamp_min.default: Clamp(low=(1, "min", None), high=None),
                        aten.clamp_max.default: Clamp(low=None, high=(1, "max", None)),
                    }, targets=(edge("aten.clamp.default"),),
                    layout=Layout.CARRIES, kind=OpKind.ACTIVATION,
                    constraints=_CONSTRAINTS, check=_check, fusable=_fusable, convert=_convert,
                    qparams=_contract, versioned_limits=(RELU_BOUNDS_ONLY,)),
]
