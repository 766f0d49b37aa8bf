"""Lowering speed: MobileNetV2 with NeutronPartitioner vs XNNPACK's partitioner, and our stages on conv chains.

1. MobileNetV2 (neutron_backend.models, 1x3x224x224), quantized once with NeutronQuantizer; the same quantized
   program is lowered with `to_edge_transform_and_lower` + `to_executorch`, alternately with NeutronPartitioner and
   with XnnpackPartitioner, --repeat times each. Goal: ours <= 1.0x XNNPACK's (median end-to-end time).
2. Chains of Conv2d(8, 8, 3, padding=1) + ReLU blocks (1x8x8x8 input; 250, 1,000, 4,000 blocks), each in a fresh
   process: quantize, export, `to_edge_transform_and_lower` with NeutronPartitioner, timing our own stages inside
   it (ops_to_not_decompose, partition including the trial conversions, preprocess) plus our rewrite passes (run
   during quantization) next to the rest, which is ExecuTorch's (to_edge and its delegate machinery). Our stages
   are also re-timed alone (best of --repeat). Peak memory is the process's resident set, sampled every 10 ms.
   Goals: our stages <= 10% of the end-to-end time at every size; 4x the nodes <= 4.5x our stages' time.
3. Whole flows (--flows): ExecuTorch's backend-suite 2-layer quantizable LSTM and the garden's largest convolutional
   graph (densenet121), each quantized with its own flow's quantizer on the same batches and lowered: ours
   (NeutronQuantizer + NeutronPartitioner) vs XNNPACK's (XNNPACKQuantizer + XnnpackPartitioner) in one process.
   Goal: our quantize + lower <= 1.2x XNNPACK's.

Quantization uses a MinMax activation observer and one calibration batch (same graph as the default histogram
observer, only the qparams' values differ), so the big chains build in reasonable time.

    python bench/lowering.py                         # everything (about an hour on 2 cores)
    python bench/lowering.py --blocks 250 --skip-mobilenet
    python bench/lowering.py --skip-chains --repeat 5
    python bench/lowering.py --blocks 1000 --skip-mobilenet --profile   # cProfile our stages
    python bench/lowering.py --skip-mobilenet --skip-chains --flows lstm,densenet121

Writes bench/results/lowering.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import dataclasses
import io
import json
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
CHAIN_BLOCKS = (250, 1000, 4000)
SHARE_GOAL = 0.10
GROWTH_GOAL = 4.5
RATIO_GOAL = 1.0
_PAGE = os.sysconf("SC_PAGE_SIZE")


# -- torch.export's quadratic placeholder loop ---------------------------------------------------------------------


def _populate_param_buffer_metadata_linearly(params_buffers_to_node_meta: dict[str, Any], gm: Any,
                                             new_sig: Any) -> None:
    """torch._export.utils._populate_param_buffer_metadata_to_new_gm, same result, in linear time.

    The original rebuilds the signature's inputs_to_parameters / inputs_to_buffers dicts for every placeholder, so
    run_decompositions (called by to_edge) is quadratic in the number of parameters: at 4,000 conv blocks (16,000
    placeholders) it ran for over an hour. This builds each dict once.
    """
    for metadata in params_buffers_to_node_meta.values():
        metadata.pop("nn_module_stack", None)
        metadata.pop("stack_trace", None)
    lookups = (new_sig.inputs_to_parameters, new_sig.inputs_to_buffers)
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        for lookup in lookups:
            name = lookup.get(node.target)
            if name is not None and name in params_buffers_to_node_meta:
                node.meta.update(params_buffers_to_node_meta[name])


def _patch_torch_signature_loop() -> None:
    import torch.export._trace
    import torch.export.exported_program

    for module in (torch.export.exported_program, torch.export._trace):
        module._populate_param_buffer_metadata_to_new_gm = _populate_param_buffer_metadata_linearly


# -- measuring ---------------------------------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * _PAGE


class PeakMemory:
    """The peak resident set size of this process while the context is open (sampled every 10 ms)."""

    def __init__(self) -> None:
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss())

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = _rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


class StageTimes:
    """Wall time spent in our own stages while installed (class-level wrappers, restored on exit)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(("passes", "ops_to_not_decompose", "partition", "trial",
                                                        "preprocess"), 0.0)
        self.partition_inputs: list[tuple[Any, dict[str, torch.Tensor]]] = []
        self.preprocess_inputs: list[tuple[Any, list[Any]]] = []
        self.capture = False
        self._restore: list[Callable[[], None]] = []

    def _wrap(self, owner: Any, name: str, stage: str, before: Callable[..., None] | None = None,
              static: bool = False) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if before is not None:
                before(*args)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        setattr(owner, name, staticmethod(timed) if static else timed)
        self._restore.append(lambda: setattr(owner, name, staticmethod(original) if static else original))

    def __enter__(self) -> StageTimes:
        import neutron_backend.partitioner as partitioner_module
        import neutron_backend.passes as passes_module
        from neutron_backend.backend import NeutronBackend
        from neutron_backend.partitioner import NeutronPartitioner

        def keep_partition_input(partitioner: Any, program: Any) -> None:
            if self.capture:
                self.partition_inputs.append((_copy_program(program), dict(partitioner._seen_constants)))

        def keep_preprocess_input(program: Any, specs: Any) -> None:
            if self.capture:
                self.preprocess_inputs.append((program, specs))

        self._wrap(passes_module, "run_all", "passes")
        self._wrap(NeutronPartitioner, "ops_to_not_decompose", "ops_to_not_decompose")
        self._wrap(NeutronPartitioner, "partition", "partition", before=keep_partition_input)
        self._wrap(partitioner_module, "try_partition", "trial")
        self._wrap(NeutronBackend, "preprocess", "preprocess", before=keep_preprocess_input, static=True)
        return self

    def __exit__(self, *exc: object) -> None:
        for restore in reversed(self._restore):
            restore()

    @property
    def ours(self) -> float:
        """Our stages during lowering plus our passes (trial conversions are part of partition)."""
        return sum(v for k, v in self.seconds.items() if k != "trial")


