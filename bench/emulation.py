"""Emulation speed: our exact int8 engine against LiteRT's reference kernels, XNNPACK and the quantized torch model.

For each model (zoo `mobilenet_v2` 1x3x224x224, `resnet8` 1x3x32x32), in one process and one run:

- **exact**: our `.pte` (exported for batch 1) through ExecuTorch's runtime with `load_pte(kernels="exact")`;
- **reference**: the same `.pte` with `load_pte(kernels="reference")` (LiteRT's BUILTIN_REF kernels);
- **xnnpack**: an int8 `.pte` of the same float model (XNNPACKQuantizer + XnnpackPartitioner) through
  `executorch.runtime`;
- **torch**: the quantized torch model (`convert_pt2e` output) our `.pte` was lowered from.

Batch 1: median per-image time. Batch 32: images per second. Our path runs a batch of 32 by emulating the lowered
program (`emulate(edge, x32, kernels=...)`): the Neutron delegate's payload takes 32 images at once (our exact
engine runs each operator on the whole batch; LiteRT's interpreter, built for batch 1, is invoked 32 times); the
Q/DQ nodes around it are elementwise. The batch-1 `.pte` files of XNNPACK run 32 images one call each; the torch
model takes the batch of 32 directly.

Every measurement is repeated, the engines interleaved inside each repetition (the machine is shared), and
medians reported with the load average before and after. At batch 1 a repetition times `--calls` consecutive
calls per engine (the steady state of verifying a dataset, and less timer noise than one call; the slow LiteRT
reference path one call). torch, ExecuTorch's threadpool (XNNPACK) and LiteRT run
one thread each.

    nice -n 10 python bench/emulation.py            # writes bench/results/emulation.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize)
import torch

RESULTS = Path(__file__).parent / "results"
ENGINES = ("exact", "reference", "xnnpack", "torch")


def _neutron(name: str, directory: Path):
    from executorch.exir import to_edge_transform_and_lower

    from neutron_backend.compile_spec import generate_neutron_compile_spec
    from neutron_backend.models import get_model
    from neutron_backend.partitioner import NeutronPartitioner
    from neutron_backend.quantizer.calibration import quantize_model, random_batches

    model, example = get_model(name)
    model.eval()
    quantized = quantize_model(model, example, calibration_batches=random_batches(example, 8), progress=False)
    edge = to_edge_transform_and_lower(torch.export.export(quantized, example),
                                       partitioner=[NeutronPartitioner(generate_neutron_compile_spec("imxrt700"))])
    import copy

    kept = copy.deepcopy(edge)
    pte = directory / f"{name}.pte"
    pte.write_bytes(edge.to_executorch().buffer)
    return model, example, quantized, kept, pte


def _xnnpack(model: torch.nn.Module, example: tuple[torch.Tensor, ...], directory: Path, name: str) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from neutron_backend.quantizer.calibration import random_batches

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    with torch.no_grad():
        for batch in random_batches(example, 8):
            prepared(*batch)
    quantized = convert_pt2e(prepared)
    edge = to_edge_transform_and_lower(torch.export.export(quantized, example), partitioner=[XnnpackPartitioner()])
    pte = directory / f"{name}_xnnpack.pte"
    pte.write_bytes(edge.to_executorch().buffer)
    return pte


def _timed(fn, calls: int = 1) -> float:
    """Seconds per call of ``calls`` consecutive calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def bench_model(name: str, directory: Path, repeats: int, batch: int, calls: int) -> dict:
    from executorch.runtime import Runtime

    from neutron_backend.runtime import emulate, load_pte

    model, example, quantized, edge, pte = _neutron(name, directory)
    xnn_pte = _xnnpack(model, example, directory, name)
    runners = {
        "exact": load_pte(pte, kernels="exact"),
        "reference": load_pte(pte, kernels="reference"),
        "xnnpack": Runtime.get().load_program(str(xnn_pte)).load_method("forward"),
    }
    generator = torch.Generator().manual_seed(0)
    x1 = torch.randn(example[0].shape, generator=generator)
    xb = torch.randn((batch, *example[0].shape[1:]), generator=generator)
    single = {
        "exact": lambda: runners["exact"](x1),
        "reference": lambda: runners["reference"](x1),
        "xnnpack": lambda: runners["xnnpack"].execute([x1]),
        "torch": lambda: quantized(x1),
    }
    try:
        quantized(xb)
        torch_batched = True
    except Exception:  # a graph with shapes baked in for batch 1 runs image by image
        torch_batched = False
    batched = {
        "exact": lambda: emulate(edge, xb, kernels="exact"),
        "reference": lambda: emulate(edge, xb, kernels="reference"),
        "xnnpack": lambda: [runners["xnnpack"].execute([xb[i:i + 1]]) for i in range(batch)],
        "torch": (lambda: quantized(xb)) if torch_batched else (lambda: [quantized(xb[i:i + 1]) for i in range(batch)]),
    }
    # Same results before timing anything: the exact engine must match the reference one bit for bit.
    with torch.no_grad():
        assert torch.equal(single["exact"]()[0], single["reference"]()[0]), f"{name}: engines differ at batch 1"
        assert torch.equal(batched["exact"]()[0], batched["reference"]()[0]), f"{name}: engines differ batched"
        for fn in (*single.values(), *batched.values()):
            fn()  # warm-up (lazy preparation, caches)
        times: dict[str, dict[str, list[float]]] = {"batch1": {e: [] for e in ENGINES},
                                                    f"batch{batch}": {e: [] for e in ENGINES}}
        for repeat in range(repeats):
            for engine in ENGINES:
                # LiteRT's reference path is ~30x slower than the others: one call per repetition bounds its cost.
                times["batch1"][engine].append(_timed(single[engine], 1 if engine == "reference" else calls))
            for engine in ENGINES:
                # LiteRT's reference path takes ~30x longer per image; a third of the repetitions bound its cost.
                if engine == "reference" and repeat % 3:
                    continue
                times[f"batch{batch}"][engine].append(_timed(batched[engine]))
    per_image_ms = {e: 1000 * statistics.median(times["batch1"][e]) for e in ENGINES}
    images_per_s = {e: batch / statistics.median(times[f"batch{batch}"][e]) for e in ENGINES}
    return {
        "input_shape": list(example[0].shape),
        "per_image_ms_batch1": per_image_ms,
        f"images_per_s_batch{batch}": images_per_s,
        "samples": {k: {e: len(v) for e, v in t.items()} for k, t in times.items()},
        "raw_s": times,
        "torch_model_batched": torch_batched,
        "exact_vs_xnnpack_batch1": per_image_ms["exact"] / per_image_ms["xnnpack"],
        "exact_vs_reference_throughput": images_per_s["exact"] / images_per_s["reference"],
    }


