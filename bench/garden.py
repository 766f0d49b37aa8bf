"""The torchvision model garden through our flow and through XNNPACK's, side by side in one run.

For every model (torchvision 0.28.0 classification builders, `weights=None`, seeded, batchnorm warmed up:
`neutron_backend.models.torchvision_garden`), each in a fresh process:

- ours: quantize with NeutronQuantizer (4 seeded N(0, 1) calibration batches), export, `to_edge_transform_and_lower`
  with NeutronPartitioner for imxrt700, `to_executorch`; run the .pte on the host (ExecuTorch runtime, Neutron
  partitions emulated) on 2 seeded inputs and compare with the quantized torch model, in output quantization steps;
- XNNPACK: the same float model and calibration batches, XNNPACKQuantizer (symmetric static config),
  XnnpackPartitioner, `to_executorch`.

Per model: partitions, MACs on the NPU (%), delegated / total compute nodes (call_function nodes other than
quantize, dequantize and getitem), every CPU reason with its count, quantize and lowering seconds for both flows.
Lowering = `to_edge_transform_and_lower` + `to_executorch`. Results are written after every model.

    python bench/garden.py                                   # the issue's list
    python bench/garden.py --models mobilenet_v3_small,squeezenet1_1
    python bench/garden.py --skip-xnnpack --skip-run         # ours only, no host run

Writes bench/results/garden.{json,md} (a subset run with --models merges into the existing results).
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
MODELS = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "resnet18", "resnet50", "efficientnet_b0",
          "efficientnet_b1", "squeezenet1_0", "squeezenet1_1", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
          "mnasnet0_5", "mnasnet1_0", "regnet_x_400mf", "regnet_y_400mf", "googlenet", "densenet121",
          "convnext_tiny", "vit_b_16")
# Not convolutional networks: transformer blocks (LayerNorm, GELU, attention) may stay on the CPU.
TRANSFORMERS = ("vit_b_16",)
TARGET = "imxrt700"
CALIBRATION_BATCHES = 4
CALIBRATION_SEED = 0
INPUT_SEED = 1
RUN_INPUTS = 2
_QUOTED = re.compile(r"'[^']*'")
_DECIMAL = re.compile(r"\d+\.\d+")


def _compute_entries(report: Any) -> list[Any]:
    from neutron_backend.report import PLUMBING_KINDS

    return [entry for entry in report.nodes if entry.kind not in PLUMBING_KINDS]


def _reason_key(entry: Any) -> str:
    """The operator and its reason with node names and measured values (scales) left out, so the same reason on
    different nodes counts together."""
    reason = _DECIMAL.sub("<x>", _QUOTED.sub("'<node>'", entry.reason))
    return f"{entry.target.split('.')[-2] if '.' in entry.target else entry.target}: {reason}"


def _delegates(edge: Any) -> list[Any]:
    from executorch.exir.lowered_backend_module import LoweredBackendModule

    return [m for m in edge.exported_program().graph_module.children() if isinstance(m, LoweredBackendModule)]


def lower_ours(model: Any, example: tuple, batches: list[tuple], run_host: bool) -> dict:
    """Our flow on `model`: quantize (NeutronQuantizer, `batches`), lower, to_executorch (and a host run)."""
    import executorch.kernels.quantized  # noqa: F401 - out-variants of quantize/dequantize for to_executorch
    import torch
    from executorch.exir import to_edge_transform_and_lower

    from neutron_backend.compile_spec import generate_neutron_compile_spec
    from neutron_backend.partitioner import NeutronPartitioner
    from neutron_backend.quantizer.calibration import quantize_model, random_batches

    start = time.perf_counter()
    quantized = quantize_model(model, example, TARGET, calibration_batches=batches, progress=False)
    quantize_s = time.perf_counter() - start
    partitioner = NeutronPartitioner(generate_neutron_compile_spec(TARGET))
    start = time.perf_counter()
    edge = to_edge_transform_and_lower(torch.export.export(quantized, example), partitioner=[partitioner])
    to_edge_s = time.perf_counter() - start
    start = time.perf_counter()
    pte = edge.to_executorch().buffer
    to_executorch_s = time.perf_counter() - start
    report = partitioner.report
    compute = _compute_entries(report)
    reasons = collections.Counter(_reason_key(e) for e in compute if not e.delegated)
    result = dict(partitions=report.num_partitions, mac_fraction=report.delegated_mac_fraction,
                  total_macs=report.total_macs, cpu_macs=report.total_macs - report.delegated_macs,
                  compute_nodes=len(compute), delegated_compute_nodes=sum(e.delegated for e in compute),
                  cpu_reasons=dict(reasons.most_common()), quantize_s=round(quantize_s, 2),
                  lower_s=round(to_edge_s + to_executorch_s, 2), to_edge_s=round(to_edge_s, 2),
                  to_executorch_s=round(to_executorch_s, 2), pte_bytes=len(pte))
    if run_host:
        from neutron_backend.verify import verify

        inputs = random_batches(example, RUN_INPUTS, seed=INPUT_SEED)
        start = time.perf_counter()
        checked = verify(pte, quantized, inputs)
        result.update(max_error_steps=checked.max_error_steps, mean_error_steps=round(checked.mean_error_steps, 4),
                      run_s=round(time.perf_counter() - start, 2), run_inputs=len(inputs))
    return result


def lower_xnnpack(model: Any, example: tuple, batches: list[tuple]) -> dict:
    """XNNPACK's flow on `model`: XNNPACKQuantizer (symmetric, `batches`), XnnpackPartitioner, to_executorch."""
    import executorch.kernels.quantized  # noqa: F401
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    start = time.perf_counter()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    prepared = prepare_pt2e(torch.export.export(model.eval(), example).module(), quantizer)
    with torch.no_grad():
        for batch in batches:
            prepared(*batch)
    quantized = convert_pt2e(prepared)
    quantize_s = time.perf_counter() - start
    start = time.perf_counter()
    edge = to_edge_transform_and_lower(torch.export.export(quantized, example), partitioner=[XnnpackPartitioner()])
    to_edge_s = time.perf_counter() - start
    delegates = _delegates(edge)
    delegated = sum(1 for m in delegates for n in m.original_module.graph.nodes if n.op == "call_function")
    start = time.perf_counter()
    edge.to_executorch()
    to_executorch_s = time.perf_counter() - start
    return dict(partitions=len(delegates), delegated_nodes=delegated, quantize_s=round(quantize_s, 2),
                lower_s=round(to_edge_s + to_executorch_s, 2), to_edge_s=round(to_edge_s, 2),
                to_executorch_s=round(to_executorch_s, 2))


