"""The layers of a partitioned model, as the cost model and the per-layer profile see them.

A layer is one operator of a partition's Neutron IR (what the NPU runs) or, where the IR is not known (before
lowering, or a deployable payload), one node of the partition's edge graph; and every node left on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from neutron_backend.ir.reader import IRGraph

# IR operators that only move data (no arithmetic per element), and the one that is a view of its input.
_DATA_MOVEMENT = ("TRANSPOSE", "PAD", "PADV2", "MIRROR_PAD", "SLICE", "CONCATENATION")
_VIEWS = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS")


@dataclass(frozen=True)
class Layer:
    """One layer's work. `partition` is None for a CPU node. `kind`: for an IR operator `compute` (arithmetic per
    element), `data` (moves data only) or `view` (costs nothing); for an edge node its report kind (`compute`,
    `activation`, `shape`, `no_op`, `quantize`, `dequantize`, `getitem`, `other`). Byte counts: activations read and
    written, constants read."""

    partition: int | None
    index: int
    name: str
    operator: str
    kind: str
    input_shapes: tuple[tuple[int, ...], ...]
    output_shapes: tuple[tuple[int, ...], ...]
    macs: int
    input_elements: int
    output_elements: int
    activation_bytes: int
    weight_bytes: int


def ir_layers(partition: int, graph: IRGraph) -> list[Layer]:
    """One layer per operator of `graph`, in execution order, named after its first output tensor."""
    layers = []
    for operator in graph.operators:
        inputs, outputs = graph.operator_inputs(operator), graph.operator_outputs(operator)
        activations = [t for t in inputs if not t.constant]
        kind = "view" if operator.opcode in _VIEWS else "data" if operator.opcode in _DATA_MOVEMENT else "compute"
        moved = 0 if kind == "view" else sum(t.nbytes for t in activations) + sum(t.nbytes for t in outputs)
        layers.append(Layer(
            partition=partition, index=operator.index, name=outputs[0].name if outputs else "",
            operator=operator.opcode, kind=kind,
            input_shapes=tuple(t.shape for t in activations), output_shapes=tuple(t.shape for t in outputs),
            macs=graph.macs(operator), input_elements=sum(t.elements for t in activations),
            output_elements=sum(t.elements for t in outputs), activation_bytes=moved,
            weight_bytes=sum(t.nbytes for t in inputs if t.constant)))
    return layers
