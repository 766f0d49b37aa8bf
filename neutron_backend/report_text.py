"""Text renderings of the report's data: the delegation summary, the latency estimate, the memory report and the
per-layer profile (what `neutron compile` prints)."""

from __future__ import annotations

from neutron_backend.cost_model import LatencyEstimate
from neutron_backend.layer_profile import per_layer
from neutron_backend.memory_fit import BudgetCheck, MemoryReport
from neutron_backend.report_data import PLUMBING_KINDS, ReportData

TOP_LAYERS = 10


def summary(report: ReportData) -> str:
    """The readable report: headline, partitions, operator types, every CPU node with its reason, the latency
    estimate with its most expensive layers, and the memory report."""
    estimate = report.estimate_or_none()
    lines = [*headline_lines(report), *_partition_lines(report, estimate), *_operator_lines(report),
             *_cpu_lines(report)]
    if estimate is not None:
        lines += ["", *estimate_lines(estimate), "", *top_layer_lines(estimate)]
    if report.memory is not None:
        lines += ["", *memory_lines(report.memory)]
    return "\n".join(lines)


def every_node(report: ReportData) -> str:
    """The summary and a table of every node with its placement and reason."""
    rows = [(e.name, e.target, f"NPU[{e.partition}]" if e.delegated else "CPU", e.reason) for e in report.nodes]
    return "\n".join([summary(report), "", "Every node", *_table(("node", "target", "where", "reason"), rows)])


def _ms(microseconds: float) -> str:
    return f"{microseconds / 1000:.3f} ms" if microseconds < 1000 else f"{microseconds / 1000:.2f} ms"


def estimate_lines(estimate: LatencyEstimate) -> list[str]:
    """The latency estimate in four lines."""
    calls = len(estimate.partitions)
    cpu = estimate.cpu_us + estimate.cpu_transpose_us
    return [
        f"Estimated latency on {estimate.target} (a cost-model estimate, not a measurement): "
        f"{_ms(estimate.total_us)} per inference",
        f"  NPU {_ms(estimate.npu_us)} in {calls} delegate call(s) "
        f"(incl. {_ms(sum(p.overhead_us for p in estimate.partitions))} call overhead) + {estimate.cpu} {_ms(cpu)}",
        f"  the whole model on the {estimate.cpu} with int8 kernels: ~{_ms(estimate.all_cpu_us)} "
        f"({estimate.speedup:.1f}x the estimate above)",
        "  assumptions: neutron targets --costs; edit neutron_backend/cost_model.py to correct them",
    ]


def top_layer_lines(estimate: LatencyEstimate, count: int = TOP_LAYERS) -> list[str]:
    """The `count` layers with the largest estimated time (every layer: --per-layer FILE.csv)."""
    rows = sorted(per_layer(estimate), key=lambda r: -r.time_us)[:count]
    table = [(r.where + ("" if r.partition is None else f"[{r.partition}]"), r.name, r.operator,
              " ".join("x".join(map(str, s)) for s in r.output_shapes), f"{r.macs:,}" if r.macs else "",
              r.bound, f"{r.time_us:.1f}", f"{100 * r.share:.1f}%") for r in rows]
    return ["Most expensive layers (estimated; all of them: neutron compile --per-layer FILE.csv)",
            *_table(("where", "layer", "operator", "output", "MACs", "bound", "time us", "share"), table)]


def headline_lines(report: ReportData) -> list[str]:
    transposes = report.num_boundary_transposes
    delegated = sum(e.delegated for e in report.nodes)
    lines = [f"Neutron delegation report for {report.target}",
             f"  {report.num_partitions} partition(s), i.e. {report.num_partitions} delegate call(s); {delegated} of "
             f"{len(report.nodes)} nodes on the NPU",
             f"  {report.delegated_macs:,} of {report.total_macs:,} MACs on the NPU "
             f"({100 * report.delegated_mac_fraction:.1f}%)"]
    if transposes is not None:
        lines[-1] += f"; {transposes} layout transpose(s) at partition boundaries"
    return lines


def _partition_lines(report: ReportData, estimate: LatencyEstimate | None) -> list[str]:
    if not report.partitions:
        return []
    times = {p.partition: p.total_us for p in estimate.partitions} if estimate else {}
    rows = []
    for p in report.partitions:
        transposes = "?" if p.boundary_transposes is None else (
            f"{len(p.boundary_transposes)}" + (" (NPU)" if p.boundary_transposes and
                                               all(t.on_npu for t in p.boundary_transposes) else
                                               " (CPU)" if p.boundary_transposes else ""))
        time = f"{times[p.id] / 1000:.3f} ms" if p.id in times else "-"
        operators = ", ".join(f"{short_name(name)}" + (f" x{count}" if count > 1 else "")
                              for name, count in report.partition_operators(p).items())
        rows.append((str(p.id), f"{len(p.nodes)}", f"{report.partition_macs(p):,}",
                     f"{len(p.inputs)}/{len(p.outputs)}", transposes, time, operators))
    return ["", "Partitions (est. time: the cost-model estimate for one call)",
            *_table(("#", "nodes", "MACs", "in/out", "transposes", "est. time", "operators"), rows)]


def _operator_lines(report: ReportData) -> list[str]:
    plumbing_targets = {e.target for e in report.nodes if e.kind in PLUMBING_KINDS}
    counts = report.operator_counts()
    rows = [(c.operator, str(c.delegated), str(c.cpu), f"{c.delegated_macs:,}" if c.delegated_macs else "",
             f"{c.cpu_macs:,}" if c.cpu_macs else "")
            for c in counts if c.operator not in plumbing_targets]
    plumbing = [c for c in counts if c.operator in plumbing_targets]
    if plumbing:
        rows.append(("(quantize, dequantize, getitem)", str(sum(c.delegated for c in plumbing)),
                     str(sum(c.cpu for c in plumbing)), "", ""))
    return ["", "Operators (nodes per operator type)",
            *_table(("operator", "NPU", "CPU", "MACs on NPU", "MACs on CPU"), rows)]


def _cpu_lines(report: ReportData) -> list[str]:
    rejected = report.rejected()
    if not rejected:
        return ["", "On the CPU: nothing"]
    rows = [(e.name, short_name(e.target), e.reason) for e in rejected]
    return ["", f"On the CPU, and why ({len(rejected)} node(s))", *_table(("node", "operator", "reason"), rows)]


def short_name(target: str) -> str:
    """'aten.convolution.default' -> 'convolution'; other names unchanged."""
    parts = target.split(".")
    return parts[1] if len(parts) == 3 else target


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  " + "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    return [line(header), *(line(row) for row in rows)]


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
