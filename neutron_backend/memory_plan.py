"""Planning the activation memory of a Neutron partition: where each intermediate tensor of its IR lives.

A greedy-by-size offset planner in the style of TensorFlow Lite Micro's `GreedyMemoryPlanner`: tensors sorted by
size, largest first, each put at the lowest offset where it overlaps no already placed tensor that is alive at the
same time. A tensor is alive from the operator that writes it to the last operator that reads it, both included (an
operator's inputs and outputs are alive together, so no operator writes over what it reads). The arena is the
highest end address of the plan.

What is planned: the IR's non-constant tensors except its inputs and outputs, which are ExecuTorch's own tensors
(counted in the program's memory plan, see neutron_backend.memory_fit). Nothing is aliased: a RESHAPE gets its own
buffer, as in TFLite Micro's default planning. The plan is of the IR as we hand it to the converter; NXP's converter
fuses operators and tiles them, so the device arena may be smaller (fused intermediates never reach memory) or need
scratch space on top.

`lower_bound` is the most bytes ever alive at once: no plan can use less.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from neutron_backend.ir.reader import IRGraph

ALIGNMENT = 16  # bytes, as TFLite Micro aligns its arena buffers


@dataclass(frozen=True)
class Buffer:
    """One tensor to place: its size in bytes and the first and last operator (indices) it is alive for."""

    name: str
    size: int
    first: int
    last: int

    def alive_with(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class Placement:
    buffer: Buffer
    offset: int

    @property
    def end(self) -> int:
        return self.offset + self.buffer.size


@dataclass(frozen=True)
class ArenaPlan:
    """An offset plan: `arena_bytes` is its highest end address; `peak_step` the operator index at which the most
    bytes are alive (`lower_bound_bytes` of them), None for a plan without buffers."""

    placements: tuple[Placement, ...]
    arena_bytes: int
    lower_bound_bytes: int
    peak_step: int | None

    def alive_at(self, step: int) -> list[Buffer]:
        """The buffers alive at operator `step`, largest first."""
        alive = [p.buffer for p in self.placements if p.buffer.first <= step <= p.buffer.last]
        return sorted(alive, key=lambda b: -b.size)


def _aligned(size: int, alignment: int) -> int:
    return -(-size // alignment) * alignment


def plan_greedy_by_size(buffers: Sequence[Buffer], alignment: int = ALIGNMENT) -> tuple[Placement, ...]:
    """Offsets for `buffers`: largest first (ties: earlier first), each at the lowest `alignment`-aligned offset
    where it overlaps no placed buffer alive at the same time. Returns the placements in the order of `buffers`."""
    order = sorted(range(len(buffers)), key=lambda i: (-buffers[i].size, buffers[i].first, i))
    placed: list[Placement] = []
    offsets: dict[int, int] = {}
    for i in order:
        buffer = buffers[i]
        conflicts = sorted((p for p in placed if p.buffer.alive_with(buffer)), key=lambda p: p.offset)
        offset = 0
        for other in conflicts:
            if offset + buffer.size <= other.offset:
                break
            offset = max(offset, _aligned(other.end, alignment))
        placed.append(Placement(buffer, offset))
        offsets[i] = offset
    return tuple(Placement(buffers[i], offsets[i]) for i in range(len(buffers)))


def lower_bound(buffers: Sequence[Buffer]) -> tuple[int, int | None]:
    """The most bytes alive at once and the first operator step where that happens (None without buffers)."""
    events: dict[int, int] = {}
    for buffer in buffers:
        events[buffer.first] = events.get(buffer.first, 0) + buffer.size
        events[buffer.last + 1] = events.get(buffer.last + 1, 0) - buffer.size
    best, best_step, alive = 0, None, 0
    for step in sorted(events):
        alive += events[step]
        if alive > best:
            best, best_step = alive, step
    return best, best_step


def plan(buffers: Sequence[Buffer], alignment: int = ALIGNMENT) -> ArenaPlan:
    """The greedy-by-size plan of `buffers` with its arena size and the lower bound."""
    placements = plan_greedy_by_size(buffers, alignment)
    bound, step = lower_bound(buffers)
    return ArenaPlan(placements, max((p.end for p in placements), default=0), bound, step)


def ir_buffers(graph: IRGraph) -> list[Buffer]:
    """The intermediate tensors of `graph` with their lifetimes in operator indices (graph order is the execution
    order). A tensor nobody reads lives for the operator that writes it."""
    boundary = set(graph.inputs) | set(graph.outputs)
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for operator in graph.operators:
        for index in operator.outputs:
            first.setdefault(index, operator.index)
            last[index] = max(last.get(index, operator.index), operator.index)
        for index in operator.inputs:
            if index >= 0:
                last[index] = max(last.get(index, operator.index), operator.index)
    return [Buffer(graph.tensors[i].name, graph.tensors[i].nbytes, first[i], last[i])
            for i in sorted(first) if i not in boundary and not graph.tensors[i].constant]


def plan_ir(graph: IRGraph, alignment: int = ALIGNMENT) -> ArenaPlan:
    """The activation arena plan of one partition's IR (see the module docstring for what is planned)."""
    return plan(ir_buffers(graph), alignment)
