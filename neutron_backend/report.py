"""DelegationReport: what runs where, why, and how fast it is estimated to be.

The partitioner fills it (`build_report`) from the partitioned edge program; once the program is lowered,
`DelegationReport.add_lowering` adds what only lowering knows (layout transposes at partition boundaries, IR
operator counts). Its JSON form (`to_dict`) is documented in docs/report-schema.md. The counts agree with
ExecuTorch's `executorch.devtools.backend_debug.get_delegation_info` on the lowered program, which also counts one
`getitem` per delegate output on the CPU (`delegation_info_counts`).

This module does not import torch at load time: `neutron --help` and `import neutron_backend` stay fast.
"""

from __future__ import annotations

import html
import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.export import ExportedProgram
    from torch.fx import Node

    from neutron_backend.cost_model import LatencyEstimate
    from neutron_backend.ir.reader import IRGraph
    from neutron_backend.memory_fit import MemoryReport

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
    (int8 weights, int32 bias).
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
class DelegationReport:
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

    def latency_estimate(self) -> LatencyEstimate:
        """The cost model's estimate for this report's target (neutron_backend.cost_model)."""
        from neutron_backend.cost_model import estimate

        return estimate(self)

    # -- lowering -------------------------------------------------------------------------------------------

    def add_lowering(self, lowered: Any) -> None:
        """Records, per partition, the layout transposes at its boundary and its IR operator count, read from the
        delegate payloads of `lowered` (an EdgeProgramManager, ExportedProgram or GraphModule after
        to_edge_transform_and_lower)."""
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
        from neutron_backend.memory_fit import memory_report, partition_memory
        from neutron_backend.targets import get_target

        plan = executorch_program.executorch_program.execution_plan[0]
        input_shapes = [tuple(plan.values[i].val.sizes) for i in plan.inputs
                        if hasattr(plan.values[i].val, "sizes")]
        self.memory = memory_report(
            get_target(self.target),
            [partition_memory(p.id, p.ir, p.payload_weight_bytes) for p in self.partitions],
            cpu_planned_bytes=sum(plan.non_const_buffer_sizes),
            cpu_weight_bytes=sum(e.weight_bytes for e in self.nodes if not e.delegated),
            pte_bytes=len(executorch_program.buffer), input_shapes=input_shapes,
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
        their reasons, the latency estimate, and every node."""
        estimate = self._estimate_or_none()
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
            "memory": self.memory.to_dict() if self.memory else None,
            "nodes": [{**asdict(e), "inputs": list(e.inputs)} for e in self.nodes],
        }

    def _estimate_or_none(self) -> LatencyEstimate | None:
        try:
            return self.latency_estimate()
        except (KeyError, ValueError) as error:  # a target without cost figures still gets its report
            logger.info("no latency estimate for %s: %s", self.target, error)
            return None

    def _headline(self) -> list[str]:
        transposes = self.num_boundary_transposes
        delegated = sum(e.delegated for e in self.nodes)
        lines = [f"Neutron delegation report for {self.target}",
                 f"  {self.num_partitions} partition(s), i.e. {self.num_partitions} delegate call(s); {delegated} of "
                 f"{len(self.nodes)} nodes on the NPU",
                 f"  {self.delegated_macs:,} of {self.total_macs:,} MACs on the NPU "
                 f"({100 * self.delegated_mac_fraction:.1f}%)"]
        if transposes is not None:
            lines[-1] += f"; {transposes} layout transpose(s) at partition boundaries"
        return lines

    def _partition_lines(self, estimate: LatencyEstimate | None) -> list[str]:
        if not self.partitions:
            return []
        times = {p.partition: p.total_us for p in estimate.partitions} if estimate else {}
        rows = []
        for p in self.partitions:
            transposes = "?" if p.boundary_transposes is None else (
                f"{len(p.boundary_transposes)}" + (" (NPU)" if p.boundary_transposes and
                                                   all(t.on_npu for t in p.boundary_transposes) else
                                                   " (CPU)" if p.boundary_transposes else ""))
            time = f"{times[p.id] / 1000:.3f} ms" if p.id in times else "-"
            operators = ", ".join(f"{_short(name)}" + (f" x{count}" if count > 1 else "")
                                  for name, count in self.partition_operators(p).items())
            rows.append((str(p.id), f"{len(p.nodes)}", f"{self.partition_macs(p):,}",
                         f"{len(p.inputs)}/{len(p.outputs)}", transposes, time, operators))
        return ["", "Partitions (est. time: the cost-model estimate for one call)",
                *_table(("#", "nodes", "MACs", "in/out", "transposes", "est. time", "operators"), rows)]

    def _operator_lines(self) -> list[str]:
        plumbing_targets = {e.target for e in self.nodes if e.kind in PLUMBING_KINDS}
        counts = self.operator_counts()
        rows = [(c.operator, str(c.delegated), str(c.cpu), f"{c.delegated_macs:,}" if c.delegated_macs else "",
                 f"{c.cpu_macs:,}" if c.cpu_macs else "")
                for c in counts if c.operator not in plumbing_targets]
        plumbing = [c for c in counts if c.operator in plumbing_targets]
        if plumbing:
            rows.append(("(quantize, dequantize, getitem)", str(sum(c.delegated for c in plumbing)),
                         str(sum(c.cpu for c in plumbing)), "", ""))
        return ["", "Operators (nodes per operator type)",
                *_table(("operator", "NPU", "CPU", "MACs on NPU", "MACs on CPU"), rows)]

    def _cpu_lines(self) -> list[str]:
        rejected = self.rejected()
        if not rejected:
            return ["", "On the CPU: nothing"]
        rows = [(e.name, _short(e.target), e.reason) for e in rejected]
        return ["", f"On the CPU, and why ({len(rejected)} node(s))", *_table(("node", "operator", "reason"), rows)]

    def summary(self) -> str:
        """The readable report: headline, partitions, operator types, every CPU node with its reason, and the
        latency estimate."""
        estimate = self._estimate_or_none()
        lines = [*self._headline(), *self._partition_lines(estimate), *self._operator_lines(), *self._cpu_lines()]
        if estimate is not None:
            lines += ["", str(estimate)]
        if self.memory is not None:
            from neutron_backend.report_text import memory_lines

            lines += ["", *memory_lines(self.memory)]
        return "\n".join(lines)

    def __str__(self) -> str:
        rows = [(e.name, e.target, f"NPU[{e.partition}]" if e.delegated else "CPU", e.reason) for e in self.nodes]
        return "\n".join([self.summary(), "", "Every node", *_table(("node", "target", "where", "reason"), rows)])

    def to_html(self) -> str:
        """A self-contained HTML page with an SVG of the operator graph, coloured by placement."""
        return _graph_html(self)


def _short(target: str) -> str:
    """'aten.convolution.default' -> 'convolution'; other names unchanged."""
    parts = target.split(".")
    return parts[1] if len(parts) == 3 else target


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  " + "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    return [line(header), *(line(row) for row in rows)]


# -- building the report from a partitioned program ------------------------------------------------------------


def _main_value(node: Node) -> Any:
    value = node.meta.get("val")
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return value


def _elements(node: Node) -> int:
    value = _main_value(node)
    shape = getattr(value, "shape", None)
    return 0 if shape is None else math.prod(int(d) for d in shape)


def _bytes(node: Node) -> int:
    value = _main_value(node)
    dtype = getattr(value, "dtype", None)
    return _elements(node) * (dtype.itemsize if dtype is not None else 1)


def _kind(node: Node) -> str:
    from neutron_backend import ops
    from neutron_backend.clusters import is_dequantize, is_getitem, is_quantize

    if is_quantize(node):
        return "quantize"
    if is_dequantize(node):
        return "dequantize"
    if is_getitem(node):
        return "getitem"
    operator = ops.lookup(node.target)
    if operator is None:
        return "other"
    return "no_op" if operator.is_no_op(node) and operator.kind.value != "shape" else operator.kind.value


def _macs(node: Node) -> int:
    from neutron_backend import ops

    operator = ops.lookup(node.target)
    return operator.macs(node) if operator is not None and operator.macs is not None else 0


def build_report(program: ExportedProgram, target: str, partition_of: dict[Node, int], num_partitions: int,
                 reason_of: Callable[[Node], str]) -> DelegationReport:
    """The report of a partitioned edge program: one entry per call_function node (placement from
    `partition_of`, the CPU reason from `reason_of`), MACs from the operator registry, and the partitions with the
    values crossing their boundaries."""
    from neutron_backend.clusters import target_name

    user_inputs = set(program.graph_signature.user_inputs)
    constant: set[Node] = set()  # weights, and values computed from weights only (folded at lowering)
    report = DelegationReport(target=target, num_partitions=num_partitions)
    members: dict[int, list[Node]] = {}
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name not in user_inputs:
            constant.add(node)
        if node.op != "call_function":
            continue
        sources = node.all_input_nodes
        if sources and all(s in constant for s in sources):
            constant.add(node)
        runtime = [s for s in sources if s not in constant]
        delegated = node in partition_of
        if delegated:
            members.setdefault(partition_of[node], []).append(node)
        report.nodes.append(NodeEntry(
            name=node.name, target=target_name(node), delegated=delegated, partition=partition_of.get(node),
            reason="" if delegated else reason_of(node), macs=_macs(node), kind=_kind(node),
            inputs=tuple(s.name for s in runtime), input_elements=sum(_elements(s) for s in runtime),
            output_elements=_elements(node),
            weight_bytes=sum(_bytes(s) for s in sources if s.op == "placeholder" and s in constant)))
    for number in sorted(members):
        nodes = members[number]
        inside = set(nodes)
        inputs = dict.fromkeys(s.name for n in nodes for s in n.all_input_nodes
                               if s not in inside and s not in constant)
        outputs = [n.name for n in nodes if any(user not in inside for user in n.users)]
        report.partitions.append(PartitionEntry(number, tuple(n.name for n in nodes), tuple(inputs), tuple(outputs)))
    return report


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


# -- the graph picture -------------------------------------------------------------------------------------------

_PALETTE = ("#4e79a7", "#59a14f", "#9c755f", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#f28e2b")
_CPU_COLOUR = "#e15759"
_BOX_W, _BOX_H, _GAP_X, _GAP_Y = 200, 34, 24, 30


def _graph_html(report: DelegationReport) -> str:
    """Operator nodes (plumbing collapsed), one row per depth, boxes coloured by partition, CPU in red."""
    index = report._index()
    shown = [e for e in report.nodes if e.kind not in PLUMBING_KINDS]
    visible = {e.name for e in shown}

    def sources(name: str, seen: set[str]) -> set[str]:
        """The visible operators (or model inputs) feeding `name`, looking through plumbing nodes."""
        found: set[str] = set()
        for source in index[name].inputs if name in index else ():
            if source in seen:
                continue
            seen.add(source)
            found |= {source} if source in visible or source not in index else sources(source, seen)
        return found

    edges = {e.name: sources(e.name, set()) for e in shown}
    model_inputs = sorted({s for found in edges.values() for s in found if s not in index})
    depth = dict.fromkeys(model_inputs, 0)
    for entry in shown:  # graph order is topological
        depth[entry.name] = 1 + max((depth.get(s, 0) for s in edges[entry.name]), default=0)
    rows: dict[int, list[str]] = {}
    for name in [*model_inputs, *(e.name for e in shown)]:
        rows.setdefault(depth[name], []).append(name)
    position = {name: (_GAP_X + column * (_BOX_W + _GAP_X), _GAP_Y + level * (_BOX_H + _GAP_Y))
                for level, names in rows.items() for column, name in enumerate(names)}
    width = _GAP_X + max(len(names) for names in rows.values()) * (_BOX_W + _GAP_X) if rows else 200
    height = _GAP_Y + (max(rows, default=0) + 1) * (_BOX_H + _GAP_Y)

    parts = []
    for name, found in edges.items():
        x2, y2 = position[name]
        for source in found:
            x1, y1 = position[source]
            parts.append(f'<line x1="{x1 + _BOX_W / 2}" y1="{y1 + _BOX_H}" x2="{x2 + _BOX_W / 2}" y2="{y2}" '
                         'stroke="#888" marker-end="url(#arrow)"/>')
    for name in model_inputs:
        x, y = position[name]
        parts.append(f'<g><title>model input {html.escape(name)}</title><rect x="{x}" y="{y}" width="{_BOX_W}" '
                     f'height="{_BOX_H}" rx="17" fill="#fff" stroke="#333"/><text x="{x + _BOX_W / 2}" '
                     f'y="{y + 21}" text-anchor="middle">{html.escape(name)}</text></g>')
    for entry in shown:
        x, y = position[entry.name]
        colour = _PALETTE[entry.partition % len(_PALETTE)] if entry.delegated else _CPU_COLOUR
        where = f"NPU partition {entry.partition}" if entry.delegated else f"CPU: {entry.reason}"
        tip = f"{entry.name} ({entry.target})\n{where}" + (f"\n{entry.macs:,} MACs" if entry.macs else "")
        parts.append(f'<g><title>{html.escape(tip)}</title><rect x="{x}" y="{y}" width="{_BOX_W}" '
                     f'height="{_BOX_H}" rx="4" fill="{colour}"/><text x="{x + _BOX_W / 2}" y="{y + 21}" '
                     f'text-anchor="middle" fill="#fff">{html.escape(_short(entry.target))}</text></g>')
    legend = " ".join(
        f'<span style="background:{_PALETTE[p.id % len(_PALETTE)]}">NPU partition {p.id}</span>'
        for p in report.partitions) + f' <span style="background:{_CPU_COLOUR}">CPU</span>'
    headline = html.escape("\n".join(report._headline()))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Neutron delegation: {html.escape(report.target)}</title>
<style>body{{font-family:sans-serif}} span{{color:#fff;padding:2px 6px;margin-right:4px;border-radius:3px}}
text{{font-size:13px}}</style></head>
<body><pre>{headline}</pre><p>{legend} (hover a box for its node, placement and reason;
quantize/dequantize nodes are left out)</p>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto">
<path d="M0,0 L10,5 L0,10 z" fill="#888"/></marker></defs>
{chr(10).join(parts)}
</svg></body></html>
"""