def _copy_program(program: Any) -> Any:
    """A deep copy of an exported program whose state dict and constants (fake or real) are shared, not copied."""
    shared = [*program.state_dict.values(), *program.constants.values()]
    return copy.deepcopy(program, memo={id(tensor): tensor for tensor in shared})


def chain(blocks: int) -> nn.Module:
    """`blocks` x (Conv2d(8, 8, 3, padding=1) + ReLU), seeded."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(blocks):
        layers += [nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def quantize(model: nn.Module, example: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    """NeutronQuantizer with a MinMax activation observer, calibrated on the example batch."""
    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from neutron_backend.quantizer import NeutronQuantizer
    from neutron_backend.quantizer.config import get_neutron_quantization_config

    config = get_neutron_quantization_config()
    config = dataclasses.replace(
        config, activation=dataclasses.replace(config.activation, observer_or_fake_quant_ctr=MinMaxObserver))
    quantizer = NeutronQuantizer("imxrt700").set_global(config)
    prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    with torch.no_grad():
        prepared(*example)
    return convert_pt2e(prepared)


def _neutron_partitioner() -> Any:
    from neutron_backend.compile_spec import generate_neutron_compile_spec
    from neutron_backend.partitioner import NeutronPartitioner

    return NeutronPartitioner(generate_neutron_compile_spec("imxrt700"))


def _delegated_nodes(edge: Any) -> int:
    """call_function nodes inside the delegates of a lowered program."""
    from executorch.exir.lowered_backend_module import LoweredBackendModule

    modules = [m for m in edge.exported_program().graph_module.children() if isinstance(m, LoweredBackendModule)]
    return sum(1 for m in modules for n in m.original_module.graph.nodes if n.op == "call_function")


# -- MobileNetV2 -------------------------------------------------------------------------------------------------


def _mobilenet() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from neutron_backend.models import get_model

    return get_model("mobilenet_v2")


def measure_mobilenet(repeat: int) -> dict:
    import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize for to_executorch)
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model, example = _mobilenet()
    start = time.perf_counter()
    with StageTimes() as quantize_times:
        quantized = quantize(model, example)
    quantize_s = time.perf_counter() - start
    exported = torch.export.export(quantized, example)
    runs: dict[str, list[dict]] = {"neutron": [], "xnnpack": []}
    for _ in range(repeat):
        for name, make in (("neutron", _neutron_partitioner), ("xnnpack", XnnpackPartitioner)):
            program = copy.deepcopy(exported)
            partitioner = make()
            with StageTimes() as times:
                start = time.perf_counter()
                edge = to_edge_transform_and_lower(program, partitioner=[partitioner])
                lower_s = time.perf_counter() - start
                delegated = _delegated_nodes(edge)
                start = time.perf_counter()
                pte = edge.to_executorch().buffer
                to_executorch_s = time.perf_counter() - start
            run = dict(lower_s=lower_s, to_executorch_s=to_executorch_s, total_s=lower_s + to_executorch_s,
                       delegated_nodes=delegated, pte_bytes=len(pte))
            if name == "neutron":
                run["stages_s"] = {k: round(v, 4) for k, v in times.seconds.items() if k != "passes"}
                run["partitions"] = partitioner.report.num_partitions
            runs[name].append(run)
            print(json.dumps({name: run}), flush=True)
    median = {name: statistics.median(r["total_s"] for r in rows) for name, rows in runs.items()}
    return dict(quantize_s=round(quantize_s, 2), passes_s=round(quantize_times.seconds["passes"], 4), runs=runs,
                median_total_s={k: round(v, 2) for k, v in median.items()},
                ratio=round(median["neutron"] / median["xnnpack"], 3))


# -- whole flows: ExecuTorch's suite LSTM and the garden's largest model -------------------------------------------

FLOW_MODELS = ("lstm", "densenet121")
FLOW_RATIO_GOAL = 1.2


class SuiteLSTM(nn.Module):
    """ExecuTorch's backend suite LSTM case (operators/test_lstm.py, quantized flows): torch.nn.quantizable's LSTM,
    2 layers, input 64, hidden 32, batch first, returning the output sequence."""

    def __init__(self) -> None:
        super().__init__()
        from torch.nn.quantizable.modules.rnn import LSTM

        self.lstm = LSTM(input_size=64, hidden_size=32, num_layers=2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]


def _flow_model(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[tuple[torch.Tensor, ...]]]:
    """(model, example inputs, calibration batches shared by both flows)."""
    from neutron_backend.quantizer.calibration import random_batches

    if name == "lstm":
        generator = torch.Generator().manual_seed(0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = SuiteLSTM().eval()
        example = (torch.rand(1, 10, 64, generator=generator) * 10,)  # the suite's input
        return model, example, [example, *[(torch.rand(1, 10, 64, generator=generator) * 10,) for _ in range(4)]]
    from neutron_backend.models import torchvision_garden

    model, example = torchvision_garden.build(name)
    return model, example, [example, *random_batches(example, 4, seed=1)]


def measure_flow(name: str) -> dict:
    """Our quantize + lower (+ to_executorch) and XNNPACK's on the same float model and batches, in this process;
    our stages timed inside (StageTimes)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from garden import lower_ours, lower_xnnpack

    model, example, batches = _flow_model(name)
    nodes = sum(1 for n in torch.export.export(model, example).graph.nodes if n.op == "call_function")
    with StageTimes() as times:
        ours = lower_ours(copy.deepcopy(model), example, batches, run_host=False)
    ours["stages_s"] = {k: round(v, 3) for k, v in times.seconds.items()}
    xnnpack = lower_xnnpack(copy.deepcopy(model), example, batches)
    total = {flow: row["quantize_s"] + row["lower_s"] for flow, row in (("ours", ours), ("xnnpack", xnnpack))}
    return dict(model=name, exported_nodes=nodes, ours=ours, xnnpack=xnnpack,
                quantize_plus_lower_s={k: round(v, 2) for k, v in total.items()},
                ratio=round(total["ours"] / total["xnnpack"], 3))


