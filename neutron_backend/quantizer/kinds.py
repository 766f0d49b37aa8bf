"""The annotation kinds of the Neutron quantizer: how one anchor node of the exported graph is annotated.

Each operator declares which targets of the exported (pre-dispatch ATen) graph it is annotated as, with their
annotation kind (`NeutronOperator.annotated_as` in neutron_backend/ops); neutron_backend.quantizer.patterns collects
them. This module imports no operator declaration, so the declarations can import it. A kind
annotates one anchor node so that after `convert_pt2e` it is a QDQ cluster: its tensor inputs come from
dequantize and its output goes to quantize. Ops not in the table are left in float.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.fx import Node
from torchao.quantization.pt2e.quantizer import (
    DerivedQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    QuantizationSpecBase,
    SharedQuantizationSpec,
)
from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

from neutron_backend.quantizer.config import (
    BIAS_QMAX,
    BIAS_QMIN,
    NeutronQuantizationConfig,
    fixed_qparams_spec,
)

aten = torch.ops.aten

# node.meta key holding the node's annotation kind while NeutronQuantizer annotates (read by the fused tail).
KIND_META_KEY = "neutron_annotation_kind"

# Resolves the configuration a node is quantized with (None: left in float).
ConfigOf = Callable[[Node], NeutronQuantizationConfig | None]


def is_float_tensor(arg: object) -> bool:
    """Returns whether `arg` is a graph node producing a float32 tensor, the only values we quantize.

    Integer tensors (indices), float64 tensors and shapes (SymInt nodes) are never quantized.
    """
    if not isinstance(arg, Node):
        return False
    val = arg.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dtype == torch.float32


def is_annotated(node: Node) -> bool:
    """Returns whether a quantizer has already claimed `node`."""
    annotation = node.meta.get(Q_ANNOTATION_KEY)
    return annotation is not None and annotation._annotated


def _set_annotation(
    node: Node,
    input_qspec_map: dict[Node, QuantizationSpecBase | None] | None = None,
    output_qspec: QuantizationSpecBase | None = None,
) -> None:
    node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
        input_qspec_map=input_qspec_map or {}, output_qspec=output_qspec, _annotated=True
    )


# Where a clamp-like operator's bound is: (argument position, keyword, default); None when it has no such bound.
Bound = tuple[int, str, float | None] | None


def _bound(node: Node, bound: Bound, infinite: float) -> float:
    if bound is None:
        return infinite
    position, keyword, default = bound
    value = _arg(node, position, keyword, default)
    return infinite if value is None else float(value)


def _arg(node: Node, index: int, name: str, default: object) -> object:
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


# Clamp bounds the NPU runs as an activation function (RELU6, RELU_N1_TO_1, RELU_0_TO_1): their output
# range is independent of the input's. Other bounds only clip, so the output keeps the input's qparams.
_ACTIVATION_BOUNDS = frozenset({(0.0, float("inf")), (0.0, 6.0), (-1.0, 1.0), (0.0, 1.0)})
# The ones TFLite's int8 conv/fully-connected kernels run as a fused activation (RELU, RELU6, RELU_N1_TO_1).
_FUSABLE_BOUNDS = frozenset({(0.0, float("inf")), (0.0, 6.0), (-1.0, 1.0)})


def _is_fusable_activation(node: Node) -> bool:
    """Returns whether `node` is a ReLU, ReLU6 or ReLU_N1_TO_1 form (an operator whose declaration annotates it as
    a fusable Independent, or a Clamp with those bounds), which a conv/linear runs fused (no requantization).

    sigmoid and tanh are not: TFLite's int8 conv/fully-connected kernels fuse only these three, so a sigmoid or
    tanh after a conv is its own LOGISTIC/TANH operator reading an int8 tensor, whose qparams the conv's output
    observer provides.
    """
    kind = node.meta.get(KIND_META_KEY)
    if isinstance(kind, Independent):
        return kind.fusable
    return isinstance(kind, Clamp) and kind.bounds(node) in _FUSABLE_BOUNDS


def _is_batch_norm(node: Node) -> bool:
    # Only seen in QAT graphs: prepare_pt2e folds batchnorm into the conv before annotation, while
    # prepare_qat_pt2e fuses conv+batchnorm after annotation, keeping the conv's input and the batchnorm's
    # output annotations.
    return node.target == aten.batch_norm.default


# What may follow a conv/linear inside its cluster, in order; each step is optional.
_FUSED_TAIL_STEPS: tuple[Callable[[Node], bool], ...] = (_is_batch_norm, _is_fusable_activation)


def _fused_tail(anchor: Node, config: NeutronQuantizationConfig, config_of: ConfigOf) -> list[Node]:
    """Returns the nodes fused after `anchor` (batchnorm, activation), each the single user of the previous
    one and quantized with the same configuration."""
    tail: list[Node] = []
    current = anchor
    for step in _FUSED_TAIL_STEPS:
        users = list(current.users)
        if len(users) != 1:
            break
        candidate = users[0]
        if (
            candidate.op == "call_function"
            and step(candidate)
            and not is_annotated(candidate)
            and is_float_tensor(candidate)
            and config_of(candidate) == config
        ):
            tail.append(candidate)
            current = candidate
    return tail


def _derive_bias_qparams(obs_or_fqs: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the bias scale s_in * s_w (per channel when the weight is per-channel) and zero points 0."""
    act, weight = obs_or_fqs
    act_scale, _ = act.calculate_qparams()
    weight_scale, _ = weight.calculate_qparams()
    scale = (act_scale * weight_scale).to(torch.float32)
    return scale, torch.zeros_like(scale, dtype=torch.int32)