def measure(name: str, xnnpack: bool, run_host: bool) -> dict:
    import torch

    from neutron_backend.models import torchvision_garden
    from neutron_backend.quantizer.calibration import random_batches

    torch.set_num_threads(1)
    start = time.perf_counter()
    model, example = torchvision_garden.build(name)
    row: dict[str, Any] = dict(model=name, input_shape=list(example[0].shape),
                               build_s=round(time.perf_counter() - start, 2))
    batches = random_batches(example, CALIBRATION_BATCHES, seed=CALIBRATION_SEED)
    try:
        row["neutron"] = lower_ours(copy.deepcopy(model), example, batches, run_host)
    except Exception as error:  # noqa: BLE001 - a bench row records the failure and moves on
        row["neutron"] = dict(error=f"{type(error).__name__}: {str(error)[:500]}")
    if xnnpack:
        try:
            row["xnnpack"] = lower_xnnpack(copy.deepcopy(model), example, batches)
        except Exception as error:  # noqa: BLE001
            row["xnnpack"] = dict(error=f"{type(error).__name__}: {str(error)[:500]}")
    return row


# -- driver ------------------------------------------------------------------------------------------------------


def _in_subprocess(args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        done = subprocess.run([sys.executable, __file__, *args, "--_out", str(out)], cwd=ROOT, check=False)
        if done.returncode != 0 or not out.exists():
            return dict(error=f"the measuring process exited with code {done.returncode} (killed: out of memory?)")
        return json.loads(out.read_text())


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> dict:
    from importlib.metadata import version

    return dict(nproc=os.cpu_count(), python=platform.python_version(), torch=version("torch"),
                torchvision=version("torchvision"), executorch=version("executorch"), platform=platform.platform(),
                commit=_git("rev-parse", "--short", "HEAD"),
                library_modified=bool(_git("status", "--porcelain", "--", "neutron_backend")),
                load_average=[round(x, 2) for x in os.getloadavg()])


def _verdict(row: dict) -> str:
    ours = row.get("neutron", {})
    if "error" in row or "error" in ours:
        return "error"
    if ours["partitions"] == 1 and ours["cpu_macs"] == 0:
        return "whole"
    return "cut"


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def write(result: dict, output: str = "garden") -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{output}.json").write_text(json.dumps(result, indent=2) + "\n")
    info = result["machine"]
    lines = ["# Model garden: torchvision classification models, ours vs XNNPACK", "",
             __doc__.split("\n\n", 1)[1].split("\n\n    python")[0].strip(), "",
             f"Command: `{result['command']}`", "",
             f"Machine: {info['nproc']} CPUs (shared; load average {info['load_average']} at the end), Python "
             f"{info['python']}, torch {info['torch']}, torchvision {info['torchvision']}, executorch "
             f"{info['executorch']}; commit {info['commit']}"
             f"{' with local changes to neutron_backend/' if info['library_modified'] else ''}", "",
             "| model | input | partitions | MACs on NPU | compute nodes on NPU | max error (steps) | quantize s "
             "(ours / XNNPACK) | lower s (ours / XNNPACK) | XNNPACK partitions | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    details: list[str] = []
    for row in result["rows"]:
        ours, xnn = row.get("neutron", {}), row.get("xnnpack", {})
        shape = "x".join(map(str, row.get("input_shape", [])))
        if "error" in row or "error" in ours:
            lines.append(f"| {row['model']} | {shape} | - | - | - | - | - | - | {_cell(xnn.get('partitions'))} | "
                         f"error |")
            details += [f"- **{row['model']}**: {row.get('error') or ours.get('error')}"]
            continue
        lines.append(
            f"| {row['model']} | {shape} | {ours['partitions']} | {100 * ours['mac_fraction']:.2f}% | "
            f"{ours['delegated_compute_nodes']}/{ours['compute_nodes']} | {_cell(ours.get('max_error_steps'))} | "
            f"{ours['quantize_s']:.1f} / {_cell(xnn.get('quantize_s'), '{:.1f}')} | "
            f"{ours['lower_s']:.1f} / {_cell(xnn.get('lower_s'), '{:.1f}')} | {_cell(xnn.get('partitions'))} | "
            f"{_verdict(row)}{' (transformer)' if row['model'] in TRANSFORMERS else ''} |")
        if ours["cpu_reasons"]:
            details.append(f"- **{row['model']}** ({ours['compute_nodes'] - ours['delegated_compute_nodes']} "
                           "compute node(s) on the CPU):")
            details += [f"  - {count} x {reason}" for reason, count in ours["cpu_reasons"].items()]
    lines += ["", "## Compute nodes on the CPU, and why", "", *(details or ["None."])]
    (RESULTS_DIR / f"{output}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated subset (default: the issue's list)")
    parser.add_argument("--skip-xnnpack", action="store_true")
    parser.add_argument("--skip-run", action="store_true", help="do not run the .pte on the host")
    parser.add_argument("--output", default="garden", help="results name under bench/results/ (default garden)")
    parser.add_argument("--merge", nargs="*", default=[], metavar="NAME",
                        help="also take the rows of these earlier results (e.g. a second run's garden_part2)")
    parser.add_argument("--_model", help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._model:
        row = measure(args._model, xnnpack=not args.skip_xnnpack, run_host=not args.skip_run)
        Path(args._out).write_text(json.dumps(row))
        return 0
    names = args.models.split(",") if args.models else list(MODELS)
    command = "python " + " ".join(["bench/garden.py", *(argv if argv is not None else sys.argv[1:])])
    previous = RESULTS_DIR / f"{args.output}.json"
    rows: dict[str, dict] = {}
    for source in ([previous] if args.models and previous.exists() else []) + [RESULTS_DIR / f"{name}.json"
                                                                            for name in args.merge]:
        rows.update({row["model"]: row for row in json.loads(source.read_text())["rows"]})
    flags = [*(["--skip-xnnpack"] if args.skip_xnnpack else []), *(["--skip-run"] if args.skip_run else [])]
    for name in names:
        row = _in_subprocess(["--_model", name, *flags])
        row.setdefault("model", name)
        rows[name] = row
        print(json.dumps(row), flush=True)
        order = [n for n in MODELS if n in rows] + sorted(n for n in rows if n not in MODELS)
        write(dict(command=command, machine=_machine(), rows=[rows[n] for n in order]), args.output)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