# -- conv chains -------------------------------------------------------------------------------------------------


def _best(function: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def measure_chain(blocks: int, repeat: int, profile: bool) -> dict:
    from executorch.exir import to_edge_transform_and_lower

    from neutron_backend.partitioner import NeutronPartitioner

    example = (torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(0)),)
    with StageTimes() as quantize_times, PeakMemory() as quantize_memory:
        start = time.perf_counter()
        quantized = quantize(chain(blocks), example)
        quantize_s = time.perf_counter() - start
    exported = torch.export.export(quantized, example)
    nodes = sum(1 for n in exported.graph.nodes if n.op == "call_function")
    partitioner = _neutron_partitioner()
    with StageTimes() as times, PeakMemory() as memory:
        times.capture = True
        start = time.perf_counter()
        edge = to_edge_transform_and_lower(exported, partitioner=[partitioner])
        lower_s = time.perf_counter() - start
    stages = dict(times.seconds, passes=quantize_times.seconds["passes"])
    ours = sum(v for k, v in stages.items() if k != "trial")
    # Our stages again on their own, best of `repeat`, on the programs they saw inside the run above.
    (fake_program, values), = times.partition_inputs
    spec = partitioner.delegation_spec.compile_specs

    def partition_again() -> None:
        NeutronPartitioner(spec, post_quantization_state_dict=values).partition(_copy_program(fake_program))

    def preprocess_again() -> None:
        from neutron_backend.backend import NeutronBackend

        for program, specs in times.preprocess_inputs:
            NeutronBackend.preprocess(program, specs)

    copy_s = _best(lambda: _copy_program(fake_program), repeat)
    alone = dict(passes_s=stages["passes"],
                 ops_to_not_decompose_s=_best(lambda: _neutron_partitioner().ops_to_not_decompose(exported), repeat),
                 partition_s=max(0.0, _best(partition_again, repeat) - copy_s),
                 preprocess_s=_best(preprocess_again, repeat))
    alone["ours_s"] = sum(alone.values())
    profile_text = None
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        partition_again()
        preprocess_again()
        profiler.disable()
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(30)
        profile_text = stream.getvalue()
    return dict(blocks=blocks, nodes=nodes, edge_nodes=sum(1 for n in fake_program.graph.nodes
                                                          if n.op == "call_function"),
                delegated_nodes=_delegated_nodes(edge), partitions=partitioner.report.num_partitions,
                quantize_s=round(quantize_s, 2), lower_s=round(lower_s, 2),
                stages_s={k: round(v, 4) for k, v in stages.items()}, ours_s=round(ours, 4),
                executorch_s=round(lower_s - (ours - stages["passes"]), 2),
                share=round(ours / (lower_s + stages["passes"]), 5),
                alone_s={k: round(v, 4) for k, v in alone.items()},
                peak_rss_mb=dict(quantize=round(quantize_memory.peak / 2**20), lower=round(memory.peak / 2**20),
                                 lower_increase=round((memory.peak - memory.start) / 2**20)),
                max_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                profile=profile_text)