def _markdown(result: dict, batch: int) -> str:
    lines = [
        "# Emulation speed",
        "",
        f"Measured {result['date']} on {result['machine']} ({result['cpus']} CPUs shared with other developers; "
        f"load average {result['load_before'][0]:.1f} before, {result['load_after'][0]:.1f} after). "
        f"{result['threads']}. Medians of {result['repeats']} interleaved repetitions; at batch 1 each repetition "
        f"times {result['calls']} consecutive calls per engine (the steady state of running a dataset; LiteRT "
        "reference: one call), at batch 32 one call (LiteRT reference: every third repetition).",
        "",
        f"Command: `{result['command']}`",
        "",
        f"| model | engine | ms / image, batch 1 | images / s, batch {batch} |",
        "|---|---|---:|---:|",
    ]
    for name, model in result["models"].items():
        for engine in ENGINES:
            lines.append(f"| {name} {model['input_shape']} | {engine} | {model['per_image_ms_batch1'][engine]:.1f} | "
                         f"{model[f'images_per_s_batch{batch}'][engine]:.1f} |")
    lines += ["", "Engines: **exact** our int8 kernels (`load_pte(kernels='exact')`, the default), **reference** "
              "LiteRT's BUILTIN_REF kernels (`--kernels reference`), **xnnpack** an XNNPACK int8 `.pte` of the same "
              "float model, **torch** the quantized torch model our `.pte` comes from.", "", "## Goals", ""]
    for name, model in result["models"].items():
        ratio, speedup = model["exact_vs_xnnpack_batch1"], model["exact_vs_reference_throughput"]
        lines.append(f"- {name}: batch 1, exact / XNNPACK = **{ratio:.2f}x** (goal <= 3x: "
                     f"{'met' if ratio <= 3 else 'missed'}); batch {batch} throughput exact / reference = "
                     f"**{speedup:.1f}x** (goal >= 10x: {'met' if speedup >= 10 else 'missed'})")
    lines += ["", f"Batch {batch} on our path: the `.pte` is exported for batch 1, so the lowered program is emulated "
              f"(`emulate(edge, x{batch}, kernels=...)`) with {batch} images at once; the exact engine runs every "
              "operator of the Neutron delegate on the whole batch (bit-identical to the reference engine, checked "
              "before timing), LiteRT's interpreter is invoked once per image. XNNPACK's batch-1 `.pte` runs one call "
              "per image; the torch model takes the whole batch"
              + ("." if all(m["torch_model_batched"] for m in result["models"].values()) else " where it can."), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet8"])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--calls", type=int, default=10, help="consecutive batch-1 calls timed per repetition")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool

    _unsafe_reset_threadpool(1)
    threads = (f"torch threads {torch.get_num_threads()}, ExecuTorch threadpool {_threadpool_get_thread_count()} "
               "thread(s), LiteRT interpreter 1 thread")
    command = "nice -n 10 python bench/emulation.py " + " ".join(sys.argv[1:])
    result = {"command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": platform.processor() or
              platform.machine(), "cpus": os.cpu_count(), "threads": threads, "repeats": args.repeats,
              "calls": args.calls,
              "load_before": os.getloadavg(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            result["models"][name] = bench_model(name, Path(tmp), args.repeats, args.batch, args.calls)
            print(name, json.dumps({k: v for k, v in result["models"][name].items() if k != "raw_s"}), flush=True)
    result["load_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "emulation.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "emulation.md").write_text(_markdown(result, args.batch))
    print(_markdown(result, args.batch))


if __name__ == "__main__":
    main()
