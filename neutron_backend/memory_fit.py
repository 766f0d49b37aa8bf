"""Will it fit: a model's memory (weights, activations, the .pte) against a target's SRAM and flash.

Where things live (what this module checks; the README says the same):

- SRAM holds the activations: ExecuTorch's planned buffers for the whole program (its own memory plan,
  `non_const_buffer_sizes`: every tensor the CPU reads or writes, the delegates' inputs and outputs included) plus one
  Neutron arena, the largest of the partitions' (delegate calls run one after another, so they share it; see
  neutron_backend.memory_plan). With `fetch_constants_to_sram` the Neutron weights are copied to SRAM too.
- Flash holds the `.pte` (program, weights, Neutron payloads), read in place. On a part with on-chip flash (MCX N94x)
  the `.pte` must fit it; a part without (i.MX RT700) keeps it in external flash, whose size depends on the board, so
  that is not checked.
- A budget the target table does not know (the i.MX 95 TCM) gives the verdict "unknown", never a guess.

Not counted: ExecuTorch's method allocator (runtime bookkeeping, a few hundred bytes per operator), the stack, code,
and scratch memory NXP's microcode may use. An emulation payload's `.pte` holds the IR (weights + a TFLite
flatbuffer) where a deployable one holds microcode + weights + kernels: similar, not equal, sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from neutron_backend.ir.reader import IRGraph
from neutron_backend.memory_plan import ArenaPlan, plan_ir
from neutron_backend.targets import NeutronTarget

# Operators whose third input is an int32 bias (TRANSPOSE_CONV: its fourth).
_BIAS_INPUT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3}


@dataclass(frozen=True)
class WeightBytes:
    """Constant bytes: int8 weights, int32 biases, and other constants (shapes, pad values, float CPU weights)."""

    int8: int = 0
    int32_bias: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        return self.int8 + self.int32_bias + self.other

    def __add__(self, other: WeightBytes) -> WeightBytes:
        return WeightBytes(self.int8 + other.int8, self.int32_bias + other.int32_bias, self.other + other.other)


def ir_weight_bytes(graph: IRGraph) -> WeightBytes:
    """The constant bytes of one partition's IR, by kind."""
    biases = {operator.inputs[_BIAS_INPUT[operator.opcode]] for operator in graph.operators
              if operator.opcode in _BIAS_INPUT and len(operator.inputs) > _BIAS_INPUT[operator.opcode]}
    int8 = bias = other = 0
    for tensor in graph.tensors:
        if not tensor.constant:
            continue
        if tensor.dtype == "int8":
            int8 += tensor.nbytes
        elif tensor.dtype == "int32" and tensor.index in biases:
            bias += tensor.nbytes
        else:
            other += tensor.nbytes
    return WeightBytes(int8, bias, other)


@dataclass(frozen=True)
class PeakLayer:
    """Where a partition's arena peaks: the IR operator and the tensors alive while it runs (name, bytes)."""

    partition: int
    operator_index: int
    operator: str
    output: str
    alive: tuple[tuple[str, int], ...]

    def __str__(self) -> str:
        alive = " + ".join(f"{name} {size:,} B" for name, size in self.alive)
        return f"partition {self.partition}, IR operator {self.operator_index} {self.operator} -> {self.output} " \
               f"(alive: {alive})"


@dataclass(frozen=True)
class PartitionMemory:
    """One partition's Neutron arena and weights. `arena_bytes` is None when its IR is unknown (a deployable
    payload holds microcode: NXP's converter planned its memory)."""

    partition: int
    arena_bytes: int | None
    lower_bound_bytes: int | None
    num_planned_tensors: int
    peak: PeakLayer | None
    weights: WeightBytes


@dataclass(frozen=True)
class BudgetCheck:
    """One memory of the target against what must fit in it. `fits` and `margin_bytes` are None when the budget
    is unknown; a negative margin is the excess."""

    memory: str  # "SRAM" or "flash"
    holds: str
    needed_bytes: int
    budget_bytes: int | None
    budget_source: str
    fits: bool | None
    margin_bytes: int | None
    advice: tuple[str, ...] = ()


