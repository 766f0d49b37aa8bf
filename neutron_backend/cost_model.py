"""A latency estimate per target: how long one inference might take on the device, NPU and CPU together.

This is an estimate from a deliberately simple model, not a measurement; no Neutron hardware was used to make it.
Every number it rests on is an `Assumption` in the tables below (`NPU_COSTS` per target, `CPU_COSTS` per CPU
core), each marked "public" (a published figure), "derived" (computed from published figures, the computation in
its note) or "assumed" (no public source: correct it when you measure).

The model, per inference (ExecuTorch runs the graph's nodes one after another, so the parts add up):

- Each Neutron partition (one delegate call) costs the sum of its layers (neutron_backend.layers: the operators of
  its IR) plus a call overhead; a layer costs ``max(compute, memory)`` NPU cycles, compute bound or memory bound:
  compute = MAC-equivalents / (num_macs x num_pipes x utilization), where a convolution or linear layer counts its
  MACs, any other arithmetic operator one MAC-equivalent per input element, and operators that only move data
  (transpose, pad, slice, concatenation) none; memory = (activation bytes read and written + weight bytes) / memory
  bandwidth (a reshape is a view: nothing). The max() assumes the NPU's DMA overlaps data movement with compute
  within a layer. Before lowering (or with a deployable payload, whose IR is not kept) the layers are the
  partition's edge nodes.
- Each node left on the CPU runs ExecuTorch's portable kernels: quantize/dequantize and elementwise work per
  element, convolutions and matmuls per MAC in float (the portable kernels compute a dequantized operator in
  float); a layout transpose the runtime does on the CPU at a partition boundary costs per element.
- The all-CPU baseline is the whole model on the CPU with int8 kernels of the CMSIS-NN class: what the NPU is
  compared against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from neutron_backend.layers import Layer
from neutron_backend.targets import NeutronTarget, get_target


@dataclass(frozen=True)
class Assumption:
    """One number of the cost model, with where it comes from."""

    name: str
    value: float
    unit: str
    basis: str  # "public", "derived" or "assumed"
    note: str

    def __str__(self) -> str:
        return f"{self.name} = {self.value:.4g} {self.unit} [{self.basis}] {self.note}"


@dataclass(frozen=True)
class NpuCosts:
    """The NPU side of one target (its MACs per cycle and clock come from the target table)."""

    utilization: Assumption
    memory_bytes_per_cycle: Assumption
    call_overhead_us: Assumption


@dataclass(frozen=True)
class CpuCosts:
    """One CPU core running what is not delegated."""

    float_macs_per_cycle: Assumption
    int8_macs_per_cycle: Assumption
    cycles_per_element: Assumption
    cycles_per_quantize_element: Assumption
    cycles_per_transpose_element: Assumption


# MobileNetV2 (224x224, width 1.0): 300 M multiply-adds (Sandler et al., MobileNetV2, Table 4). With the user report
# in facts.md (3.17 ms on the i.MX 95 Neutron-S, 37.21 ms on its Cortex-A55) it calibrates the i.MX 95 numbers.
_MOBILENETV2_MACS = 300e6
_IMX95_NPU_MOBILENETV2_S = 3.17e-3
_IMX95_A55_MOBILENETV2_S = 37.21e-3
# NXP: the MCX N94x NPU (16 MACs/cycle) runs ML "up to 42x" faster than its Cortex-M33, both at 150 MHz.
_MCXN_NPU_SPEEDUP_OVER_M33 = 42
_MCXN_NPU_MACS_PER_CYCLE = 16

_NEUTRON_C_UTILIZATION = Assumption(
    "NPU utilization", 0.5, "of peak MACs/cycle", "assumed",
    "no public per-layer figures for Neutron-C; channel rounding to num_macs and edge tiles waste part of the peak")
_NEUTRON_C_CALL_OVERHEAD = Assumption(
    "delegate call overhead", 20.0, "us per partition", "assumed",
    "NXP runtime: set up I/O, start the microcode, wait for completion; no public figure")

NPU_COSTS: dict[str, NpuCosts] = {
    "imxrt700": NpuCosts(
        utilization=_NEUTRON_C_UTILIZATION,
        memory_bytes_per_cycle=Assumption(
            "NPU memory bandwidth", 16.0, "bytes/NPU cycle", "assumed",
            "weights and activations in on-chip SRAM; a 128-bit path at the NPU clock"),
        call_overhead_us=_NEUTRON_C_CALL_OVERHEAD,
    ),
    "mcxn94x": NpuCosts(
        utilization=_NEUTRON_C_UTILIZATION,
        memory_bytes_per_cycle=Assumption(
            "NPU memory bandwidth", 8.0, "bytes/NPU cycle", "assumed",
            "on-chip SRAM over a 64-bit path at the NPU clock"),
        call_overhead_us=_NEUTRON_C_CALL_OVERHEAD,
    ),
    "imx95": NpuCosts(
        utilization=Assumption(
            "NPU utilization", _MOBILENETV2_MACS / _IMX95_NPU_MOBILENETV2_S / (1024 * 1e9), "of peak MACs/cycle",
            "derived", "MobileNetV2 (300 M MACs) in 3.17 ms (user report) vs 1024 MACs/cycle at 1 GHz; absorbs the "
            "memory and overhead of that measurement"),
        memory_bytes_per_cycle=Assumption(
            "NPU memory bandwidth", 8.0, "bytes/NPU cycle", "assumed",
            "DDR through the Neutron-S data mover at ~8 GB/s"),
        call_overhead_us=Assumption(
            "delegate call overhead", 100.0, "us per partition", "assumed",
            "Neutron-S: the RISC-V controller programs the data mover and starts the job; no public figure"),
    ),
}

CPU_COSTS: dict[str, CpuCosts] = {
    "Cortex-M33": CpuCosts(
        float_macs_per_cycle=Assumption(
            "CPU float MACs", 0.125, "MACs/cycle", "assumed",
            "ExecuTorch portable kernels (generic loops, FPv5 single precision): ~8 cycles per MAC"),
        int8_macs_per_cycle=Assumption(
            "CPU int8 MACs", _MCXN_NPU_MACS_PER_CYCLE / _MCXN_NPU_SPEEDUP_OVER_M33, "MACs/cycle", "derived",
            "NXP's 'up to 42x' for the 16-MAC MCX N94x NPU over its Cortex-M33 at the same clock"),
        cycles_per_element=Assumption(
            "CPU elementwise", 10.0, "cycles/element", "assumed", "portable float kernels: load, op, store, index"),
        cycles_per_quantize_element=Assumption(
            "CPU quantize/dequantize", 20.0, "cycles/element", "assumed",
            "scale, round, clamp and convert one element in float"),
        cycles_per_transpose_element=Assumption(
            "CPU layout transpose", 4.0, "cycles/element", "assumed", "one int8 load and store with index math"),
    ),
    "Cortex-A55": CpuCosts(
        float_macs_per_cycle=Assumption(
            "CPU float MACs", 1.0, "MACs/cycle", "assumed", "portable kernels on one in-order A55 core"),
        int8_macs_per_cycle=Assumption(
            "CPU int8 MACs", _MOBILENETV2_MACS / _IMX95_A55_MOBILENETV2_S / 1.8e9, "MACs/cycle", "derived",
            "MobileNetV2 (300 M MACs) in 37.21 ms on the i.MX 95 Cortex-A55 at 1.8 GHz (user report)"),
        cycles_per_element=Assumption(
            "CPU elementwise", 2.0, "cycles/element", "assumed", "portable float kernels"),
        cycles_per_quantize_element=Assumption(
            "CPU quantize/dequantize", 4.0, "cycles/element", "assumed", "scale, round, clamp, convert"),
        cycles_per_transpose_element=Assumption(
            "CPU layout transpose", 1.0, "cycles/element", "assumed", "one int8 load and store"),
    ),
}

# Edge node kinds (neutron_backend.layers.Layer.kind) that cost nothing where they run, and the conversions.
_FREE_KINDS = ("getitem", "view")
_QDQ_KINDS = ("quantize", "dequantize")
_NO_ARITHMETIC = ("shape", "no_op", "data", *_FREE_KINDS, *_QDQ_KINDS)


def costs_for(target: NeutronTarget) -> tuple[NpuCosts, CpuCosts]:
    """The cost tables of `target` and its CPU; KeyError naming the known ones when missing."""
    if target.name not in NPU_COSTS:
        raise KeyError(f"no NPU cost figures for target {target.name!r}; known: {sorted(NPU_COSTS)}")
    if target.cpu not in CPU_COSTS:
        raise KeyError(f"no CPU cost figures for {target.cpu!r}; known: {sorted(CPU_COSTS)}")
    return NPU_COSTS[target.name], CPU_COSTS[target.cpu]


def assumptions(target: NeutronTarget) -> list[Assumption]:
    """Every number an estimate for `target` rests on, the target table's own included."""
    npu, cpu = costs_for(target)
    peak_notes = [a for a in target.assumptions if "MACs/cycle" in a]
    clock_notes = [a for a in target.assumptions if "clock" in a.lower()]
    table = [
        Assumption("NPU peak", float(target.macs_per_cycle), "MACs/cycle", "derived" if peak_notes else "public",
                   "; ".join([f"num_macs {target.num_macs} x num_pipes {target.num_pipes} ({target.source})",
                              *peak_notes])),
        Assumption("NPU clock", target.npu_clock_hz / 1e6, "MHz", "assumed" if clock_notes else "public",
                   "; ".join(clock_notes) or "target table"),
        Assumption(f"{target.cpu} clock", target.cpu_clock_hz / 1e6, "MHz", "public", "target table"),
    ]
    return [*table, *_fields(npu), *_fields(cpu)]


