"""ExecuTorch's backend operator test suite through our int8 flow: every case and its outcome.

Runs all cases of ``executorch/backends/test/suite/operators`` (shipped in the executorch wheel) with the flow in
``tests/neutron_suite_flow.py`` (NeutronQuantizer, NeutronPartitioner, the host runtime), one pytest process, and
writes bench/results/backend_suite.{json,md}: how many cases (and subtests: a case may lower several models) ended
as a delegated success, an undelegated success, a clean skip, or a failure, with every failure listed.

    python bench/backend_suite.py                      # all cases (about an hour on 2 cores)
    python bench/backend_suite.py -k conv2d            # a pytest -k selection
    python bench/backend_suite.py --files test_add.py test_relu.py
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

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
TESTS_DIR = ROOT / "tests"
STATUSES = ("delegated", "undelegated", "skipped", "failed")
_UNSUPPORTED_PORTABLE = "Error: None"
SLOWEST = 8  # cases listed with their seconds: how close the run came to the limit


def suite_dir() -> Path:
    import executorch

    return Path(executorch.__path__[0]) / "backends" / "test" / "suite"


def run_suite(results: Path, files: list[str] | None = None, selection: str | None = None,
              timeout: int = 300) -> int:
    """Runs the suite cases (all, or `files` of the operators directory, or a -k `selection`) with our flow,
    appending one JSON record per case to `results`; returns pytest's exit code."""
    suite = suite_dir()
    targets = [str(suite / "operators" / f) for f in files] if files else [str(suite / "operators")]
    command = [sys.executable, "-m", "pytest", "-c", os.devnull, "--rootdir", str(suite), "-p", "neutron_suite_flow",
               "-p", "no:cacheprovider", "-q", "-W", "ignore", *targets]
    if selection:
        command += ["-k", selection]
    env = dict(os.environ, NEUTRON_SUITE_RESULTS=str(results), NEUTRON_SUITE_TIMEOUT=str(timeout),
               PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])))
    return subprocess.run(command, env=env, cwd=ROOT, check=False).returncode


def summarize(records: list[dict]) -> dict:
    """Outcome counts per case and per subtest, and the failures."""
    cases = collections.Counter(r["status"] for r in records)
    subtests = collections.Counter(s["result"] for r in records for s in r["subtests"])
    # A case skipped before any subtest ran (the suite's skip of a non-backend failure) counts as one skip.
    subtests["SKIPPED"] += sum(1 for r in records if r["status"] == "skipped" and not r["subtests"])
    failures = [r for r in records if r["status"] == "failed"]
    return {"cases": {s: cases.get(s, 0) for s in STATUSES}, "subtests": dict(sorted(subtests.items())),
            "failures": failures, "num_cases": len(records)}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_markdown(summary: dict, records: list[dict], command: str, seconds: float, path: Path) -> None:
    import executorch
    import torch

    version = getattr(executorch, "__version__", "1.5.1")
    lines = [
        "# ExecuTorch backend operator test suite, Neutron int8 flow",
        "",
        "Every case of `executorch/backends/test/suite/operators` (executorch wheel) run with "
        "`tests/neutron_suite_flow.py`: NeutronQuantizer (calibrated on the example inputs + 4 seeded batches "
        "drawn from their range), NeutronPartitioner "
        "(imxrt700), `to_executorch`, and the .pte run by ExecuTorch's pybindings with the host NeutronBackend "
        "(`neutron_backend.runtime.register()`), compared with the exported quantized model (suite tolerances "
        "atol=0.1, rtol=0.04, plus one output quantization step).",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}, "
        f"executorch {version}; commit {_git_commit()}; wall time {seconds / 60:.1f} min.",
        "",
        "## Cases",
        "",
        "| outcome | cases |",
        "|---|---:|",
    ]
    labels = {"delegated": "success, delegated", "undelegated": "success, nothing delegated",
              "skipped": "clean skip", "failed": "failure"}
    for status in STATUSES:
        lines.append(f"| {labels[status]} | {summary['cases'][status]} |")
    lines += [f"| **total** | **{summary['num_cases']}** |", "", "## Subtests (each lowered model of a case)", "",
              "| result | subtests |", "|---|---:|"]
    lines += [f"| {name} | {count} |" for name, count in summary["subtests"].items()]
    lines += [f"| **total** | **{sum(summary['subtests'].values())}** |", ""]
    skipped = [r for r in records if r["status"] == "skipped"]
    if skipped:
        reasons = collections.Counter((r["error"].splitlines() or [""])[0][:160] for r in skipped)
        lines += ["## Why cases were skipped", "", "| cases | reason |", "|---:|---|"]
        lines += [f"| {n} | {reason.replace('|', '/')} |" for reason, n in reasons.most_common()]
        lines += ["", f"\"{_UNSUPPORTED_PORTABLE}\" is the suite's own skip (its runner.py) of a case whose CPU part "
                  "holds an operator that ExecuTorch's portable kernels cannot run (conv3d, median, adaptive max "
                  "pooling, ...): nothing ran, on our side or the CPU's.", ""]
    slowest = sorted(records, key=lambda r: -r["seconds"])[:SLOWEST]
    lines += [f"## The {len(slowest)} slowest cases", "", "| case | seconds | outcome |", "|---|---:|---|"]
    lines += [f"| `{r['file']}::{r['case']}` | {r['seconds']:.1f} | {r['status']} |" for r in slowest]
    lines += ["", "## Failures", ""]
    if not summary["failures"]:
        lines.append("None.")
    for record in summary["failures"]:
        results = ", ".join(s["result"] for s in record["subtests"]) or "no subtest"
        error = next((s["error"] for s in record["subtests"] if s["error"]), record["error"])
        error = (error or "").replace("\n", " ")[:300]
        lines.append(f"- `{record['file']}::{record['case']}` ({results}): {error}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", nargs="*", help="operator test files (e.g. test_add.py); default: all")
    parser.add_argument("-k", dest="selection", help="pytest -k expression selecting cases")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per case before it counts as failed")
    parser.add_argument("--output", default="backend_suite", help="results name under bench/results/")
    parser.add_argument("--merge", action="store_true",
                        help="replace the cases of this run in the existing results (e.g. --files test_lstm.py "
                             "--timeout 1200 to rerun one file) instead of starting over")
    args = parser.parse_args()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "results.jsonl"
        run_suite(raw, args.files, args.selection, args.timeout)
        from neutron_suite_flow import read_results

        records = read_results(raw) if raw.exists() else []
    seconds = time.perf_counter() - started
    command = "python " + " ".join(["bench/backend_suite.py", *sys.argv[1:]])
    previous = RESULTS_DIR / f"{args.output}.json"
    if args.merge and previous.exists():
        earlier = json.loads(previous.read_text())
        rerun = {(r["file"], r["case"]) for r in records}
        records = [r for r in earlier["cases"] if (r["file"], r["case"]) not in rerun] + records
        command = f"{earlier['command']}`, then `{command}"
        seconds += earlier["seconds"]
    summary = summarize(records)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    previous.write_text(json.dumps({"summary": summary, "command": command, "seconds": seconds, "cases": records},
                                   indent=1))
    write_markdown(summary, records, command, seconds, RESULTS_DIR / f"{args.output}.md")
    print(json.dumps({"cases": summary["cases"], "subtests": summary["subtests"]}, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(TESTS_DIR))
    main()
