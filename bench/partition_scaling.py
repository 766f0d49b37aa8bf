"""How NeutronPartitioner.partition scales with graph size (goal: a 5,000-node edge graph in under 1 s).

Builds chains of Conv2d(8, 8, 3, padding=1) + ReLU blocks on a 1x8x8x8 input, quantizes them with
NeutronQuantizer, lowers them with `to_edge`, and times `to_edge` (once) and `partition` (best of --repeat, each on a
fresh deep copy of the edge program). Writes bench/results/partition_scaling.{json,md}.

Quantization is made cheap so the big chains build in reasonable time: the activation observer is MinMax instead of
the default histogram search (same graph structure, only the qparams' values differ), calibrated on one batch.

    python bench/partition_scaling.py                 # 100, 400, 834 (5,006 nodes), 1250 blocks
    python bench/partition_scaling.py --blocks 50 100 --profile
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
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOAL_NODES, GOAL_SECONDS = 5000, 1.0


def chain(blocks: int) -> nn.Module:
    """`blocks` x (Conv2d(8, 8, 3, padding=1) + ReLU), seeded."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(blocks):
        layers += [nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def quantize(model: nn.Module, example: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    """NeutronQuantizer with a MinMax activation observer, calibrated on one batch."""
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


def partition_once(edge_program, profile: cProfile.Profile | None = None):
    """Seconds to partition a deep copy of `edge_program`, and the partitioner."""
    from neutron_backend.compile_spec import generate_neutron_compile_spec
    from neutron_backend.partitioner import NeutronPartitioner

    program = copy.deepcopy(edge_program)
    partitioner = NeutronPartitioner(generate_neutron_compile_spec("imxrt700"))
    if profile is not None:
        profile.enable()
    start = time.perf_counter()
    partitioner.partition(program)
    elapsed = time.perf_counter() - start
    if profile is not None:
        profile.disable()
    return elapsed, partitioner


def measure(blocks: int, repeat: int, profile: bool) -> tuple[dict, str | None]:
    from executorch.exir import to_edge

    example = (torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(0)),)
    start = time.perf_counter()
    quantized = quantize(chain(blocks), example)
    quantize_s = time.perf_counter() - start
    exported = torch.export.export(quantized, example)
    start = time.perf_counter()
    edge_program = to_edge(exported).exported_program()
    to_edge_s = time.perf_counter() - start
    nodes = sum(1 for n in edge_program.graph.nodes if n.op == "call_function")
    times, partitioner = [], None
    for _ in range(repeat):
        elapsed, partitioner = partition_once(edge_program)
        times.append(elapsed)
    report = partitioner.report
    delegated = sum(e.delegated for e in report.nodes)
    profile_text = None
    if profile:
        profiler = cProfile.Profile()
        partition_once(edge_program, profiler)
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(25)
        profile_text = stream.getvalue()
    row = dict(blocks=blocks, nodes=nodes, quantize_s=round(quantize_s, 3), to_edge_s=round(to_edge_s, 3),
               partition_s=round(min(times), 4), partition_all_s=[round(t, 4) for t in times],
               partitions=report.num_partitions, delegated_nodes=delegated)
    print(json.dumps(row), flush=True)
    return row, profile_text


def _git(*args: str) -> str:
    repo = Path(__file__).resolve().parent.parent
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """The machine, library versions, and the code measured (commit, and whether the library had local edits)."""
    from importlib.metadata import version

    return dict(nproc=os.cpu_count(), python=platform.python_version(), torch=torch.__version__,
                executorch=version("executorch"), platform=platform.platform(), processor=platform.processor(),
                commit=_git("rev-parse", "--short", "HEAD"),
                library_modified=bool(_git("status", "--porcelain", "--", "neutron_backend")))


def write(rows: list[dict], command: str, info: dict, profile_text: str | None) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    big = [r for r in rows if r["nodes"] >= GOAL_NODES]
    goal_met = bool(big) and all(r["partition_s"] < GOAL_SECONDS for r in big)
    result = dict(command=command, machine=info, goal=f"{GOAL_NODES} nodes partition in < {GOAL_SECONDS} s",
                  goal_met=goal_met, rows=rows)
    (RESULTS_DIR / "partition_scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# NeutronPartitioner.partition scaling",
        "",
        "Chains of Conv2d(8, 8, 3, padding=1) + ReLU blocks on a 1x8x8x8 input, quantized with NeutronQuantizer "
        "(MinMax activation observer, one calibration batch). `nodes` = call_function nodes of the edge graph; "
        "`to_edge` timed once; `partition` = best of the runs on fresh deep copies.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {info['nproc']} CPUs, Python {info['python']}, torch {info['torch']}, executorch "
        f"{info['executorch']}, {info['platform']}; commit {info.get('commit', 'unknown')}"
        f"{' with local changes to neutron_backend/' if info.get('library_modified') else ''}",
        "",
        "| blocks | nodes | quantize (s) | to_edge (s) | partition (s) | partitions | delegated nodes |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['blocks']} | {r['nodes']} | {r['quantize_s']:.2f} | {r['to_edge_s']:.2f} | "
                     f"{r['partition_s']:.3f} | {r['partitions']} | {r['delegated_nodes']} |")
    lines += ["", f"Goal ({result['goal']}): {'met' if goal_met else 'NOT met'}."]
    if profile_text:
        lines += ["", f"cProfile of one partition of the largest graph ({rows[-1]['nodes']} nodes), top 25 by "
                      "cumulative time:", "", "```", profile_text.strip(), "```"]
    (RESULTS_DIR / "partition_scaling.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[100, 400, 834, 1250])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile one partition of the largest graph")
    args = parser.parse_args(argv)
    command = "python " + " ".join([os.path.relpath(__file__, Path.cwd()), *(argv or sys.argv[1:])])
    rows, profile_text = [], None
    for index, blocks in enumerate(sorted(args.blocks)):
        row, text = measure(blocks, args.repeat, args.profile and index == len(args.blocks) - 1)
        rows.append(row)
        profile_text = text or profile_text
    write(rows, command, machine(), profile_text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