# -- driver ------------------------------------------------------------------------------------------------------


def _in_subprocess(args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run([sys.executable, __file__, *args, "--_out", str(out)], check=True, cwd=ROOT)
        return json.loads(out.read_text())


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> dict:
    from importlib.metadata import version

    return dict(nproc=os.cpu_count(), python=platform.python_version(), torch=torch.__version__,
                executorch=version("executorch"), platform=platform.platform(),
                commit=_git("rev-parse", "--short", "HEAD"),
                library_modified=bool(_git("status", "--porcelain", "--", "neutron_backend")),
                load_average=[round(x, 2) for x in os.getloadavg()])


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def write(result: dict) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "lowering.json").write_text(json.dumps(result, indent=2) + "\n")
    info = result["machine"]
    lines = ["# Lowering speed", "", __doc__.split("\n\n", 1)[1].split("\n\n    python")[0].strip(), "",
             f"Command: `{result['command']}`", "",
             f"Machine: {info['nproc']} CPUs (shared; load average {info['load_average']} at the end), Python "
             f"{info['python']}, torch {info['torch']}, executorch {info['executorch']}, {info['platform']}; "
             f"commit {info['commit']}{' with local changes to neutron_backend/' if info['library_modified'] else ''}",
             ""]
    if not result.get("stock_torch"):
        lines += ["torch.export's `_populate_param_buffer_metadata_to_new_gm` (inside `run_decompositions`, which "
                  "`to_edge` calls) rebuilds two dicts of the graph signature per placeholder, quadratic in the "
                  "number of parameters: a 4,000-block chain did not get through it in over an hour. These runs "
                  "replace it with a linear version of the same result (`--stock-torch` keeps it). That only speeds "
                  "up ExecuTorch's side, so our share below is, if anything, over-stated.", ""]
    mobilenet = result.get("mobilenet")
    if mobilenet:
        lines += ["## MobileNetV2: NeutronPartitioner vs XnnpackPartitioner on the same quantized program", "",
                  "End-to-end = `to_edge_transform_and_lower` + `to_executorch`, each run on a fresh copy of the "
                  "exported quantized program, runs alternating.", "",
                  "| partitioner | run | lower (s) | to_executorch (s) | end-to-end (s) | delegated nodes | "
                  ".pte bytes |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, runs in mobilenet["runs"].items():
            for number, run in enumerate(runs, 1):
                lines.append(f"| {name} | {number} | {run['lower_s']:.2f} | {run['to_executorch_s']:.2f} | "
                             f"{run['total_s']:.2f} | {run['delegated_nodes']} | {run['pte_bytes']} |")
        ratio = mobilenet["ratio"]
        lines += ["", f"Median end-to-end: Neutron {mobilenet['median_total_s']['neutron']:.2f} s, XNNPACK "
                      f"{mobilenet['median_total_s']['xnnpack']:.2f} s: **ratio {ratio:.3f}x** "
                      f"(goal <= {RATIO_GOAL:.1f}x: {_verdict(ratio <= RATIO_GOAL)}).", "",
                  "Our stages inside each Neutron run (s): " + "; ".join(
                      ", ".join(f"{k} {v:.3f}" for k, v in run["stages_s"].items())
                      for run in mobilenet["runs"]["neutron"]) + ".", ""]
    flows = result.get("flows")
    if flows:
        lines += ["## Whole flows: ours vs XNNPACK on the same float model", "",
                  "Each flow quantizes with its own quantizer on the same 5 calibration batches (the suite's LSTM: "
                  "its input `rand(1, 10, 64) * 10` and 4 more like it), then `to_edge_transform_and_lower` + "
                  "`to_executorch`; lower = both. `ours` stages: our passes, ops_to_not_decompose, partition (incl. "
                  "trial conversions), preprocess.", "",
                  "| model | exported nodes | quantize s (ours / XNNPACK) | lower s (ours / XNNPACK) | "
                  "quantize + lower s (ours / XNNPACK) | ratio | partitions (ours / XNNPACK) | our stages (s) |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for row in flows:
            ours, xnn = row["ours"], row["xnnpack"]
            if "error" in ours or "error" in xnn:
                error = ours.get("error") or xnn.get("error")
                lines.append(f"| {row['model']} | {row['exported_nodes']} | error: {error} | | | | | |")
                continue
            total = row["quantize_plus_lower_s"]
            lines.append(f"| {row['model']} | {row['exported_nodes']} | {ours['quantize_s']:.1f} / "
                         f"{xnn['quantize_s']:.1f} | {ours['lower_s']:.1f} / {xnn['lower_s']:.1f} | "
                         f"{total['ours']:.1f} / {total['xnnpack']:.1f} | **{row['ratio']:.2f}x** "
                         f"({_verdict(row['ratio'] <= FLOW_RATIO_GOAL)}, goal <= {FLOW_RATIO_GOAL}x) | "
                         f"{ours['partitions']} / {xnn['partitions']} | "
                         + ", ".join(f"{k} {v:.2f}" for k, v in ours["stages_s"].items()) + " |")
        lines.append("")
        runs = [row["run"] for row in flows if "run" in row]
        if runs:
            lines += ["Each row is its own run (both flows in one process): "
                      + "; ".join(f"{row['model']}: `{row['run']['command']}`, commit {row['run']['commit']}, load "
                                  f"average {row['run']['load_average']} after it" for row in flows if "run" in row)
                      + ".", ""]
    chains = result.get("chains")
    if chains:
        lines += ["## Conv chains: our stages next to ExecuTorch's", "",
                  "`ours` = our passes (during quantization) + ops_to_not_decompose + partition (incl. trial "
                  "conversions) + preprocess; `ExecuTorch` = the rest of `to_edge_transform_and_lower`; share = "
                  "ours / (lowering + our passes). `ours alone` = the same stages re-timed on their own (passes "
                  "as in the run), best of the repeats, on the programs they saw in the run. Peak RSS sampled "
                  "during quantization and during lowering.", "",
                  "| blocks | edge nodes | delegated | lowering (s) | ExecuTorch (s) | passes | ops_to_not_decompose | "
                  "partition (trial) | preprocess | ours (s) | share | ours alone (s) | "
                  "peak RSS quantize / lower (MB) |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in chains:
            s = row["stages_s"]
            lines.append(
                f"| {row['blocks']} | {row['edge_nodes']} | {row['delegated_nodes']} | {row['lower_s']:.1f} | "
                f"{row['executorch_s']:.1f} | {s['passes']:.3f} | {s['ops_to_not_decompose']:.3f} | "
                f"{s['partition']:.3f} ({s['trial']:.3f}) | {s['preprocess']:.3f} | {row['ours_s']:.3f} | "
                f"{100 * row['share']:.2f}% | {row['alone_s']['ours_s']:.3f} | {row['peak_rss_mb']['quantize']} / "
                f"{row['peak_rss_mb']['lower']} |")
        share_met = all(row["share"] <= SHARE_GOAL for row in chains)
        lines += ["", f"Our share <= {100 * SHARE_GOAL:.0f}% at every size: {_verdict(share_met)} "
                      f"(largest {100 * max(r['share'] for r in chains):.2f}%)."]
        for small, big in zip(chains, chains[1:], strict=False):
            nodes_ratio = big["edge_nodes"] / small["edge_nodes"]
            growth = big["ours_s"] / small["ours_s"]
            alone = big["alone_s"]["ours_s"] / small["alone_s"]["ours_s"]
            lines.append(f"{small['blocks']} -> {big['blocks']} blocks ({nodes_ratio:.2f}x the edge nodes): our "
                         f"stages take {alone:.2f}x the time alone ({growth:.2f}x in the run; goal <= {GROWTH_GOAL}x "
                         f"for 4x the nodes, judged on the best-of-repeats times: {_verdict(alone <= GROWTH_GOAL)}).")
        profiled = [row for row in chains if row.get("profile")]
        for row in profiled:
            lines += ["", f"cProfile of our stages alone (partition + preprocess) at {row['blocks']} blocks, top 30 "
                          "by cumulative time:", "", "```", row["profile"].strip(), "```"]
    (RESULTS_DIR / "lowering.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=list(CHAIN_BLOCKS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-mobilenet", action="store_true")
    parser.add_argument("--skip-chains", action="store_true")
    parser.add_argument("--flows", default=",".join(FLOW_MODELS),
                        help=f"whole-flow cases, comma-separated (default {','.join(FLOW_MODELS)}; '' for none)")
    parser.add_argument("--profile", action="store_true", help="cProfile our stages on the largest chain")
    parser.add_argument("--stock-torch", action="store_true",
                        help="keep torch.export's quadratic placeholder loop (by default it is replaced with a linear "
                             "one of the same result, which only makes ExecuTorch's share faster)")
    parser.add_argument("--_chain", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_mobilenet", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_flow", help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._chain or args._mobilenet or args._flow:
        if not args.stock_torch:
            _patch_torch_signature_loop()
        if args._flow:
            measured = measure_flow(args._flow)
        else:
            measured = (measure_chain(args._chain, args.repeat, args.profile) if args._chain
                        else measure_mobilenet(args.repeat))
        Path(args._out).write_text(json.dumps(measured))
        return 0
    command = "python " + " ".join(["bench/lowering.py", *(argv if argv is not None else sys.argv[1:])])
    result: dict[str, Any] = dict(command=command, stock_torch=args.stock_torch)
    previous = RESULTS_DIR / "lowering.json"
    if previous.exists():  # parts this run skips keep their last results
        kept = json.loads(previous.read_text())
        skipped = {"mobilenet": args.skip_mobilenet, "chains": args.skip_chains, "flows": not args.flows}
        result.update({key: kept[key] for key, skip in skipped.items() if skip and key in kept})
        # Flow cases this run does not measure keep their last rows (each row compares both flows in one process).
        rerun = set(filter(None, args.flows.split(",")))
        if rerun:
            result["flows"] = [row for row in kept.get("flows", []) if row["model"] not in rerun]
    stock = ["--stock-torch"] if args.stock_torch else []
    if not args.skip_mobilenet:
        result["mobilenet"] = _in_subprocess(["--_mobilenet", "--repeat", str(args.repeat), *stock])
    for name in filter(None, args.flows.split(",")):
        row = _in_subprocess(["--_flow", name, *stock])
        machine = _machine()
        row["run"] = dict(command=command, commit=machine["commit"], load_average=machine["load_average"])
        result.setdefault("flows", []).append(row)
        print(json.dumps(result["flows"][-1]), flush=True)
        result["flows"].sort(key=lambda row: FLOW_MODELS.index(row["model"]) if row["model"] in FLOW_MODELS
                             else len(FLOW_MODELS))
        result["machine"] = _machine()
        write(result)
    if not args.skip_chains:
        sizes = sorted(args.blocks)
        result["chains"] = []
        for blocks in sizes:
            extra = ["--profile"] if args.profile and blocks == sizes[-1] else []
            row = _in_subprocess(["--_chain", str(blocks), "--repeat", str(args.repeat), *extra, *stock])
            print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
            result["chains"].append(row)
            result["machine"] = _machine()
            write(result)  # as each size finishes, so a long run leaves its results so far
    result["machine"] = _machine()
    write(result)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