def _fields(costs: NpuCosts | CpuCosts) -> list[Assumption]:
    return [getattr(costs, name) for name in costs.__dataclass_fields__]


@dataclass(frozen=True)
class LayerCost:
    """The estimated cost of one layer, in cycles of the clock where it runs (`clock_hz`). `bound` says which
    limit sets it: `compute` or `memory` on the NPU; on the CPU always `compute`."""

    layer: Layer
    where: str  # "NPU" or "CPU"
    compute_cycles: float
    memory_cycles: float
    clock_hz: float

    @property
    def cycles(self) -> float:
        return max(self.compute_cycles, self.memory_cycles)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_cycles > self.compute_cycles else "compute"

    @property
    def time_us(self) -> float:
        return self.cycles / self.clock_hz * 1e6


def _mac_equivalents(layer: Layer) -> int:
    if layer.macs:
        return layer.macs
    return 0 if layer.kind in _NO_ARITHMETIC else layer.input_elements


def npu_layer_cost(layer: Layer, target: NeutronTarget) -> LayerCost:
    """One NPU layer: compute and memory cycles at the NPU clock."""
    npu, _ = costs_for(target)
    peak = target.macs_per_cycle * npu.utilization.value
    moved = 0 if layer.kind in _FREE_KINDS else layer.activation_bytes + layer.weight_bytes
    return LayerCost(layer, "NPU", _mac_equivalents(layer) / peak, moved / npu.memory_bytes_per_cycle.value,
                     target.npu_clock_hz)