@dataclass(frozen=True)
class MemoryReport:
    """A model's memory on one target: weights, activations (Neutron arena, CPU planned buffers), the .pte, and the
    budget checks."""

    target: str
    partitions: tuple[PartitionMemory, ...]
    npu_arena_bytes: int | None
    cpu_planned_bytes: int
    npu_weights: WeightBytes
    cpu_weight_bytes: int
    pte_bytes: int
    fetch_constants_to_sram: bool
    peak: PeakLayer | None
    checks: tuple[BudgetCheck, ...]

    @property
    def activation_bytes(self) -> int:
        return self.cpu_planned_bytes + (self.npu_arena_bytes or 0)

    @property
    def weight_bytes(self) -> int:
        return self.npu_weights.total + self.cpu_weight_bytes

    @property
    def fits(self) -> bool | None:
        """False when a known budget is exceeded, None when one is unknown, else True."""
        verdicts = [c.fits for c in self.checks]
        if False in verdicts:
            return False
        return None if None in verdicts else True

    def to_dict(self) -> dict:
        """JSON-ready (docs/report-schema.md, `memory`)."""
        return {
            "target": self.target,
            "fits": self.fits,
            "weight_bytes": self.weight_bytes,
            "npu_weights": {**asdict(self.npu_weights), "total": self.npu_weights.total},
            "cpu_weight_bytes": self.cpu_weight_bytes,
            "activation_bytes": self.activation_bytes,
            "npu_arena_bytes": self.npu_arena_bytes,
            "cpu_planned_bytes": self.cpu_planned_bytes,
            "pte_bytes": self.pte_bytes,
            "fetch_constants_to_sram": self.fetch_constants_to_sram,
            "peak": _peak_dict(self.peak),
            "partitions": [{"partition": p.partition, "arena_bytes": p.arena_bytes,
                            "lower_bound_bytes": p.lower_bound_bytes, "num_planned_tensors": p.num_planned_tensors,
                            "peak": _peak_dict(p.peak), "weights": {**asdict(p.weights), "total": p.weights.total}}
                           for p in self.partitions],
            "checks": [{**asdict(c), "advice": list(c.advice)} for c in self.checks],
        }


def _peak_dict(peak: PeakLayer | None) -> dict | None:
    if peak is None:
        return None
    return {"partition": peak.partition, "operator_index": peak.operator_index, "operator": peak.operator,
            "output": peak.output, "alive": [{"name": name, "bytes": size} for name, size in peak.alive]}


def partition_memory(partition: int, graph: IRGraph | None, payload_weight_bytes: int = 0) -> PartitionMemory:
    """The arena plan and weights of one partition from its IR; without an IR only the payload's weight bytes."""
    if graph is None:
        return PartitionMemory(partition, None, None, 0, None, WeightBytes(other=payload_weight_bytes))
    arena = plan_ir(graph)
    return PartitionMemory(partition, arena.arena_bytes, arena.lower_bound_bytes, len(arena.placements),
                           _peak(partition, graph, arena), ir_weight_bytes(graph))


def _peak(partition: int, graph: IRGraph, arena: ArenaPlan) -> PeakLayer | None:
    if arena.peak_step is None:
        return None
    operator = graph.operators[arena.peak_step]
    output = graph.tensors[operator.outputs[0]].name if operator.outputs else ""
    return PeakLayer(partition, operator.index, operator.opcode, output,
                     tuple((b.name, b.size) for b in arena.alive_at(arena.peak_step)))


def memory_report(target: NeutronTarget, partitions: Sequence[PartitionMemory], *, cpu_planned_bytes: int,
                  cpu_weight_bytes: int, pte_bytes: int, input_shapes: Sequence[Sequence[int]] = (),
                  float_io_bytes: int = 0, fetch_constants_to_sram: bool = False) -> MemoryReport:
    """The memory report of a lowered program on `target` (see the module docstring for what must fit where).

    `input_shapes` (the program's inputs, NCHW) let the advice name a smaller input that would fit;
    `float_io_bytes` (the program's float inputs and outputs) what int8 inputs and outputs would save.
    """
    known = [p for p in partitions if p.arena_bytes is not None]
    largest = max(known, key=lambda p: p.arena_bytes, default=None)
    npu_arena = None if len(known) < len(partitions) else (largest.arena_bytes if largest else 0)
    npu_weights = sum((p.weights for p in partitions), WeightBytes())
    report = MemoryReport(
        target=target.name, partitions=tuple(partitions), npu_arena_bytes=npu_arena,
        cpu_planned_bytes=cpu_planned_bytes, npu_weights=npu_weights, cpu_weight_bytes=cpu_weight_bytes,
        pte_bytes=pte_bytes, fetch_constants_to_sram=fetch_constants_to_sram,
        peak=largest.peak if largest else None, checks=())
    checks = (_sram_check(report, target, input_shapes, float_io_bytes), _flash_check(report, target))
    return replace(report, checks=checks)


def _margin(budget: int | None, needed: int) -> tuple[bool | None, int | None]:
    return (None, None) if budget is None else (needed <= budget, budget - needed)


