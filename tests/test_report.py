"""The delegation report: its JSON schema (docs/report-schema.md), numbers that add up, agreement with ExecuTorch's
get_delegation_info, layout transposes at partition boundaries, the latency estimate, text and HTML forms."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import torch
from torch import nn

from neutron_backend.cost_model import CPU_COSTS, NPU_COSTS, assumptions
from neutron_backend.pipeline import compile_model
from neutron_backend.targets import get_target

SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "report-schema.md"
POOL = "aten.max_pool2d_with_indices.default"
POOL_REASON = "excluded by operators_not_to_delegate ('aten::max_pool2d')"

# conv(3->8, 3x3) + ReLU on 8x8, max pool 2x2 (kept on the CPU), conv(8->16, 3x3) + ReLU on 4x4, FC 256 -> 10.
CONV1_MACS = 8 * 8 * 8 * 3 * 3 * 3  # Cout * Hout * Wout * Cin * kH * kW
CONV2_MACS = 16 * 4 * 4 * 8 * 3 * 3
FC_MACS = 16 * 4 * 4 * 10


class TwoPartitionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        return self.fc(torch.flatten(torch.relu(self.conv2(x)), 1))


def _compile(**spec_options):
    torch.manual_seed(0)
    model = TwoPartitionNet().eval()
    inputs = (torch.randn(1, 3, 8, 8),)
    return compile_model(model, inputs, "imxrt700", progress=False, operators_not_to_delegate=["aten::max_pool2d"],
                         **spec_options)


@pytest.fixture(scope="module")
def compiled():
    return _compile()


@pytest.fixture(scope="module")
def compiled_cpu_transposes():
    return _compile(use_neutron_for_format_conversion=False)


# -- the documented schema ---------------------------------------------------------------------------------------


def _documented_schema() -> dict[str, dict[str, str]]:
    """Section path ('report', 'partitions[]', ...) -> field -> documented type, from docs/report-schema.md."""
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in SCHEMA.read_text().splitlines():
        heading = re.fullmatch(r"## `(.+)`", line)
        if heading:
            current = sections.setdefault(heading.group(1), {})
            continue
        row = re.fullmatch(r"\| `(\w+)` \| `(.+?)` \| .* \|", line)
        if row and current is not None:
            current[row.group(1)] = row.group(2).replace("\\|", "|")
    return sections


def _matches(value, documented: str) -> bool:
    kinds = [kind.strip() for kind in documented.split("|")]
    for kind in kinds:
        if kind == "null" and value is None:
            return True
        if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind == "float" and isinstance(value, float):
            return True
        if kind == "str" and isinstance(value, str):
            return True
        if kind == "bool" and isinstance(value, bool):
            return True
        if kind == "object" and isinstance(value, dict):
            return True
        if kind.startswith("list[") and isinstance(value, list):
            inner = kind[5:-1]
            return all(inner == "object" and isinstance(v, dict) or inner != "object" and _matches(v, inner)
                       for v in value)
        if kind.startswith("dict[str, ") and isinstance(value, dict):
            return all(isinstance(k, str) and _matches(v, kind[10:-1]) for k, v in value.items())
    return False


def _objects_at(report: dict, path: str) -> list[dict]:
    """Every object the schema section `path` describes, e.g. 'partitions[].boundary_transposes[]'."""
    objects = [report]
    if path == "report":
        return objects
    for part in path.split("."):
        key = part.removesuffix("[]")
        found = []
        for obj in objects:
            value = obj[key]
            if value is None:
                continue
            found.extend(value if part.endswith("[]") else [value])
        objects = found
    return objects


def test_json_report_has_exactly_the_documented_fields_and_types(compiled):
    report = json.loads(json.dumps(compiled.report.to_dict()))
    schema = _documented_schema()
    assert set(schema) == {"report", "partitions[]", "partitions[].boundary_transposes[]", "operators[]",
                           "cpu_nodes[]", "latency_estimate", "latency_estimate.partitions[]",
                           "latency_estimate.assumptions[]", "nodes[]", "layers[]", "memory", "memory.npu_weights",
                           "memory.peak", "memory.peak.alive[]", "memory.partitions[]", "memory.checks[]"}
    for path, fields in schema.items():
        objects = _objects_at(report, path)
        assert objects, f"no {path} object in the report to check"
        for obj in objects:
            assert set(obj) == set(fields), f"{path}: fields {sorted(obj)} but documented {sorted(fields)}"
            for name, documented in fields.items():
                assert _matches(obj[name], documented), f"{path}.{name} = {obj[name]!r} is not {documented}"


def test_json_numbers_add_up(compiled):
    report = json.loads(json.dumps(compiled.report.to_dict()))
    nodes = report["nodes"]
    assert report["num_nodes"] == len(nodes) == report["num_delegated_nodes"] + report["num_cpu_nodes"]
    assert report["num_cpu_nodes"] == len(report["cpu_nodes"]) == sum(not n["delegated"] for n in nodes)
    assert sum(p["num_nodes"] for p in report["partitions"]) == report["num_delegated_nodes"]
    assert sum(p["macs"] for p in report["partitions"]) == report["delegated_macs"]
    assert report["delegated_macs"] + report["cpu_macs"] == report["total_macs"] == sum(n["macs"] for n in nodes)
    assert report["delegated_mac_fraction"] == report["delegated_macs"] / report["total_macs"]
    assert sum(o["delegated"] for o in report["operators"]) == report["num_delegated_nodes"]
    assert sum(o["cpu"] for o in report["operators"]) == report["num_cpu_nodes"]
    assert sum(o["delegated_macs"] for o in report["operators"]) == report["delegated_macs"]
    assert sum(o["cpu_macs"] for o in report["operators"]) == report["cpu_macs"]
    assert report["num_boundary_transposes"] == sum(len(p["boundary_transposes"]) for p in report["partitions"])
    for partition in report["partitions"]:
        members = [n for n in nodes if n["partition"] == partition["id"]]
        assert [n["name"] for n in members] == partition["nodes"]
        assert all(n["delegated"] for n in members)
    estimate_ = report["latency_estimate"]
    assert estimate_["npu_us"] == pytest.approx(sum(p["total_us"] for p in estimate_["partitions"]))
    assert estimate_["total_us"] == pytest.approx(estimate_["npu_us"] + estimate_["cpu_us"]
                                                  + estimate_["cpu_transpose_us"])
    assert [p["estimated_time_us"] for p in report["partitions"]] == [p["total_us"] for p in estimate_["partitions"]]
    memory = report["memory"]
    assert memory["activation_bytes"] == memory["cpu_planned_bytes"] + memory["npu_arena_bytes"]
    assert memory["weight_bytes"] == memory["npu_weights"]["total"] + memory["cpu_weight_bytes"]
    assert memory["npu_arena_bytes"] == max(p["arena_bytes"] for p in memory["partitions"])
    assert all(p["arena_bytes"] >= p["lower_bound_bytes"] for p in memory["partitions"])
    for check in memory["checks"]:
        if check["budget_bytes"] is not None:
            assert check["margin_bytes"] == check["budget_bytes"] - check["needed_bytes"]
            assert check["fits"] == (check["margin_bytes"] >= 0)


def test_macs_placement_and_reasons(compiled):
    report = compiled.report
    assert report.total_macs == report.delegated_macs == CONV1_MACS + CONV2_MACS + FC_MACS
    assert report.num_partitions == 2
    assert [report.partition_macs(p) for p in report.partitions] == [CONV1_MACS, CONV2_MACS + FC_MACS]
    assert [report.partition_operators(p) for p in report.partitions] == [
        {"aten.convolution.default": 1, "aten.relu.default": 1},
        {"aten.convolution.default": 1, "aten.relu.default": 1, "aten.view_copy.default": 1,
         "aten.permute_copy.default": 1, "aten.addmm.default": 1},
    ]
    (pool,) = [e for e in report.nodes if e.target == POOL]
    assert not pool.delegated and pool.reason == POOL_REASON
    counts = {c.operator: (c.delegated, c.cpu) for c in report.operator_counts()}
    assert counts["aten.convolution.default"] == (2, 0)
    assert counts[POOL] == (0, 1)


def test_counts_agree_with_executorch_get_delegation_info(compiled):
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(compiled.edge_program.exported_program().graph_module)
    ours = compiled.report.delegation_info_counts()
    assert info.num_delegated_subgraphs == ours["num_delegated_subgraphs"] == compiled.report.num_partitions
    assert info.num_delegated_nodes == ours["num_delegated_nodes"]
    assert info.num_non_delegated_nodes == ours["num_non_delegated_nodes"]
    theirs = {name: (b.delegated, b.non_delegated) for name, b in info.delegation_by_operator.items()}
    assert theirs == ours["delegation_by_operator"]
    # Lowering adds one getitem per delegate output; everything else on the CPU is a report node.
    getitems = sum(len(p.outputs) for p in compiled.report.partitions)
    assert info.num_non_delegated_nodes == len(compiled.report.rejected()) + getitems


def test_boundary_transposes_inside_the_ir(compiled):
    report = compiled.report
    assert report.lowered
    first, second = report.partitions
    # Image in and image out of partition 0; image in of partition 1, whose output (logits) needs none.
    assert [(t.side, t.index, t.shape, t.on_npu) for t in first.boundary_transposes] == [
        ("input", 0, (1, 3, 8, 8), True), ("output", 0, (1, 8, 8, 8), True)]
    assert [(t.side, t.index, t.shape, t.on_npu) for t in second.boundary_transposes] == [
        ("input", 0, (1, 8, 4, 4), True)]
    assert report.num_boundary_transposes == 3


def test_boundary_transposes_on_the_cpu(compiled_cpu_transposes):
    report = compiled_cpu_transposes.report
    transposes = [t for p in report.partitions for t in p.boundary_transposes]
    assert [(t.side, t.shape, t.on_npu) for t in transposes] == [
        ("input", (1, 3, 8, 8), False), ("output", (1, 8, 8, 8), False), ("input", (1, 8, 4, 4), False)]
    cpu = CPU_COSTS["Cortex-M33"]
    elements = 3 * 8 * 8 + 8 * 8 * 8 + 8 * 4 * 4
    expected = elements * cpu.cycles_per_transpose_element.value / get_target("imxrt700").cpu_clock_hz * 1e6
    assert report.latency_estimate().cpu_transpose_us == pytest.approx(expected)


# -- the latency estimate ----------------------------------------------------------------------------------------


def test_estimate_compute_follows_macs_per_cycle_and_clock(compiled):
    rt700, mcxn = (compiled.report.latency_estimate(get_target(name)) for name in ("imxrt700", "mcxn94x"))
    # Same utilization assumption on both Neutron-C parts: compute time scales with 1 / (MACs/cycle x clock).
    assert NPU_COSTS["imxrt700"].utilization == NPU_COSTS["mcxn94x"].utilization
    ratio = (64 * 325e6) / (16 * 150e6)
    for fast, slow in zip(rt700.partitions, mcxn.partitions, strict=True):
        assert slow.compute_us == pytest.approx(fast.compute_us * ratio)
    first = rt700.partitions[0]
    # Partition 0's IR: TRANSPOSE, PAD, CONV_2D (ReLU fused), TRANSPOSE: only the conv computes.
    utilization = NPU_COSTS["imxrt700"].utilization.value
    assert first.compute_us == pytest.approx(CONV1_MACS / (64 * utilization) / 325e6 * 1e6)
    # Data moved, int8: transpose 3x8x8 in and out, pad 3x8x8 -> 3x10x10, conv 3x10x10 -> 8x8x8 plus its 8x3x3x3 int8
    # weights and 8 int32 biases, transpose 8x8x8 in and out; the transposes' int32 permutations (4 each) and the
    # pad's int32 paddings (4x2) are constants read too.
    moved = 2 * 192 + (192 + 300) + (300 + 512 + 216 + 32) + 2 * 512 + 2 * 16 + 32
    bandwidth = NPU_COSTS["imxrt700"].memory_bytes_per_cycle.value
    assert first.memory_us == pytest.approx(moved / bandwidth / 325e6 * 1e6)
    assert [p.overhead_us for p in rt700.partitions] == [NPU_COSTS["imxrt700"].call_overhead_us.value] * 2


def test_estimate_counts_the_cpu_work(compiled):
    result = compiled.report.latency_estimate()
    assert result.total_us == pytest.approx(result.npu_us + result.cpu_us + result.cpu_transpose_us)
    assert result.cpu_transpose_us == 0.0  # transposes are inside the IR by default
    cpu = CPU_COSTS["Cortex-M33"]
    clock = get_target("imxrt700").cpu_clock_hz
    baseline = (CONV1_MACS + CONV2_MACS + FC_MACS) / cpu.int8_macs_per_cycle.value
    # The all-CPU baseline adds elementwise work for the non-MAC operators (ReLUs, pool; views are free).
    assert result.all_cpu_us > baseline / clock * 1e6
    assert result.speedup == pytest.approx(result.all_cpu_us / result.total_us)
    # The pool on the CPU reads 8x8x8 elements; its quantize/dequantize neighbours convert 512 and 128.
    on_cpu = {e.name: e for e in compiled.report.rejected()}
    assert any(e.target == POOL for e in on_cpu.values())
    assert result.cpu_us > 8 * 8 * 8 * cpu.cycles_per_element.value / clock * 1e6


def test_every_assumption_says_where_it_comes_from():
    for name in ("imxrt700", "mcxn94x", "imx95"):
        listed = assumptions(get_target(name))
        assert {a.name for a in listed} >= {"NPU peak", "NPU clock", "NPU utilization", "NPU memory bandwidth",
                                            "delegate call overhead", "CPU int8 MACs", "CPU float MACs"}
        for assumption in listed:
            assert assumption.basis in ("public", "derived", "assumed"), assumption
            assert assumption.note and assumption.value > 0, assumption
    imx95 = {a.name: a for a in assumptions(get_target("imx95"))}
    # Derived from a measured MobileNetV2 on imxrt700: 300 M MACs in 3.17 ms at 1024 MACs/cycle, 1 GHz.
    assert imx95["NPU utilization"].value == pytest.approx(300e6 / 3.17e-3 / 1024e9)


# -- text and picture --------------------------------------------------------------------------------------------


def test_text_report_names_every_cpu_node_with_its_reason_and_the_estimate(compiled):
    report = compiled.report
    text = report.summary()
    cpu_section = text[text.index("On the CPU, and why"):].splitlines()
    for entry in report.rejected():
        line = next(line for line in cpu_section if line.strip().startswith(entry.name + " "))
        assert line.rstrip().endswith(entry.reason)
    assert f"{report.delegated_macs:,} of {report.total_macs:,} MACs on the NPU (100.0%)" in text
    assert "3 layout transpose(s) at partition boundaries" in text
    assert f"{report.latency_estimate().total_us / 1000:.3f} ms per inference" in text
    assert all(entry.name in str(report) for entry in report.nodes)


def test_html_picture_colours_operators_by_placement(compiled):
    report = compiled.report
    page = report.to_html()
    svg = ElementTree.fromstring(page[page.index("<svg"):page.index("</svg>") + len("</svg>")])
    namespace = "{http://www.w3.org/2000/svg}"
    boxes = {}
    for group in svg.iter(f"{namespace}g"):
        title = group.find(f"{namespace}title").text
        boxes[title.split(" ")[0]] = group.find(f"{namespace}rect").get("fill")
    operators = [e for e in report.nodes if e.kind not in ("quantize", "dequantize", "getitem")]
    assert set(boxes) == {e.name for e in operators} | {"model"}  # the model input is drawn too
    (pool,) = [e for e in operators if e.target == POOL]
    assert boxes[pool.name] == "#e15759"
    partition_colours = {e.partition: boxes[e.name] for e in operators if e.delegated}
    assert len(set(partition_colours.values())) == 2 and "#e15759" not in partition_colours.values()


# -- the per-layer profile ---------------------------------------------------------------------------------------


def _hooked_macs(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> int:
    """MACs of the float model's convolutions and linear layers, counted with forward hooks (not by our code)."""
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
        else:
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(*example_inputs)
    for handle in handles:
        handle.remove()
    return total


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _check_profile_adds_up(report, rows: list[dict[str, str]], expected_macs: int) -> None:
    estimate_ = report.latency_estimate()
    assert sum(int(row["macs"]) for row in rows) == expected_macs == report.total_macs
    assert sum(float(row["time_us"]) for row in rows) == pytest.approx(estimate_.total_us)
    assert sum(float(row["share"]) for row in rows) == pytest.approx(1.0)
    for partition in estimate_.partitions:
        mine = [row for row in rows if row["partition"] == str(partition.partition)]
        assert sum(float(row["time_us"]) for row in mine) == pytest.approx(partition.total_us)
        cycles = sum(float(row["cycles"]) for row in mine)
        assert cycles / float(mine[0]["clock_hz"]) * 1e6 == pytest.approx(partition.total_us)
    for row in rows:
        compute, memory, cycles = (float(row[k]) for k in ("compute_cycles", "memory_cycles", "cycles"))
        if row["bound"] != "overhead":
            assert cycles == max(compute, memory)
            assert row["bound"] == ("memory" if memory > compute else "compute")