@dataclass(frozen=True)
class Weighted:
    """conv/linear: input activation, weight, int32 bias derived as s_in * s_w; the output is quantized
    after the fused batchnorm/activation tail. `transposed`: the weight is per-channel on axis 1."""

    per_channel: bool
    transposed: bool = False

    def annotate(self, node: Node, config: NeutronQuantizationConfig, config_of: ConfigOf) -> bool:
        x, weight = node.args[0], node.args[1]
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        if not (is_float_tensor(x) and is_float_tensor(weight) and is_float_tensor(node)):
            return False
        per_channel = self.per_channel
        if self.transposed and (node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)) != 1:
            # Axis 1 of a grouped transposed conv's weight holds Cout / groups channels, fewer than the bias has:
            # per tensor keeps the bias scale consistent (the partitioner then rejects it with its reason).
            per_channel = False
        if not per_channel:
            weight_spec = config.linear_weight
        else:
            weight_spec = config.conv_transpose_weight if self.transposed else config.conv_weight
        input_map: dict[Node, QuantizationSpecBase | None] = {x: config.activation, weight: weight_spec}
        if is_float_tensor(bias):
            input_map[bias] = DerivedQuantizationSpec(
                derived_from=[(x, node), (weight, node)],
                derive_qparams_fn=_derive_bias_qparams,
                dtype=torch.int32,
                quant_min=BIAS_QMIN,
                quant_max=BIAS_QMAX,
                qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
                ch_axis=0 if per_channel else None,
            )
        tail = _fused_tail(node, config, config_of)
        if not tail:
            _set_annotation(node, input_map, config.activation)
            return True
        _set_annotation(node, input_map)
        for inner in tail[:-1]:
            _set_annotation(inner)
        _set_annotation(tail[-1], output_qspec=config.activation)
        return True


@dataclass(frozen=True)
class Independent:
    """add, standalone relu/relu6: every tensor input and the output observed on their own. `fusable`: a ReLU
    form a preceding conv/linear runs fused."""

    fusable: bool = False

    def annotate(self, node: Node, config: NeutronQuantizationConfig, config_of: ConfigOf) -> bool:
        inputs = [arg for arg in node.args if isinstance(arg, Node)]
        if not inputs or not all(is_float_tensor(arg) for arg in inputs) or not is_float_tensor(node):
            return False
        _set_annotation(node, dict.fromkeys(inputs, config.activation), config.activation)
        return True


@dataclass(frozen=True)
class SharedWithInput:
    """pools, reshapes, permute, mean, clone: the output keeps the input's qparams."""

    def annotate(self, node: Node, config: NeutronQuantizationConfig, config_of: ConfigOf) -> bool:
        x = node.args[0]
        if not (is_float_tensor(x) and is_float_tensor(node)):
            return False
        _set_annotation(node, {x: config.activation}, SharedQuantizationSpec((x, node)))
        return True


