"""The delegation report's data: what runs where, why, and what lowering and serialization add.

The partitioner fills it (`neutron_backend.report.build_report`) from the partitioned edge program; once the program
is lowered, `add_lowering` adds what only lowering knows (layout transposes at partition boundaries, each partition's
Neutron IR); once it is serialized, `add_program` adds the memory report (neutron_backend.memory_fit). Its JSON form
(`to_dict`) is documented in docs/report-schema.md. The counts agree with ExecuTorch's
`executorch.devtools.backend_debug.get_delegation_info` on the lowered program, which also counts one `getitem` per
delegate output on the CPU (`delegation_info_counts`). Renderings (text, HTML, CSV) live in their own modules and
`neutron_backend.report.DelegationReport` puts them together.

This module does not import torch at load time: `neutron --help` and `import neutron_backend` stay fast.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from neutron_backend.cost_model import LatencyEstimate, estimate
from neutron_backend.layer_profile import per_layer
from neutron_backend.layers import Layer, ir_layers

if TYPE_CHECKING:
    from neutron_backend.ir.reader import IRGraph
    from neutron_backend.memory_fit import MemoryReport
    from neutron_backend.targets import NeutronTarget

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2

# Node kinds that carry data between operators rather than compute (their placement follows their operator).
PLUMBING_KINDS = ("quantize", "dequantize", "getitem")


@dataclass(frozen=True)
class NodeEntry:
    """One call_function node of the partitioned graph.

    `kind` is the registry's kind for a Neutron operator (`compute`, `activation`, `shape`, or `no_op` for a
    node that computes nothing), `quantize`/`dequantize`/`getitem` for plumbing, `other` for an operator Neutron
    has no rule for. `inputs` names the node's run-time inputs (nodes and model inputs; constants left out);
    `input_elements`/`output_elements` count their elements; `weight_bytes` is the constant data it reads
    (int8 weights, int32 bias); `input_shapes` and `output_shape` the shapes of those inputs and of its (first)
    output, `activation_bytes` their bytes in the edge graph (float where the graph computes in float).
    """

    name: str
    target: str
    delegated: bool
    partition: int | None
    reason: str
    macs: int = 0
    kind: str = "other"
    inputs: tuple[str, ...] = ()
    input_elements: int = 0
    output_elements: int = 0
    weight_bytes: int = 0
    input_shapes: tuple[tuple[int, ...], ...] = ()
    output_shape: tuple[int, ...] = ()
    activation_bytes: int = 0


@dataclass(frozen=True)
class BoundaryTranspose:
    """A layout transpose (NCHW <-> NHWC) at a delegate input or output.

    `on_npu`: inside the Neutron IR (use_neutron_for_format_conversion); otherwise the runtime permutes on the CPU.
    `shape` is the ExecuTorch-side shape, empty when the payload does not record it (deployable payloads).
    """

    side: str  # "input" or "output"
    index: int
    shape: tuple[int, ...]
    on_npu: bool

    @property
    def elements(self) -> int:
        return math.prod(self.shape) if self.shape else 0


@dataclass
class PartitionEntry:
    """One partition (one delegate call): its nodes and the values crossing its boundary.

    `boundary_transposes` and `num_ir_operators` are None until `DelegationReport.add_lowering`, which also keeps
    the partition's Neutron IR (`ir`, None for a deployable payload, whose weights section is `payload_weight_bytes`).
    """

    id: int
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    boundary_transposes: tuple[BoundaryTranspose, ...] | None = None
    num_ir_operators: int | None = None
    ir: IRGraph | None = field(default=None, repr=False, compare=False)
    payload_weight_bytes: int = 0


@dataclass(frozen=True)
class OperatorCount:
    """How many nodes of one operator type run on the NPU and on the CPU, and their MACs."""

    operator: str
    delegated: int
    cpu: int
    delegated_macs: int
    cpu_macs: int


@dataclass
class ReportData:
    """Every call_function node with its placement and, when it stays on the CPU, the reason."""

    target: str
    nodes: list[NodeEntry] = field(default_factory=list)
    num_partitions: int = 0
    partitions: list[PartitionEntry] = field(default_factory=list)
    memory: MemoryReport | None = None
    _by_name: dict[str, NodeEntry] = field(default_factory=dict, init=False, repr=False, compare=False)

    # -- numbers --------------------------------------------------------------------------------------------

    @property
    def total_macs(self) -> int:
        return sum(entry.macs for entry in self.nodes)

    @property
    def delegated_macs(self) -> int:
        return sum(entry.macs for entry in self.nodes if entry.delegated)

    @property
    def delegated_mac_fraction(self) -> float:
        """Fraction of multiply-accumulates that run on Neutron (1.0 for a graph without MACs fully delegated)."""
        total = self.total_macs
        if total == 0:
            return 1.0 if self.nodes and all(e.delegated for e in self.nodes) else 0.0
        return self.delegated_macs / total

    @property
    def lowered(self) -> bool:
        """Whether lowering facts (boundary transposes) were added."""
        return bool(self.partitions) and all(p.boundary_transposes is not None for p in self.partitions)

    @property
    def num_boundary_transposes(self) -> int | None:
        """Layout transposes at partition boundaries (None before lowering)."""
        if not self.lowered:
            return None if self.partitions else 0
        return sum(len(p.boundary_transposes) for p in self.partitions)

    def entry(self, name: str) -> NodeEntry:
        """The entry of the node called `name`; KeyError naming the known nodes otherwise."""
        index = self._index()
        if name not in index:
            raise KeyError(f"no node {name!r} in the report; nodes: {[e.name for e in self.nodes]}")
        return index[name]

    def _index(self) -> dict[str, NodeEntry]:
        if len(self._by_name) != len(self.nodes):
            self._by_name = {entry.name: entry for entry in self.nodes}
        return self._by_name

    def rejected(self) -> list[NodeEntry]:
        return [entry for entry in self.nodes if not entry.delegated]

    def partition_macs(self, partition: PartitionEntry) -> int:
        return sum(self.entry(name).macs for name in partition.nodes)

    def partition_operators(self, partition: PartitionEntry) -> dict[str, int]:
        """Operator type -> count of the partition's operator nodes (plumbing left out), in graph order."""
        return dict(Counter(self.entry(n).target for n in partition.nodes
                            if self.entry(n).kind not in PLUMBING_KINDS))

    def operator_counts(self) -> list[OperatorCount]:
        """Per operator type (every node, plumbing included): NPU and CPU counts and MACs, sorted by type."""
        counts: dict[str, list[int]] = {}
        for entry in self.nodes:
            row = counts.setdefault(entry.target, [0, 0, 0, 0])
            row[0 if entry.delegated else 1] += 1
            row[2 if entry.delegated else 3] += entry.macs
        return [OperatorCount(name, *row) for name, row in sorted(counts.items())]

    def delegation_info_counts(self) -> dict[str, Any]:
        """What ExecuTorch's `get_delegation_info` reports for the lowered program: delegated subgraphs, delegated
        and non-delegated nodes, per op type (node name without its `_<n>` suffix). Lowering adds one `getitem`
        per delegate output on the CPU; those are counted here."""
        by_type: dict[str, list[int]] = {}
        for entry in self.nodes:
            by_type.setdefault(re.sub(r"_[\d]+$", "", entry.name), [0, 0])[0 if entry.delegated else 1] += 1
        getitems = sum(len(p.outputs) for p in self.partitions)
        if getitems:
            by_type.setdefault("getitem", [0, 0])[1] += getitems
        return {
            "num_delegated_subgraphs": self.num_partitions,
            "num_delegated_nodes": sum(row[0] for row in by_type.values()),
            "num_non_delegated_nodes": sum(row[1] for row in by_type.values()),
            "delegation_by_operator": {name: tuple(row) for name, row in sorted(by_type.items())},
        }

    def npu_layers(self) -> dict[int, list[Layer]]:
        """Per partition, its layers: the operators of its Neutron IR, or its edge nodes when the IR is not known
        (before lowering, or a deployable payload)."""
        return {p.id: ir_layers(p.id, p.ir) if p.ir is not None else
                [_node_layer(self.entry(name), index, on_npu=True) for index, name in enumerate(p.nodes)]
                for p in self.partitions}

    def cpu_layers(self) -> list[Layer]:
        """The nodes on the CPU, then the layout transposes the runtime does on the CPU at partition boundaries."""
        nodes = [_node_layer(e, index, on_npu=False) for index, e in enumerate(self.nodes) if not e.delegated]
        transposes = [t for p in self.partitions for t in p.boundary_transposes or () if not t.on_npu]
        return nodes + [Layer(None, len(self.nodes) + number, f"{t.side} {t.index}", "(layout transpose)",
                              "transpose", (t.shape,), (t.shape,), 0, t.elements, t.elements, 2 * t.elements, 0)
                        for number, t in enumerate(transposes)]

    def latency_estimate(self, target: NeutronTarget | str | None = None) -> LatencyEstimate:
        """The cost model's estimate (neutron_backend.cost_model), layer by layer, on `target` (default: the
        report's). Raises KeyError when the cost tables have no figures for the target."""
        baseline = [_node_layer(e, index, on_npu=False) for index, e in enumerate(self.nodes)]
        return estimate(self.npu_layers(), self.cpu_layers(), baseline, target or self.target)

    # -- lowering -------------------------------------------------------------------------------------------

    def add_lowering(self, lowered: Any) -> None:
        """Records, per partition, the layout transposes at its boundary, its IR operator count and its IR (or, for
        a deployable payload, its weights section size), read from the delegate payloads of `lowered` (an
        EdgeProgramManager, ExportedProgram or GraphModule after to_edge_transform_and_lower)."""
        from neutron_backend.ir.reader import read_ir
        from neutron_backend.payload import EmulationPayload, read_payload

        graph_module = _graph_module(lowered)
        for node in graph_module.graph.nodes:
            if node.op != "get_attr" or not node.name.startswith("lowered_module_"):
                continue
            module = getattr(graph_module, node.name)
            if getattr(module, "backend_id", None) != "NeutronBackend":
                continue
            partition = self._partition_of(module)
            if partition is None:
                logger.warning("delegate %s matches no partition of the report; its transposes are not counted",
                               node.name)
                continue
            payload = read_payload(module.processed_bytes)
            if isinstance(payload, EmulationPayload):
                transposes, num_operators = _emulation_transposes(payload)
                partition.ir = read_ir(payload.tflite)
            else:
                transposes = tuple(BoundaryTranspose(side, index, (), False)
                                   for side, formats in (("input", payload.input_formats),
                                                         ("output", payload.output_formats))
                                   for index, flag in enumerate(formats) if flag)
                num_operators = None
                partition.payload_weight_bytes = len(payload.weights)
            partition.boundary_transposes = transposes
            partition.num_ir_operators = num_operators

    def add_program(self, executorch_program: Any, *, fetch_constants_to_sram: bool = False) -> MemoryReport:
        """Records the memory report (neutron_backend.memory_fit) of the serialized program: `executorch_program`
        is the ExecutorchProgramManager from `to_executorch()` of the program `add_lowering` read. Its memory plan
        gives the CPU side's planned buffers, its buffer the .pte size; each partition's IR gives its arena.
        Returns the memory report (also `self.memory`)."""
        from executorch.exir.scalar_type import ScalarType

        from neutron_backend.memory_fit import memory_report, partition_memory
        from neutron_backend.targets import get_target

        plan = executorch_program.executorch_program.execution_plan[0]
        tensors = [plan.values[i].val for i in (*plan.inputs, *plan.outputs)]
        input_shapes = [tuple(plan.values[i].val.sizes) for i in plan.inputs
                        if hasattr(plan.values[i].val, "sizes")]
        float_io = sum(math.prod(t.sizes) * 4 for t in tensors
                       if hasattr(t, "sizes") and t.scalar_type == ScalarType.FLOAT)
        self.memory = memory_report(
            get_target(self.target),
            [partition_memory(p.id, p.ir, p.payload_weight_bytes) for p in self.partitions],
            cpu_planned_bytes=sum(plan.non_const_buffer_sizes),
            cpu_weight_bytes=sum(e.weight_bytes for e in self.nodes if not e.delegated),
            pte_bytes=len(executorch_program.buffer), input_shapes=input_shapes, float_io_bytes=float_io,
            fetch_constants_to_sram=fetch_constants_to_sram)
        return self.memory

    def _partition_of(self, module: Any) -> PartitionEntry | None:
        index = self._index()
        names = [n.name for n in module.original_module.graph.nodes if n.op == "call_function"]
        ids = Counter(index[n].partition for n in names if n in index and index[n].partition is not None)
        if not ids:
            return None
        wanted = ids.most_common(1)[0][0]
        return next((p for p in self.partitions if p.id == wanted), None)

    # -- output ---------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (docs/report-schema.md): counts, MACs, partitions, operator types, CPU nodes with
        their reasons, the latency estimate, the per-layer profile, the memory report, and every node."""
        estimate = self.estimate_or_none()
        partition_times = {p.partition: p.total_us for p in estimate.partitions} if estimate else {}
        return {
            "schema_version": SCHEMA_VERSION,
            "target": self.target,
            "lowered": self.lowered,
            "num_partitions": self.num_partitions,
            "num_nodes": len(self.nodes),
            "num_delegated_nodes": sum(e.delegated for e in self.nodes),
            "num_cpu_nodes": sum(not e.delegated for e in self.nodes),
            "total_macs": self.total_macs,
            "delegated_macs": self.delegated_macs,
            "cpu_macs": self.total_macs - self.delegated_macs,
            "delegated_mac_fraction": self.delegated_mac_fraction,
            "num_boundary_transposes": self.num_boundary_transposes,
            "partitions": [
                {
                    "id": p.id,
                    "num_nodes": len(p.nodes),
                    "nodes": list(p.nodes),
                    "operators": self.partition_operators(p),
                    "macs": self.partition_macs(p),
                    "weight_bytes": sum(self.entry(n).weight_bytes for n in p.nodes),
                    "inputs": list(p.inputs),
                    "outputs": list(p.outputs),
                    "boundary_transposes": None if p.boundary_transposes is None else [
                        {**asdict(t), "shape": list(t.shape), "elements": t.elements} for t in p.boundary_transposes],
                    "num_ir_operators": p.num_ir_operators,
                    "estimated_time_us": partition_times.get(p.id),
                }
                for p in self.partitions
            ],
            "operators": [asdict(count) for count in self.operator_counts()],
            "cpu_nodes": [{"name": e.name, "target": e.target, "kind": e.kind, "reason": e.reason}
                          for e in self.nodes if not e.delegated],
            "latency_estimate": estimate.to_dict() if estimate else None,
            "layers": [row.to_dict() for row in per_layer(estimate)] if estimate else None,
            "memory": self.memory.to_dict() if self.memory else None,
            "nodes": [{**asdict(e), "inputs": list(e.inputs), "input_shapes": [list(s) for s in e.input_shapes],
                       "output_shape": list(e.output_shape)} for e in self.nodes],
        }

    def estimate_or_none(self) -> LatencyEstimate | None:
        """The latency estimate, or None for a target without cost figures (logged)."""
        try:
            return self.latency_estimate()
        except (KeyError, ValueError) as error:  # a target without cost figures still gets its report
            logger.info("no latency estimate for %s: %s", self.target, error)
            return None


def _node_layer(entry: NodeEntry, index: int, *, on_npu: bool) -> Layer:
    """An edge node as a layer. On the NPU its values are int8 (one byte per element) and plumbing moves nothing
    (it folds into its operator's requantization); on the CPU it moves its edge graph bytes."""
    if on_npu:
        moved = 0 if entry.kind in PLUMBING_KINDS else entry.input_elements + entry.output_elements
    else:
        moved = entry.activation_bytes
    return Layer(entry.partition if on_npu else None, index, entry.name, entry.target, entry.kind,
                 entry.input_shapes, (entry.output_shape,) if entry.output_shape else (), entry.macs,
                 entry.input_elements, entry.output_elements, moved, entry.weight_bytes)


def _graph_module(lowered: Any) -> Any:
    if hasattr(lowered, "exported_program"):
        lowered = lowered.exported_program()
    return getattr(lowered, "graph_module", lowered)


def _emulation_transposes(payload: Any) -> tuple[tuple[BoundaryTranspose, ...], int]:
    """Transposes at the boundary of an emulation payload: CPU-side ones from its I/O description, NPU-side ones
    from TRANSPOSE operators on the IR's inputs and outputs. Returns them and the IR's operator count."""
    from ai_edge_litert import schema_py_generated as schema

    found = [BoundaryTranspose(side, spec.arg_index, tuple(spec.shape), False)
             for side, specs in (("input", payload.inputs), ("output", payload.outputs))
             for spec in specs if spec.channels_last]
    model = schema.ModelT.InitFromPackedBuf(payload.tflite, 0)
    graph = model.subgraphs[0]
    graph_inputs, graph_outputs = list(graph.inputs), list(graph.outputs)
    for operator in graph.operators:
        code = model.operatorCodes[operator.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) != schema.BuiltinOperator.TRANSPOSE:
            continue
        source, result = int(operator.inputs[0]), int(operator.outputs[0])
        if source in graph_inputs:
            index = graph_inputs.index(source)
            found.append(BoundaryTranspose("input", index, tuple(payload.inputs[index].shape), True))
        if result in graph_outputs:
            index = graph_outputs.index(result)
            found.append(BoundaryTranspose("output", index, tuple(payload.outputs[index].shape), True))
    return tuple(found), len(graph.operators)


