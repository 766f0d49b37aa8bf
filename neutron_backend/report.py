"""DelegationReport: what runs where, and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class NodeEntry:
    """One call_function node of the partitioned graph."""

    name: str
    target: str
    delegated: bool
    partition: int | None
    reason: str
    macs: int = 0


@dataclass
class DelegationReport:
    """Every call_function node with its placement and, when it stays on the CPU, the reason."""

    target: str
    nodes: list[NodeEntry] = field(default_factory=list)
    num_partitions: int = 0

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

    def entry(self, name: str) -> NodeEntry:
        """The entry of the node called `name`; KeyError naming the known nodes otherwise."""
        for entry in self.nodes:
            if entry.name == name:
                return entry
        raise KeyError(f"no node {name!r} in the report; nodes: {[e.name for e in self.nodes]}")

    def rejected(self) -> list[NodeEntry]:
        return [entry for entry in self.nodes if not entry.delegated]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: target, counts, MACs, and every node."""
        return {
            "target": self.target,
            "num_partitions": self.num_partitions,
            "num_nodes": len(self.nodes),
            "num_delegated_nodes": sum(e.delegated for e in self.nodes),
            "total_macs": self.total_macs,
            "delegated_macs": self.delegated_macs,
            "delegated_mac_fraction": self.delegated_mac_fraction,
            "nodes": [asdict(entry) for entry in self.nodes],
        }

    def _headline(self) -> str:
        return (f"Neutron delegation report for {self.target}: {self.num_partitions} partition(s), "
                f"{sum(e.delegated for e in self.nodes)}/{len(self.nodes)} nodes delegated, "
                f"{100 * self.delegated_mac_fraction:.1f}% of {self.total_macs:,} MACs on the NPU")

    def summary(self) -> str:
        """The headline and the operator nodes only (quantize/dequantize and getitem nodes left out)."""
        plumbing = ("quantized_decomposed.", "getitem")
        shown = [e for e in self.nodes if not e.target.startswith(plumbing)]
        name_width = max([len(e.name) for e in shown] + [13])
        target_width = max([len(e.target) for e in shown] + [6])
        lines = [self._headline(), f"{'operator node':<{name_width}}  {'target':<{target_width}}  where    reason"]
        for e in shown:
            where = f"NPU[{e.partition}]" if e.delegated else "CPU"
            lines.append(f"{e.name:<{name_width}}  {e.target:<{target_width}}  {where:<7}  {e.reason}".rstrip())
        lines.append(f"({len(self.nodes) - len(shown)} quantize/dequantize/getitem nodes follow their operators)")
        return "\n".join(lines)

    def __str__(self) -> str:
        lines = [self._headline()]
        width_name = max([len(e.name) for e in self.nodes] + [4])
        width_target = max([len(e.target) for e in self.nodes] + [6])
        lines.append(f"{'node':<{width_name}}  {'target':<{width_target}}  where    reason")
        for e in self.nodes:
            where = f"NPU[{e.partition}]" if e.delegated else "CPU"
            lines.append(f"{e.name:<{width_name}}  {e.target:<{width_target}}  {where:<7}  {e.reason}".rstrip())
        return "\n".join(lines)