def cpu_layer_cost(layer: Layer, target: NeutronTarget) -> LayerCost:
    """One node on the CPU (portable kernels): per element for quantize/dequantize and elementwise work, per MAC in
    float for convolutions and matmuls, nothing for tuple access; a `transpose` layer is a layout transpose the
    runtime does at a partition boundary."""
    _, cpu = costs_for(target)
    if layer.kind in _FREE_KINDS:
        cycles = 0.0
    elif layer.kind == "transpose":
        cycles = layer.output_elements * cpu.cycles_per_transpose_element.value
    elif layer.kind in _QDQ_KINDS:
        cycles = layer.output_elements * cpu.cycles_per_quantize_element.value
    elif layer.macs:
        cycles = layer.macs / cpu.float_macs_per_cycle.value
    else:
        cycles = max(layer.input_elements, layer.output_elements) * cpu.cycles_per_element.value
    return LayerCost(layer, "CPU", cycles, 0.0, target.cpu_clock_hz)


def all_cpu_cycles(layer: Layer, target: NeutronTarget) -> float:
    """The baseline: `layer` (an edge node) on the CPU with int8 kernels of the CMSIS-NN class."""
    _, cpu = costs_for(target)
    if layer.macs:
        return layer.macs / cpu.int8_macs_per_cycle.value
    if layer.kind in _NO_ARITHMETIC:
        return 0.0
    return layer.output_elements * cpu.cycles_per_element.value


