"""The model zoo end to end: delegation, MACs, accuracy and agreement with the quantized torch model, and timings.

For every zoo model (`neutron_backend.models`): quantize it with NeutronQuantizer, partition and lower it for
imxrt700 (`neutron_backend.pipeline.compile_model`), then run the .pte on the host (ExecuTorch runtime) and compare
it with the quantized torch model (`neutron_backend.verify.verify`):

- trained models (`*_digits`): calibrated on their first 256 training images, checked on the 360 held-out test
  images: float, quantized and .pte accuracy, top-1 agreement of the .pte with the quantized model;
- random-weight models: calibrated on 16 seeded N(0, 1) batches, run on 100 seeded N(0, 1) inputs (a seed
  different from the calibration's): lowering figures and errors only, no accuracy.

Figures per model: call_function nodes (delegated / all), partitions, MACs and the delegated fraction, max and mean
error in output quantization steps, top-1 agreement with the reference (classifiers), how many distinct classes the
reference predicts on those inputs (1 means top-1 agreement says little), and for each top-1 disagreement the
reference's margin between its class and the .pte's (a near-tie when it is within the error). Timings: compile
(quantize + calibrate + partition + lower) wall and CPU seconds, host run per inference.
Writes bench/results/zoo.{json,md}.

    python bench/zoo.py                              # every model (random-weight ones on 100 inputs)
    python bench/zoo.py --models resnet8 ds_cnn --inputs 20 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET = "imxrt700"
CALIBRATION_BATCHES = 16
CALIBRATION_SEED = 0
INPUT_SEED = 1
NOISE_SEED = 2
# Share of a requantization's outputs moved by one step: the measured LiteRT-vs-torch rate is 0.1-0.3% per op.
NOISE_RATE = 0.002


class _Recorder:
    """Wraps a callable returning a tuple of tensors; keeps every first output and the time spent."""

    def __init__(self, function) -> None:
        self.function = function
        self.first_outputs: list[torch.Tensor] = []
        self.seconds = 0.0

    def __call__(self, *args: torch.Tensor):
        start = time.perf_counter()
        outputs = self.function(*args)
        self.seconds += time.perf_counter() - start
        outputs = outputs if isinstance(outputs, tuple | list) else (outputs,)
        self.first_outputs.append(outputs[0].detach().reshape(-1).double())
        return outputs


def measure(name: str, num_inputs: int) -> dict:
    from neutron_backend.models import zoo_entry
    from neutron_backend.pipeline import compile_model
    from neutron_backend.quantizer.calibration import random_batches
    from neutron_backend.runtime import load_pte
    from neutron_backend.verify import output_scales, top1_margin, verify

    entry = zoo_entry(name)
    start = time.perf_counter()
    model, example_inputs = entry.build()
    build_s = time.perf_counter() - start
    if entry.trained:
        calibration = entry.calibration()
        split = entry.test_split()
        inputs, labels = split.batches(), list(split.labels)
    else:
        calibration = random_batches(example_inputs, CALIBRATION_BATCHES, seed=CALIBRATION_SEED)
        inputs, labels = random_batches(example_inputs, num_inputs, seed=INPUT_SEED), None
    wall, cpu = time.perf_counter(), time.process_time()
    compiled = compile_model(model, example_inputs, TARGET, progress=False, calibration_batches=calibration)
    compile_wall_s, compile_cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    report = compiled.report

    with tempfile.TemporaryDirectory() as directory:
        pte_path = Path(directory) / f"{name}.pte"
        pte_path.write_bytes(compiled.pte)
        program = _Recorder(load_pte(pte_path))
        reference = _Recorder(compiled.quantized)
        scales = output_scales(compiled.quantized)
        result = verify(program, reference, inputs, float_model=model, output_scale=scales, labels=labels)

    row = dict(
        model=name, description=entry.description, source=entry.source, classifier=entry.classifier,
        trained=entry.trained, float_accuracy=result.float_accuracy, quantized_accuracy=result.reference_accuracy,
        pte_accuracy=result.pte_accuracy,
        input_shape=list(entry.input_shape), params=sum(p.numel() for p in model.parameters()),
        nodes=len(report.nodes), delegated_nodes=sum(e.delegated for e in report.nodes),
        cpu_nodes=[f"{e.name} ({e.target}): {e.reason}" for e in report.rejected()],
        partitions=report.num_partitions, macs=report.total_macs, delegated_macs=report.delegated_macs,
        delegated_mac_fraction=report.delegated_mac_fraction, pte_bytes=len(compiled.pte),
        inputs=result.num_samples, output_scale=scales[0],
        max_error_steps=result.max_error_steps, mean_error_steps=round(result.mean_error_steps, 4),
        build_s=round(build_s, 2), compile_wall_s=round(compile_wall_s, 2), compile_cpu_s=round(compile_cpu_s, 2),
        host_ms_per_inference=round(1000 * program.seconds / result.num_samples, 2),
    )
    if entry.classifier:
        # A disagreement, as verify counts it, is a positive top-1 margin.
        gaps = [top1_margin(ref, pte) for ref, pte in zip(reference.first_outputs, program.first_outputs, strict=True)]
        margins = [gap / scales[0] for gap in gaps if gap > 0]
        row.update(top1_agreement=result.top1_agreement if result.agreement_is_meaningful else None,
                   distinct_reference_classes=result.distinct_reference_classes,
                   top1_agreement_with_float=result.top1_agreement_with_float,
                   reference_top1_agreement_with_float=result.reference_top1_agreement_with_float,
                   disagreement_margins_steps=[round(m, 3) for m in margins],
                   perturbed_reference_agreement=perturbed_reference_agreement(compiled.quantized, inputs,
                                                                               NOISE_RATE))
    print(json.dumps(row), flush=True)
    return row


def _sparse_step_noise(rate: float, seed: int):
    """A function moving a seeded random `rate` of a quantized tensor's elements by one step up or down (clamped).
    A plain function: torch.fx names call_function targets by their __name__."""
    generator = torch.Generator().manual_seed(seed)

    def sparse_step_noise(q: torch.Tensor, quant_min: int, quant_max: int) -> torch.Tensor:
        moved = torch.rand(q.shape, generator=generator) < rate
        step = torch.where(torch.rand(q.shape, generator=generator) < 0.5, -1, 1).to(q.dtype)
        return torch.clamp(q + moved.to(q.dtype) * step, quant_min, quant_max)

    return sparse_step_noise


def perturbed_reference_agreement(quantized: torch.fx.GraphModule, inputs: list, rate: float) -> float:
    """Top-1 agreement of the quantized torch model with itself when every requantization inside it (each quantize
    node but the input's) is off by one step on a random `rate` of its elements, as LiteRT's fixed-point kernels
    are on about 0.1-0.3% of a layer's outputs: how fragile the model's top-1 is under differences that a correct
    integer implementation makes."""
    import copy

    noisy = copy.deepcopy(quantized)
    noise = _sparse_step_noise(rate, NOISE_SEED)
    graph = noisy.graph
    target = torch.ops.quantized_decomposed.quantize_per_tensor.default
    for node in [n for n in graph.nodes if n.target == target and n.args[0].op != "placeholder"]:
        with graph.inserting_after(node):
            moved = graph.call_function(noise, (node, node.args[3], node.args[4]))
        node.replace_all_uses_with(moved, delete_user_cb=lambda user, moved=moved: user is not moved)
    noisy.recompile()
    from neutron_backend.verify import top1_margin

    with torch.no_grad():
        kept = sum(top1_margin(quantized(*sample), noisy(*sample)) == 0 for sample in inputs)
    return kept / len(inputs)


def _git(*args: str) -> str:
    repo = Path(__file__).resolve().parent.parent
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """The machine, library versions, load, and the code measured (commit, and whether it had local edits)."""
    from importlib.metadata import version

    return dict(nproc=os.cpu_count(), torch_threads=torch.get_num_threads(), load_average=os.getloadavg(),
                python=platform.python_version(), torch=torch.__version__, executorch=version("executorch"),
                ai_edge_litert=version("ai-edge-litert"), platform=platform.platform(),
                commit=_git("rev-parse", "--short", "HEAD"),
                library_modified=bool(_git("status", "--porcelain", "--", "neutron_backend")))


def _percent(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _agreement(row: dict) -> str:
    if not row["classifier"]:
        return "-"
    if row.get("top1_agreement") is None:
        return f"not claimed ({row['distinct_reference_classes']} class)"
    return _percent(row["top1_agreement"], 1 if row["trained"] else 0)


def trained_table(rows: list[dict]) -> list[str]:
    """The trained models: accuracy on the held-out test split (also README.md's zoo table)."""
    lines = [
        "| model | input | MACs | MACs on NPU | partitions | float accuracy | quantized accuracy | .pte accuracy | "
        "top-1 agreement (.pte vs quantized) | classes predicted | max / mean error (steps) | compile (s, CPU) | "
        "host run (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in rows if r["trained"]):
        shape = "x".join(map(str, r["input_shape"]))
        lines.append(
            f"| {r['model']} | {shape} | {r['macs']:,} | {_percent(r['delegated_mac_fraction'])} | {r['partitions']} | "
            f"{_percent(r['float_accuracy'], 2)} | {_percent(r['quantized_accuracy'], 2)} | "
            f"{_percent(r['pte_accuracy'], 2)} | {_agreement(r)} | {r['distinct_reference_classes']} | "
            f"{r['max_error_steps']:g} / {r['mean_error_steps']:.3f} | {r['compile_cpu_s']:.0f} | "
            f"{r['host_ms_per_inference']:.1f} |")
    return lines


def markdown_table(rows: list[dict]) -> list[str]:
    """The random-weight models: lowering figures and errors, no accuracy (also README.md's second zoo table)."""
    lines = [
        "| model | input | MACs | nodes on NPU | partitions | MACs on NPU | max / mean error (steps) | "
        "top-1 agreement | distinct classes | compile (s, CPU) | host run (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in rows if not r["trained"]):
        shape = "x".join(map(str, r["input_shape"]))
        distinct = r.get("distinct_reference_classes", "-")
        lines.append(
            f"| {r['model']} | {shape} | {r['macs']:,} | {r['delegated_nodes']}/{r['nodes']} | {r['partitions']} | "
            f"{_percent(r['delegated_mac_fraction'])} | {r['max_error_steps']:g} / {r['mean_error_steps']:.3f} | "
            f"{_agreement(r)} | {distinct} | {r['compile_cpu_s']:.0f} | {r['host_ms_per_inference']:.1f} |")
    return lines


def write(rows: list[dict], command: str, info: dict) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "zoo.json").write_text(json.dumps(dict(command=command, machine=info, rows=rows), indent=2) + "\n")
    lines = [
        "# Model zoo on imxrt700",
        "",
        f"Each model quantized with NeutronQuantizer, lowered for {TARGET} with "
        "`neutron_backend.pipeline.compile_model`, and its .pte run on the host (ExecuTorch runtime, Neutron "
        "partitions emulated) against the quantized torch model (`neutron_backend.verify.verify`).",
        "",
        "Trained models (weights in `neutron_backend/models/weights/`, `python -m neutron_backend.models.train`): "
        "calibrated on 256 training images of scikit-learn's digits, checked on the 360 held-out test images "
        "(80/20 stratified split, seed 0). Accuracy counts a sample when its label is the single top-1 class. "
        "Top-1 agreement counts a sample when every class the .pte ranks top is a top class of the quantized model "
        "(a tie counts only where the quantized model is tied too). `classes predicted`: distinct single top-1 "
        "classes of the quantized model.",
        "",
        f"Random-weight models: {CALIBRATION_BATCHES} seeded N(0, 1) calibration batches, seeded N(0, 1) inputs; "
        "weights random (seeded) with batchnorm statistics warmed up: the figures measure the lowering, not "
        "accuracy, and their agreement is not a claim (with random weights top-1 is decided by small margins). "
        "Where the quantized model predicts a single class, no agreement is shown.",
        "",
        "Error is |pte - reference| in output quantization steps. LiteRT's reference kernels requantize in fixed "
        "point (double rounding), torch in float: each requantizing op may differ by 1 step, and deeper layers "
        "amplify earlier differences, so deep models show more than 1 step at the output. The last table's "
        "`reference top-1 kept under 1-step noise` is the top-1 agreement of the quantized torch model with itself "
        "when each of its requantizations is one step off on a random 0.2% of its outputs (the kind and rate of "
        "difference fixed-point kernels make): how fragile the model's top-1 is under differences DESIGN.md's "
        "1-step-per-op rule allows. Compile time is CPU seconds of quantize + calibrate + partition + lower (wall "
        "time depends on the machine's load).",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {info['nproc']} CPUs (load average {info['load_average'][0]:.1f} at the end), torch threads "
        f"{info['torch_threads']}, Python {info['python']}, torch {info['torch']}, executorch {info['executorch']}, "
        f"ai-edge-litert {info['ai_edge_litert']}; commit {info['commit']}"
        f"{' with local changes to neutron_backend/' if info['library_modified'] else ''}",
        "",
        "Trained models, on the held-out digits test split:",
        "",
        *trained_table(rows),
        "",
        "Random-weight models:",
        "",
        *markdown_table(rows),
        "",
        "| model | params | .pte bytes | compile wall (s) | top-1 vs float (pte / reference) | "
        "reference top-1 kept under 1-step noise | reference margin at top-1 disagreements (steps) | CPU nodes |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        float_agreement = (f"{_percent(r['top1_agreement_with_float'])} / "
                           f"{_percent(r['reference_top1_agreement_with_float'])}" if r["classifier"] else "-")
        margins = ", ".join(f"{m:g}" for m in r.get("disagreement_margins_steps", [])) or "-"
        cpu_nodes = ", ".join(n.split(" (")[1].split(")")[0].split(".")[-2] for n in r["cpu_nodes"]) or "-"
        lines.append(f"| {r['model']} | {r['params']:,} | {r['pte_bytes']:,} | {r['compile_wall_s']:.0f} | "
                     f"{float_agreement} | {_percent(r.get('perturbed_reference_agreement'))} | {margins} | "
                     f"{cpu_nodes} |")
    lines += ["", "Models:", ""]
    lines += [f"- `{r['model']}`: {r['description']}. Source: {r['source']}." for r in rows]
    (RESULTS_DIR / "zoo.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    from neutron_backend.models import list_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    parser.add_argument("--inputs", type=int, default=100, help="seeded random inputs per model")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (batch-1 models gain nothing from more, and on a busy machine "
                             "thread wake-ups slow torch ops down by up to 100x)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python " + " ".join([os.path.relpath(__file__, Path.cwd()), *(argv or sys.argv[1:])])
    rows = [measure(name, args.inputs) for name in args.models]
    write(rows, command, machine())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
