"""DelegationReport: what runs where, why, how fast it is estimated to be and whether it fits; and `build_report`,
which the partitioner calls.

The data is `neutron_backend.report_data.ReportData`; this class adds its renderings: text
(neutron_backend.report_text), HTML (neutron_backend.report_html) and the per-layer CSV (neutron_backend.report_csv).

This module does not import torch at load time: `neutron --help` and `import neutron_backend` stay fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from neutron_backend import report_csv, report_html, report_text
from neutron_backend.report_data import (
    PLUMBING_KINDS,
    SCHEMA_VERSION,
    BoundaryTranspose,
    NodeEntry,
    OperatorCount,
    PartitionEntry,
    ReportData,
)

if TYPE_CHECKING:
    from torch.export import ExportedProgram
    from torch.fx import Node

__all__ = ["PLUMBING_KINDS", "SCHEMA_VERSION", "BoundaryTranspose", "DelegationReport", "NodeEntry", "OperatorCount",
           "PartitionEntry", "build_report"]


class DelegationReport(ReportData):
    """Every call_function node with its placement and, when it stays on the CPU, the reason; with the latency
    estimate, the memory report (after `add_program`) and their renderings."""

    def summary(self) -> str:
        """The readable report: headline, partitions, operator types, every CPU node with its reason, the latency
        estimate with the most expensive layers, and the memory report."""
        return report_text.summary(self)

    def __str__(self) -> str:
        return report_text.every_node(self)

    def to_html(self) -> str:
        """A self-contained HTML page with an SVG of the operator graph, coloured by placement, and the per-layer
        profile as a sortable table."""
        return report_html.to_html(self)

    def per_layer_csv(self) -> str:
        """The per-layer profile as CSV (neutron_backend.report_csv); empty without a latency estimate."""
        estimate = self.estimate_or_none()
        return "" if estimate is None else report_csv.per_layer_csv(estimate)


def _main_value(node: Node) -> Any:
    value = node.meta.get("val")
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return value


def _shape(node: Node) -> tuple[int, ...]:
    shape = getattr(_main_value(node), "shape", None)
    return () if shape is None else tuple(int(d) for d in shape)


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
            output_elements=_elements(node), input_shapes=tuple(_shape(s) for s in runtime), output_shape=_shape(node),
            activation_bytes=sum(_bytes(s) for s in runtime) + _bytes(node),
            weight_bytes=sum(_bytes(s) for s in sources if s.op == "placeholder" and s in constant)))
    for number in sorted(members):
        nodes = members[number]
        inside = set(nodes)
        inputs = dict.fromkeys(s.name for n in nodes for s in n.all_input_nodes
                               if s not in inside and s not in constant)
        outputs = [n.name for n in nodes if any(user not in inside for user in n.users)]
        report.partitions.append(PartitionEntry(number, tuple(n.name for n in nodes), tuple(inputs), tuple(outputs)))
    return report