@dataclass(frozen=True)
class PartitionTime:
    """The estimated time of one delegate call, in microseconds: its layers' compute and memory times, each layer
    counting the larger of the two (`layers_us`), plus the call overhead."""

    partition: int
    compute_us: float
    memory_us: float
    layers_us: float
    overhead_us: float

    @property
    def total_us(self) -> float:
        return self.layers_us + self.overhead_us


@dataclass(frozen=True)
class LatencyEstimate:
    """An estimate of one inference's latency on a target (see the module docstring for the model), with the cost
    of every layer (`layers`: NPU layers by partition, then the CPU nodes and CPU-side layout transposes)."""

    target: str
    cpu: str
    partitions: tuple[PartitionTime, ...]
    cpu_us: float
    cpu_transpose_us: float
    all_cpu_us: float
    assumptions: tuple[Assumption, ...]
    layers: tuple[LayerCost, ...] = ()

    @property
    def npu_us(self) -> float:
        return sum(p.total_us for p in self.partitions)

    @property
    def total_us(self) -> float:
        return self.npu_us + self.cpu_us + self.cpu_transpose_us

    @property
    def speedup(self) -> float:
        """The all-CPU baseline over the estimate (how much faster delegation makes the model)."""
        return self.all_cpu_us / self.total_us if self.total_us else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "is_estimate": True,
            "target": self.target,
            "cpu": self.cpu,
            "total_us": self.total_us,
            "npu_us": self.npu_us,
            "cpu_us": self.cpu_us,
            "cpu_transpose_us": self.cpu_transpose_us,
            "num_delegate_calls": len(self.partitions),
            "all_cpu_us": self.all_cpu_us,
            "speedup_over_all_cpu": self.speedup,
            "partitions": [{**asdict(p), "total_us": p.total_us} for p in self.partitions],
            "assumptions": [asdict(a) for a in self.assumptions],
        }


def estimate(npu_layers: dict[int, Sequence[Layer]], cpu_layers: Sequence[Layer], baseline_layers: Sequence[Layer],
             target: NeutronTarget | str) -> LatencyEstimate:
    """The latency estimate on `target`: `npu_layers` per partition id (in call order), the layers on the CPU
    (nodes, and `transpose` layers for layout transposes the runtime does), and the edge nodes of the whole model
    for the all-CPU baseline.

    Raises KeyError when the cost tables have no figures for the target or its CPU.
    """
    target = get_target(target) if isinstance(target, str) else target
    npu, _ = costs_for(target)
    costs: list[LayerCost] = []
    partitions = []
    for partition, layers in npu_layers.items():
        layer_costs = [npu_layer_cost(layer, target) for layer in layers]
        costs += layer_costs
        to_us = 1e6 / target.npu_clock_hz
        partitions.append(PartitionTime(
            partition=partition, compute_us=sum((c.compute_cycles for c in layer_costs), 0.0) * to_us,
            memory_us=sum((c.memory_cycles for c in layer_costs), 0.0) * to_us,
            layers_us=sum((c.time_us for c in layer_costs), 0.0), overhead_us=npu.call_overhead_us.value))
    cpu_costs = [cpu_layer_cost(layer, target) for layer in cpu_layers]
    costs += cpu_costs
    return LatencyEstimate(
        target=target.name,
        cpu=target.cpu,
        partitions=tuple(partitions),
        cpu_us=sum((c.time_us for c in cpu_costs if c.layer.kind != "transpose"), 0.0),
        cpu_transpose_us=sum((c.time_us for c in cpu_costs if c.layer.kind == "transpose"), 0.0),
        all_cpu_us=sum(all_cpu_cycles(layer, target) for layer in baseline_layers) / target.cpu_clock_hz * 1e6,
        assumptions=tuple(assumptions(target)),
        layers=tuple(costs),
    )
