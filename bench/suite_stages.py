"""One case of ExecuTorch's backend operator test suite, stage by stage, through our flow and XNNPACK's.

Runs the case twice, one pytest process after the other on the same machine: with our flow
(``tests/neutron_suite_flow.py``) and with the suite's own XNNPACK flow (static int8, per-tensor weights), both
timed by ``tests/suite_stage_timing.py``. Writes bench/results/suite_stages_<case>.{json,md}: per model the case
lowers, the seconds of each stage, and how much of the lowering is ExecuTorch's conversion to the edge dialect
(``run_decompositions`` and the edge passes), which runs on the whole graph before any partitioner looks at it.
No time limit is applied: the point is where the time goes.

    python bench/suite_stages.py test_lstm_seq_lengths
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backend_suite import RESULTS_DIR, ROOT, TESTS_DIR, _git_commit, suite_dir  # noqa: E402

XNNPACK_FLOW = "xnnpack_static_int8_per_tensor"
STAGES = ("quantize", "export", "to_edge_transform_and_lower", "to_executorch", "serialize")
EDGE = "executorch_edge_conversion"


def run_case(case: str, ours: bool, times: Path) -> float:
    """Runs `case` of the suite's operator tests with our flow or XNNPACK's; returns the wall seconds."""
    suite = suite_dir()
    plugins = ["-p", "neutron_suite_flow"] if ours else []
    selection = case if ours else f"{case} and {XNNPACK_FLOW}"
    command = [sys.executable, "-m", "pytest", "-c", os.devnull, "--rootdir", str(suite), *plugins,
               "-p", "suite_stage_timing", "-p", "no:cacheprovider", "-q", "-W", "ignore",
               str(suite / "operators"), "-k", selection]
    # No case limit: our flow's plugin stops a case at $NEUTRON_SUITE_TIMEOUT; a day is beyond any case.
    env = dict(os.environ, SUITE_STAGE_TIMES=str(times), NEUTRON_SUITE_TIMEOUT=str(24 * 3600),
               PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])))
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=ROOT, check=False)
    return time.perf_counter() - started


def summarize(records: list[dict]) -> dict:
    """Per flow: the case's seconds and outcome, and per model its stage seconds and edge-conversion seconds."""
    flows: dict[str, dict] = {}
    for record in records:
        flow = flows.setdefault(record["flow"], {"models": collections.defaultdict(dict)})
        if record["stage"] == "case":
            flow["case_seconds"], flow["passed"] = record["seconds"], record["passed"]
            continue
        model = flow["models"][record["model"]]
        model[record["stage"]] = model.get(record["stage"], 0.0) + record["seconds"]
        model[EDGE] = model.get(EDGE, 0.0) + record[EDGE]
    for flow in flows.values():
        flow["models"] = [flow["models"][k] for k in sorted(flow["models"])]
    return flows


def write_markdown(case: str, flows: dict, path: Path) -> None:
    import executorch
    import torch

    lines = [f"# `{case}`, stage by stage: our flow and XNNPACK's", "",
             f"Command: `python bench/suite_stages.py {case}`", "",
             f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}, "
             f"executorch {getattr(executorch, '__version__', '1.5.1')}; commit {_git_commit()}. The two flows ran "
             "one after the other, each in its own pytest process, with no time limit.", "",
             "Seconds per stage of each model the case lowers. *ExecuTorch edge conversion* is the part of "
             "`to_edge_transform_and_lower` spent in `run_decompositions` and `_generate_edge_program` "
             "(ExecuTorch's passes over the whole graph before partitioning): the same work for every backend. "
             "*Other* is the rest of the case: the eager check, building the tester, running both programs and "
             "comparing.", ""]
    header = ["flow", "model", *STAGES, "of which ExecuTorch edge conversion", "other", "case total", "passed"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 3) + "---|"]
    for name, flow in flows.items():
        staged = 0.0
        for number, model in enumerate(flow["models"]):
            staged += sum(model.get(stage, 0.0) for stage in STAGES)
            cells = [f"{model.get(stage, 0.0):.1f}" for stage in STAGES]
            lines.append(f"| {name} | {number + 1} | " + " | ".join(cells) + f" | {model.get(EDGE, 0.0):.1f} | | | |")
        total = flow.get("case_seconds", 0.0)
        edge = sum(model.get(EDGE, 0.0) for model in flow["models"])
        sums = [f"{sum(m.get(stage, 0.0) for m in flow['models']):.1f}" for stage in STAGES]
        lines.append(f"| **{name}** | **all** | " + " | ".join(sums) +
                     f" | **{edge:.1f}** | {total - staged:.1f} | **{total:.1f}** | {flow.get('passed')} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", help="a suite case name, e.g. test_lstm_seq_lengths")
    parser.add_argument("--ours-only", action="store_true", help="skip the XNNPACK run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        times = Path(tmp) / "times.jsonl"
        run_case(args.case, True, times)
        if not args.ours_only:
            run_case(args.case, False, times)
        records = [json.loads(line) for line in times.read_text(encoding="utf-8").splitlines() if line.strip()]
    flows = summarize(records)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = RESULTS_DIR / f"suite_stages_{args.case}"
    stem.with_suffix(".json").write_text(json.dumps({"case": args.case, "flows": flows}, indent=2) + "\n",
                                         encoding="utf-8")
    write_markdown(args.case, flows, stem.with_suffix(".md"))
    print(stem.with_suffix(".md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