def _sram_check(report: MemoryReport, target: NeutronTarget, input_shapes: Sequence[Sequence[int]],
                float_io_bytes: int) -> BudgetCheck:
    activations = report.activation_bytes
    weights = report.npu_weights.total if report.fetch_constants_to_sram else 0
    needed = activations + weights
    holds = (f"activations: ExecuTorch's planned buffers {report.cpu_planned_bytes:,} B + Neutron arena "
             f"{_bytes(report.npu_arena_bytes)}")
    if report.fetch_constants_to_sram:
        holds += f" + Neutron weights {weights:,} B (fetch_constants_to_sram)"
    fits, margin = _margin(target.sram_bytes, needed)
    advice: list[str] = []
    if report.npu_arena_bytes is None:
        # A deployable payload holds microcode whose memory NXP's converter planned: a verdict without it would lie.
        if fits:
            fits = None
        advice.append("the Neutron arena of a deployable payload is planned by NXP's converter and not counted here: "
                      "compile without a flavor (emulation payload) to plan it from the IR")
    if target.sram_bytes is None:
        advice.append(f"the target table has no SRAM size for {target.name}: check your part's data sheet")
    elif fits is False:
        advice += _sram_advice(report, target.sram_bytes, input_shapes)
        if float_io_bytes:
            advice.append(f"int8 inputs and outputs (compile --int8-io): ExecuTorch then plans no float input/output "
                          f"buffers, up to {float_io_bytes:,} B less")
    elif fits and target.flash_bytes is None and not report.fetch_constants_to_sram and report.npu_weights.total:
        extra = target.sram_bytes - needed - report.npu_weights.total
        verdict = "also fit" if extra >= 0 else "not fit"
        advice.append(f"fetch_constants_to_sram (weights in SRAM, faster) would {verdict}: margin {extra:,} B")
    return BudgetCheck("SRAM", holds, needed, target.sram_bytes, target.sram_source, fits, margin, tuple(advice))


def _sram_advice(report: MemoryReport, budget: int, input_shapes: Sequence[Sequence[int]]) -> list[str]:
    advice = []
    weights = report.npu_weights.total if report.fetch_constants_to_sram else 0
    if weights:
        margin = budget - report.activation_bytes
        advice.append(f"turn fetch_constants_to_sram off: the weights ({weights:,} B) stay in flash; SRAM then "
                      f"{'fits' if margin >= 0 else 'is still over'} with margin {margin:,} B")
    room = budget - weights
    activations = report.activation_bytes
    if room <= 0 or activations == 0:
        return advice
    ratio = room / activations
    # Activations scale with the input's area for a convolutional network (every feature map shrinks with it).
    for index, shape in enumerate(input_shapes):
        if len(shape) == 4 and shape[2] >= 8 and shape[3] >= 8:
            scale = math.sqrt(ratio)
            height, width = (max(8, int(shape[d] * scale) // 8 * 8) for d in (2, 3))
            which = f" (input {index})" if len(input_shapes) > 1 else ""
            advice.append(f"a smaller input{which}: about {height}x{width} instead of {shape[2]}x{shape[3]} "
                          f"(activations scale with the input area; estimated by scaling "
                          f"{activations:,} B by {(height * width) / (shape[2] * shape[3]):.2f})")
    # And with the channel count: a width multiplier scales every feature map.
    advice.append(f"a narrower model: width multiplier about {math.floor(ratio * 20) / 20:.2f}x the current one "
                  f"(activations scale with the channel count; estimated by scaling {activations:,} B)")
    return advice


def _flash_check(report: MemoryReport, target: NeutronTarget) -> BudgetCheck:
    holds = f".pte (weights {report.weight_bytes:,} B, program and payloads)"
    if target.flash_bytes is None:
        return BudgetCheck("flash", holds, report.pte_bytes, None, target.flash_source, None, None)
    fits, margin = _margin(target.flash_bytes, report.pte_bytes)
    advice: tuple[str, ...] = ()
    if not fits:
        # Weights scale with the square of a width multiplier (channels in x channels out).
        width = math.floor(math.sqrt(target.flash_bytes / report.pte_bytes) * 20) / 20
        advice = (f"a narrower model: width multiplier about {width:.2f}x the current one (weights scale with "
                  f"its square; estimated by scaling the .pte's {report.pte_bytes:,} B)",
                  "fewer or smaller layers: the weights are "
                  f"{100 * report.weight_bytes / report.pte_bytes:.0f}% of the .pte")
    return BudgetCheck("flash", holds, report.pte_bytes, target.flash_bytes, target.flash_source, fits, margin, advice)


def _bytes(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,} B"