@dataclass(frozen=True)
class SharedAll:
    """cat, maximum, minimum: all inputs and the output share one spec (the first input's)."""

    def annotate(self, node: Node, config: NeutronQuantizationConfig, config_of: ConfigOf) -> bool:
        first = node.args[0]
        operands = first if isinstance(first, (list, tuple)) else [arg for arg in node.args if isinstance(arg, Node)]
        inputs = list(dict.fromkeys(operands))
        if not inputs or not all(is_float_tensor(arg) for arg in inputs) or not is_float_tensor(node):
            return False
        root = (inputs[0], node)
        shared = SharedQuantizationSpec(root)
        input_map: dict[Node, QuantizationSpecBase | None] = {inputs[0]: config.activation}
        input_map.update(dict.fromkeys(inputs[1:], shared))
        _set_annotation(node, input_map, shared)
        return True


@dataclass(frozen=True)
class Clamp:
    """hardtanh, clamp: an activation form (0..inf, 0..6, -1..1, 0..1) is observed on its own; other bounds share
    the input's qparams. `low` and `high` say where the operator keeps its bounds."""

    low: Bound
    high: Bound

    def bounds(self, node: Node) -> tuple[float, float]:
        """(min, max) of the node; a missing bound is infinite."""
        return _bound(node, self.low, -float("inf")), _bound(node, self.high, float("inf"))

    def annotate(self, node: Node, config: NeutronQuantizationConfig, config_of: ConfigOf) -> bool:
        kind = Independent() if self.bounds(node) in _ACTIVATION_BOUNDS else SharedWithInput()
        return kind.annotate(node, config, config_of)


@dataclass(frozen=True)
class FixedOutput:
    """softmax, sigmoid, tanh: input observed, output with the fixed qparams the NPU kernel produces.

    `zero_point_0_scale`: the scale of the same range at zero point 0, when the operator's lowering can produce it
    (softmax: 1/128), for consumers that need zero point 0 (see settle_input_specs)."""

    scale: float
    zero_point: int
    zero_point_0_scale: float | None = None

    def annotate(self, node: Node, config: NeutronQuantizationConfig, config_of: ConfigOf) -> bool:
        x = node.args[0]
        if not (is_float_tensor(x) and is_float_tensor(node)):
            return False
        _set_annotation(node, {x: config.activation}, fixed_qparams_spec(self.scale, self.zero_point))
        return True


def symmetric_activation(config: NeutronQuantizationConfig) -> QuantizationSpec:
    """The activation spec with zero point 0 (per-tensor symmetric), for inputs that require it."""
    return dataclasses.replace(config.activation, qscheme=torch.per_tensor_symmetric)


@dataclass(frozen=True)
class SymmetricInputs:
    """bmm: both inputs symmetric (zero point 0), as Neutron's batch matmul requires; the output observed.

    `settle_input_specs` meets the requirement at the producers, so no requantization separates them."""

    def annotate(self, node: Node, config: NeutronQuantizationConfig, config_of: ConfigOf) -> bool:
        a, b = node.args[0], node.args[1]
        if not (is_float_tensor(a) and is_float_tensor(b) and is_float_tensor(node)):
            return False
        spec = symmetric_activation(config)
        _set_annotation(node, {a: spec, b: spec}, config.activation)
        return True


@dataclass(frozen=True)
class Slope:
    """prelu: input and output observed on their own; the slope, a constant weight, int8 symmetric per tensor
    (int8 PRELU takes one scale for all slopes)."""

    def annotate(self, node: Node, config: NeutronQuantizationConfig, config_of: ConfigOf) -> bool:
        x, slope = node.args[0], node.args[1]
        if not (is_float_tensor(x) and is_float_tensor(slope) and is_float_tensor(node)):
            return False
        _set_annotation(node, {x: config.activation, slope: config.linear_weight}, config.activation)
        return True


AnnotationKind = (Weighted | Independent | SharedWithInput | SharedAll | Clamp | FixedOutput | SymmetricInputs
                  | Slope)

SHARED = SharedWithInput()
INDEPENDENT = Independent()
