"""Text renderings of the report's data: the memory report (what `neutron compile` prints)."""

from __future__ import annotations

from neutron_backend.memory_fit import BudgetCheck, MemoryReport


def _b(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,} B"


def _verdict(check: BudgetCheck) -> str:
    if check.fits is None:
        return "unknown (no budget)" if check.budget_bytes is None else "unknown"
    if check.fits:
        return f"fits, margin {check.margin_bytes:,} B ({100 * check.margin_bytes / check.budget_bytes:.0f}% free)"
    ratio = check.needed_bytes / check.budget_bytes
    return f"does NOT fit: over by {-check.margin_bytes:,} B ({ratio:.2f}x the budget)"


def memory_lines(memory: MemoryReport) -> list[str]:
    """The memory report: weights, activations, the .pte, where the arena peaks, and each budget's verdict with
    its source and, when over, what would help."""
    weights = memory.npu_weights
    arenas = [p for p in memory.partitions if p.arena_bytes is not None]
    bound = max((p.lower_bound_bytes for p in arenas), default=0)
    lines = [f"Memory on {memory.target} (planned here, not measured on a device; see the README, Memory)",
             f"  weights:     {memory.weight_bytes:,} B = NPU int8 {weights.int8:,} + int32 bias "
             f"{weights.int32_bias:,} + other {weights.other:,}; CPU {memory.cpu_weight_bytes:,}",
             f"  activations: {memory.activation_bytes:,} B = ExecuTorch planned buffers {memory.cpu_planned_bytes:,} "
             f"+ Neutron arena {_b(memory.npu_arena_bytes)}"
             + (f" (largest of {len(memory.partitions)} partition(s); lower bound {bound:,} B)" if arenas else ""),
             f"  .pte:        {memory.pte_bytes:,} B"]
    if memory.peak is not None:
        lines.append(f"  arena peak:  {memory.peak}")
    for check in memory.checks:
        lines.append(f"  {check.memory + ':':<12} needs {check.needed_bytes:,} B of {_b(check.budget_bytes)}: "
                     f"{_verdict(check)}")
        if check.fits is False and memory.peak is not None and check.memory == "SRAM":
            lines.append(f"               the peak is at {memory.peak.operator} -> {memory.peak.output} "
                         f"(partition {memory.peak.partition}, IR operator {memory.peak.operator_index})")
        lines.append(f"               holds {check.holds}")
        lines.append(f"               budget: {check.budget_source}")
        lines += [f"               would help: {advice}" if check.fits is False else f"               {advice}"
                  for advice in check.advice]
    return lines
