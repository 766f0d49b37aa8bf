"""The HTML rendering of the report's data: the headline and memory report, the operator graph as SVG coloured by
placement, next to the per-layer profile as a sortable table."""

from __future__ import annotations

import html

from neutron_backend.layer_profile import per_layer
from neutron_backend.report_data import PLUMBING_KINDS, ReportData
from neutron_backend.report_text import headline_lines, memory_lines, short_name

_PALETTE = ("#4e79a7", "#59a14f", "#9c755f", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#f28e2b")
_CPU_COLOUR = "#e15759"
_BOX_W, _BOX_H, _GAP_X, _GAP_Y = 200, 34, 24, 30


def to_html(report: ReportData) -> str:
    """A self-contained HTML page: an SVG of the operator graph (plumbing collapsed, one row per depth, boxes
    coloured by partition, CPU in red) and, next to it, the per-layer profile as a table sorted by a click on a
    column header."""
    index = {entry.name: entry for entry in report.nodes}
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
                     f'text-anchor="middle" fill="#fff">{html.escape(short_name(entry.target))}</text></g>')
    legend = " ".join(
        f'<span style="background:{_PALETTE[p.id % len(_PALETTE)]}">NPU partition {p.id}</span>'
        for p in report.partitions) + f' <span style="background:{_CPU_COLOUR}">CPU</span>'
    memory = ["", *memory_lines(report.memory)] if report.memory is not None else []
    headline = html.escape("\n".join([*headline_lines(report), *memory]))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Neutron delegation: {html.escape(report.target)}</title>
<style>body{{font-family:sans-serif}} span{{color:#fff;padding:2px 6px;margin-right:4px;border-radius:3px}}
text{{font-size:13px}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 4px}} th{{cursor:pointer;background:#eee;position:sticky;top:0}}
td.n{{text-align:right}}</style></head>
<body><pre>{headline}</pre><p>{legend} (hover a box for its node, placement and reason;
quantize/dequantize nodes are left out)</p>
<div style="display:flex;gap:16px;align-items:flex-start"><div style="overflow:auto;max-height:90vh">
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto">
<path d="M0,0 L10,5 L0,10 z" fill="#888"/></marker></defs>
{chr(10).join(parts)}
</svg></div>
{_layer_table(report)}</div>
{_SORT_SCRIPT}</body></html>
"""


# Sorts the table by the clicked column: numbers by value (data-v), text alphabetically; a second click reverses.
_SORT_SCRIPT = """<script>
document.querySelectorAll("table.sortable th").forEach((th, column) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const up = th.dataset.order !== "up"; th.dataset.order = up ? "up" : "down";
  const key = row => { const cell = row.cells[column]; return cell.dataset.v !== undefined ? +cell.dataset.v :
                       cell.textContent; };
  [...body.rows].sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (up ? 1 : -1))
    .forEach(row => body.appendChild(row));
}));
</script>"""


def _layer_table(report: ReportData) -> str:
    estimate = report.estimate_or_none()
    if estimate is None:
        return "<p>no latency estimate for this target, so no per-layer profile</p>"
    rows = []
    for row in per_layer(estimate):
        shapes = " ".join("x".join(map(str, s)) for s in row.output_shapes)
        where = row.where + ("" if row.partition is None else f"[{row.partition}]")
        cells = [f"<td>{html.escape(where)}</td>", f"<td>{html.escape(row.name)}</td>",
                 f"<td>{html.escape(row.operator)}</td>", f"<td>{html.escape(shapes)}</td>",
                 *(f'<td class="n" data-v="{value}">{value:,}</td>'
                   for value in (row.macs, row.weight_bytes, row.activation_bytes)),
                 f'<td class="n" data-v="{row.cycles}">{row.cycles:,.0f}</td>', f"<td>{row.bound}</td>",
                 f'<td class="n" data-v="{row.time_us}">{row.time_us:.2f}</td>',
                 f'<td class="n" data-v="{row.share}">{100 * row.share:.1f}%</td>']
        rows.append("<tr>" + "".join(cells) + "</tr>")
    headers = ("where", "layer", "operator", "output", "MACs", "weight bytes", "activation bytes", "cycles",
               "bound", "time (us)", "share")
    return (f'<div><p>Per-layer profile (a cost-model estimate; click a column to sort)</p>'
            f'<table class="sortable" id="layers"><thead><tr>{"".join(f"<th>{h}</th>" for h in headers)}</tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table></div>')