def test_per_layer_csv_adds_up_to_the_report_and_the_estimate(compiled):
    report = compiled.report
    rows = _csv_rows(report.per_layer_csv())
    torch.manual_seed(0)
    _check_profile_adds_up(report, rows, _hooked_macs(TwoPartitionNet().eval(), (torch.randn(1, 3, 8, 8),)))
    npu = [row for row in rows if row["where"] == "NPU" and row["kind"] != "overhead"]
    assert [row["operator"] for row in npu] == ["TRANSPOSE", "PAD", "CONV_2D", "TRANSPOSE",
                                                "TRANSPOSE", "PAD", "CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
    conv = npu[2]
    assert (conv["input_shapes"], conv["output_shapes"], int(conv["macs"])) == ("1x10x10x3", "1x8x8x8", CONV1_MACS)
    assert int(conv["weight_bytes"]) == 8 * 3 * 3 * 3 + 4 * 8  # int8 weights, int32 biases
    # The pool stays on the CPU with its quantize/dequantize neighbours, each with a cost-model estimate.
    cpu = {row["name"]: row for row in rows if row["where"] == "CPU"}
    assert set(cpu) == {e.name for e in report.rejected()}
    (pool,) = [row for row in cpu.values() if row["operator"] == POOL]
    assert float(pool["time_us"]) > 0


def test_per_layer_in_json_and_html(compiled):
    report = compiled.report
    layers = report.to_dict()["layers"]
    assert [(layer["name"], layer["macs"]) for layer in layers] == [
        (row["name"], int(row["macs"])) for row in _csv_rows(report.per_layer_csv())]
    page = report.to_html()
    table = page[page.index('<table class="sortable" id="layers">'):page.index("</table>") + len("</table>")]
    body = ElementTree.fromstring(table).find("tbody")
    assert len(body) == len(layers)
    assert "<script>" in page and "addEventListener" in page


@pytest.mark.parametrize("name", ["resnet8", "ds_cnn"])
def test_zoo_per_layer_macs_match_forward_hooks(name: str):
    from neutron_backend.models import get_model
    from neutron_backend.quantizer.calibration import random_batches

    model, inputs = get_model(name)
    expected = _hooked_macs(model, inputs)
    compiled = compile_model(model, inputs, "mcxn94x", calibration_batches=random_batches(inputs, 1), progress=False)
    _check_profile_adds_up(compiled.report, _csv_rows(compiled.report.per_layer_csv()), expected)


def test_cli_writes_the_per_layer_csv_and_the_memory_report(tmp_path, capsys):
    from neutron_backend.cli import main

    pte, layers = tmp_path / "cifarnet.pte", tmp_path / "layers.csv"
    assert main(["compile", "cifarnet", "--target", "mcxn94x", "-q", "-o", str(pte), "--per-layer", str(layers),
                 "--report", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = _csv_rows(layers.read_text())
    # CifarNet: conv 5x5 3->32 on 32x32, 32->32 on 16x16, 32->64 on 8x8, FC 1024 -> 10.
    macs = 32 * 32 * 32 * 3 * 25 + 32 * 16 * 16 * 32 * 25 + 64 * 8 * 8 * 32 * 25 + 1024 * 10
    assert sum(int(row["macs"]) for row in rows) == report["total_macs"] == macs
    assert sum(float(row["time_us"]) for row in rows) == pytest.approx(report["latency_estimate"]["total_us"])
    memory = report["memory"]
    assert memory["pte_bytes"] == pte.stat().st_size
    assert [c["memory"] for c in memory["checks"]] == ["SRAM", "flash"]
    assert memory["checks"][1]["needed_bytes"] == pte.stat().st_size
