"""The per-layer profile: where the estimated time goes, one row per layer.

Rows come from a cost-model estimate (neutron_backend.cost_model): every NPU layer (the operators of each partition's
IR), one row per delegate call for its overhead, every node left on the CPU and every layout transpose the runtime
does on the CPU. So the rows' `time_us` add up to the estimate's `total_us` and their MACs to the model's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from neutron_backend.cost_model import LatencyEstimate

COLUMNS = ("where", "partition", "index", "name", "operator", "kind", "input_shapes", "output_shapes", "macs",
           "weight_bytes", "activation_bytes", "compute_cycles", "memory_cycles", "cycles", "clock_hz", "bound",
           "time_us", "share")


@dataclass(frozen=True)
class ProfileRow:
    """One layer. `cycles` = max(compute_cycles, memory_cycles) at `clock_hz` (the NPU's or the CPU's); `bound`:
    `compute`, `memory` or `overhead`; `share`: its part of the estimated total time."""

    where: str
    partition: int | None
    index: int
    name: str
    operator: str
    kind: str
    input_shapes: tuple[tuple[int, ...], ...]
    output_shapes: tuple[tuple[int, ...], ...]
    macs: int
    weight_bytes: int
    activation_bytes: int
    compute_cycles: float
    memory_cycles: float
    cycles: float
    clock_hz: float
    bound: str
    time_us: float
    share: float

    def to_dict(self) -> dict:
        return {**asdict(self), "input_shapes": [list(s) for s in self.input_shapes],
                "output_shapes": [list(s) for s in self.output_shapes]}


def per_layer(estimate: LatencyEstimate) -> list[ProfileRow]:
    """The rows of `estimate`: NPU layers partition by partition, each partition's call overhead after its layers,
    then the CPU."""
    total = estimate.total_us or 1.0
    overhead = {p.partition: p.overhead_us for p in estimate.partitions}
    rows: list[ProfileRow] = []
    previous: int | None = None
    npu_clock = next((c.clock_hz for c in estimate.layers if c.where == "NPU"), 0.0)

    def overhead_row(partition: int) -> ProfileRow:
        us = overhead[partition]
        return ProfileRow("NPU", partition, -1, f"partition {partition}", "(delegate call overhead)", "overhead", (),
                          (), 0, 0, 0, 0.0, 0.0, us * npu_clock / 1e6, npu_clock, "overhead", us, us / total)

    for cost in estimate.layers:
        layer = cost.layer
        if previous is not None and layer.partition != previous:
            rows.append(overhead_row(previous))
        previous = layer.partition
        rows.append(ProfileRow(
            cost.where, layer.partition, layer.index, layer.name, layer.operator, layer.kind, layer.input_shapes,
            layer.output_shapes, layer.macs, layer.weight_bytes, layer.activation_bytes, cost.compute_cycles,
            cost.memory_cycles, cost.cycles, cost.clock_hz, cost.bound, cost.time_us, cost.time_us / total))
    if previous is not None:
        rows.append(overhead_row(previous))
    # A partition without layers still costs its call.
    shown = {row.partition for row in rows if row.kind == "overhead"}
    rows += [overhead_row(p.partition) for p in estimate.partitions if p.partition not in shown]
    return rows
