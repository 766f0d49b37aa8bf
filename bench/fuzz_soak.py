"""Fuzz soak: many random graphs (tests/fuzz_graphs.py) through quantize -> lower -> run, the property of
tests/test_fuzz.py checked on each. Graph N is drawn from seed N, so any failure is reproduced with
`python bench/fuzz_soak.py --seeds N N+1`.

Each graph runs in this process with a time limit (a graph that takes longer counts as a hang); results are
appended to bench/results/fuzz_soak.jsonl as they come (a rerun skips seeds already there unless --fresh), and
bench/results/fuzz_soak.md summarises them: outcomes, partitions, delegated operators, errors against the per-op
tolerance, every failure with its seed.

    python bench/fuzz_soak.py                  # seeds 0 .. 999
    python bench/fuzz_soak.py --seeds 1000 2000
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
RAW = RESULTS_DIR / "fuzz_soak.jsonl"


class GraphTimeout(Exception):
    """A graph took longer than the time limit."""


def _alarm(signum: int, frame: Any) -> None:
    raise GraphTimeout("the graph did not finish within the time limit")


def run_seed(seed: int, limit: int) -> dict:
    import torch
    from fuzz_graphs import SeededDraw, check_graph, draw_case

    case = draw_case(SeededDraw(seed))
    record: dict[str, Any] = {"seed": seed, "graph": str(case), "steps": [s.name for s in case.steps]}
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    try:
        with tempfile.TemporaryDirectory() as directory, torch.no_grad():
            outcome = check_graph(case, Path(directory))
        record.update(status="ok", partitions=outcome.num_partitions, delegated=outcome.delegated,
                      operators=outcome.operators, max_error_steps=outcome.max_error_steps,
                      tolerance_steps=round(outcome.tolerance_steps, 4), delegated_targets=outcome.delegated_targets)
    except AssertionError as error:
        record.update(status="mismatch", error=str(error)[:3000])
    except GraphTimeout as error:
        record.update(status="hang", error=str(error))
    except Exception as error:  # every other exception is a failure of the flow; keep going
        record.update(status="error", error=f"{type(error).__name__}: {error}"[:3000],
                      traceback=traceback.format_exc()[-3000:])
    finally:
        signal.alarm(0)
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def summarize(records: list[dict], command: str) -> str:
    import torch

    statuses = collections.Counter(r["status"] for r in records)
    ok = [r for r in records if r["status"] == "ok"]
    partitions = collections.Counter(r["partitions"] for r in ok)
    targets = collections.Counter(t for r in ok for t in r["delegated_targets"])
    drawn = collections.Counter(name for r in records for name in r["steps"])
    ratios = [r["max_error_steps"] / r["tolerance_steps"] for r in ok if r["partitions"]]
    lines = [
        "# Fuzz soak",
        "",
        "Random graphs from `tests/fuzz_graphs.py` (1-4 operators over a 1xCxHxW activation, C <= 16, H, W <= 12, "
        "random parameters, DAGs through binary operators), each quantized with NeutronQuantizer (3 seeded "
        "calibration batches), lowered with NeutronPartitioner, run on the host and compared with the quantized "
        "model on 2 other inputs. Property: no exception, no hang, error within the per-op tolerance (one output "
        "step per requantizing operator, propagated by the model's local gain), host shim == pure-Python emulator "
        "bit for bit.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPUs (shared), Python {platform.python_version()}, torch {torch.__version__}; "
        f"commit {_git_commit()}; {sum(r['seconds'] for r in records) / 3600:.2f} h of graph time.",
        "",
        "## Outcomes",
        "",
        "| outcome | graphs |",
        "|---|---:|",
    ]
    for status in ("ok", "mismatch", "error", "hang"):
        lines.append(f"| {status} | {statuses.get(status, 0)} |")
    lines += [f"| **total** | **{len(records)}** |", ""]
    if ok:
        delegated = sum(r["delegated"] for r in ok)
        operators = sum(r["operators"] for r in ok)
        lines += [
            "Partitions per graph: " + ", ".join(f"{k}: {v}" for k, v in sorted(partitions.items())) + ".",
            f"Operators delegated: {delegated} of {operators} ({100 * delegated / max(1, operators):.1f}%).",
            f"Graphs with a delegate: max error {max((r['max_error_steps'] for r in ok), default=0):.1f} steps; "
            f"error / tolerance: median {statistics.median(ratios) if ratios else 0:.3f}, max "
            f"{max(ratios, default=0):.3f}; exactly equal to the reference: "
            f"{sum(1 for r in ok if r['partitions'] and r['max_error_steps'] == 0)} of {len(ratios)}.",
            "",
            "## Operators", "",
            "| operator | steps drawn | graphs where delegated |", "|---|---:|---:|",
        ]
        for name in sorted(drawn | targets):
            lines.append(f"| {name} | {drawn.get(name, 0)} | {targets.get(name, 0)} |")
        lines.append("")
    failures = [r for r in records if r["status"] != "ok"]
    lines += ["## Failures", ""]
    if not failures:
        lines.append("None.")
    for record in failures:
        error = record["error"].replace("\n", " ")[:400]
        lines.append(f"- seed {record['seed']} ({record['status']}): `{record['graph']}`: {error}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs=2, default=(0, 1000), metavar=("FIRST", "END"))
    parser.add_argument("--limit", type=int, default=300, help="seconds per graph before it counts as a hang")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results")
    parser.add_argument("--summary-only", action="store_true", help="rewrite the summary from the results file")
    args = parser.parse_args()

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    if args.fresh and RAW.exists():
        RAW.unlink()
    done = {json.loads(line)["seed"] for line in RAW.read_text().splitlines()} if RAW.exists() else set()
    if not args.summary_only:
        import logging

        logging.disable(logging.WARNING)  # expected fallback warnings; outcomes are recorded per graph
        for seed in range(*args.seeds):
            if seed in done:
                continue
            record = run_seed(seed, args.limit)
            with RAW.open("a", encoding="utf-8") as raw:
                raw.write(json.dumps(record) + "\n")
            print(json.dumps({k: record.get(k) for k in ("seed", "status", "seconds", "max_error_steps",
                                                             "tolerance_steps")}), flush=True)
    records = sorted((json.loads(line) for line in RAW.read_text().splitlines()), key=lambda r: r["seed"])
    command = "python " + " ".join(["bench/fuzz_soak.py", *sys.argv[1:]])
    (RESULTS_DIR / "fuzz_soak.md").write_text(summarize(records, command), encoding="utf-8")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "tests"))
    main()
