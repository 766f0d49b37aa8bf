"""`patterns()`, the table NeutronQuantizer reads (collected from the operator declarations), and the input
requirements met at the producer.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.quantizer import (
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    QuantizationSpecBase,
    SharedQuantizationSpec,
)
from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

from neutron_backend import ops
from neutron_backend.quantizer.kinds import (
    AnnotationKind,
    ConfigOf,
    FixedOutput,
    SharedAll,
    SymmetricInputs,
    is_annotated,
)


@functools.cache
def patterns() -> dict[torch._ops.OpOverload, AnnotationKind]:
    """How NeutronQuantizer annotates each pre-dispatch ATen operator: read from the operator declarations
    (`NeutronOperator.annotated_as` in neutron_backend/ops), so an operator's annotation lives with its rules."""
    table: dict[torch._ops.OpOverload, AnnotationKind] = {}
    for operator in ops.operators():
        for target, kind in operator.annotated_as.items():
            if target in table:
                raise RuntimeError(f"{target} is annotated by two operator declarations, {operator.name} and another")
            table[target] = kind
    return table


# -- input requirements met at the producer --------------------------------------------------------------------

# torchao shares one observer between a producer's output and a consumer's input edge when these attributes of
# their specs agree; otherwise it inserts a requantization (dequantize -> quantize) between them.
_QPARAMS_ATTRIBUTES = ("dtype", "is_dynamic", "quant_min", "quant_max", "qscheme", "ch_axis", "scale", "zero_point")
_MISSING = object()


def _same_qparams(a: QuantizationSpecBase, b: QuantizationSpecBase) -> bool:
    return all(getattr(a, name, _MISSING) == getattr(b, name, _MISSING) for name in _QPARAMS_ATTRIBUTES)


def _annotation(node: object) -> QuantizationAnnotation | None:
    return node.meta[Q_ANNOTATION_KEY] if isinstance(node, Node) and is_annotated(node) else None


def _shared_input(node: Node) -> Node | None:
    """The input whose qparams `node`'s output shares (pools, reshapes, permutes), else None."""
    annotation = _annotation(node)
    if annotation is None or not isinstance(annotation.output_qspec, SharedQuantizationSpec):
        return None
    edge = annotation.output_qspec.edge_or_node
    if isinstance(edge, tuple) and edge[1] is node and list(annotation.input_qspec_map) == [edge[0]]:
        return edge[0]
    return None


def _output_spec(node: Node) -> QuantizationSpecBase | None:
    """The spec that finally decides the qparams of `node`'s output (shared specs followed), or None."""
    annotation = _annotation(node)
    spec = None if annotation is None else annotation.output_qspec
    while isinstance(spec, SharedQuantizationSpec):
        source = spec.edge_or_node
        if isinstance(source, Node):
            annotation = _annotation(source)
            spec = None if annotation is None else annotation.output_qspec
        else:
            annotation = _annotation(source[1])
            spec = None if annotation is None else annotation.input_qspec_map.get(source[0])
    return spec


def _symmetric_form(producer: Node, spec: QuantizationSpecBase,
                    required: QuantizationSpec) -> QuantizationSpecBase | None:
    """A spec with zero point 0 that can replace `producer`'s output spec `spec`, or None when there is none."""
    if _same_qparams(spec, required):
        return spec
    if isinstance(spec, FixedQParamsQuantizationSpec):
        if spec.zero_point == 0:
            return spec
        kind = patterns().get(producer.target)
        if isinstance(kind, FixedOutput) and kind.zero_point_0_scale is not None:
            # softmax's [0, 1) at (1/256, -128) -> the same range at (1/128, 0).
            return dataclasses.replace(spec, scale=kind.zero_point_0_scale, zero_point=0)
        return None
    if isinstance(spec, QuantizationSpec) and spec.qscheme == torch.per_tensor_affine:
        return required
    return None


def _require_at_producer(consumer: Node, arg: Node) -> int:
    """Makes the value `arg` (and the data-movement chain it comes through) carry the spec `consumer` requires for
    it. Returns the number of specs changed (0 when the producer cannot take it: a requantization remains)."""
    required = consumer.meta[Q_ANNOTATION_KEY].input_qspec_map[arg]
    edges = [(arg, consumer)]
    producer = arg
    while (source := _shared_input(producer)) is not None:
        edges.append((source, producer))
        producer = source
    annotation = _annotation(producer)
    spec = required
    if annotation is not None and annotation.output_qspec is not None:
        spec = _symmetric_form(producer, annotation.output_qspec, required)
        if spec is None:
            return 0
        annotation.output_qspec = spec
    for source, user in edges:
        user.meta[Q_ANNOTATION_KEY].input_qspec_map[source] = spec
    return len(edges) + (annotation is not None)


def settle_input_specs(model: GraphModule, config_of: ConfigOf) -> int:
    """After annotation: keeps requantizations (dequantize -> quantize pairs, which stay on the CPU and split
    partitions) out from between annotated operators.

    1. An input requirement (bmm's zero point 0) is met by the producer: its output spec, and the specs along the
       data movement in between, become the required form (softmax's fixed output moves to (1/128, 0); other
       fixed outputs keep theirs and a requantization remains).
    2. An input that accepts any qparams (a plain activation spec, except for cat/maximum/minimum, whose inputs
       are observed together) shares its producer's output qparams whenever these differ from a plain activation
       spec (fixed softmax/sigmoid outputs, symmetric outputs from step 1).

    Returns the number of specs changed.
    """
    annotated = [node for node in model.graph.nodes if is_annotated(node)]
    changed = 0
    for node in annotated:
        if isinstance(patterns().get(node.target), SymmetricInputs):
            for arg in list(node.meta[Q_ANNOTATION_KEY].input_qspec_map):
                changed += _require_at_producer(node, arg)
    for node in annotated:
        config = config_of(node)
        if config is None or isinstance(patterns().get(node.target), (SharedAll, SymmetricInputs)):
            continue
        input_map = node.meta[Q_ANNOTATION_KEY].input_qspec_map
        for arg, spec in list(input_map.items()):
            if spec != config.activation:
                continue
            produced = _output_spec(arg)
            if produced is not None and not _same_qparams(produced, spec):
                input_map[arg] = SharedQuantizationSpec(arg)
                changed += 1
    return changed
