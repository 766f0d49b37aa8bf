"""Cross-quantizer soak: graphs of every registered operator quantized by XNNPACKQuantizer (per-channel and
per-tensor weights) and by hand with random qparams (tests/cross_quantizer.py), each lowered, run and checked:
no crash, every CPU node with a reason, every delegated result within its declared tolerance.

Graph N is (operator N mod #operators, quantizer (N // #operators) mod 3, seed N), so every operator meets every
quantizer kind within 3 x #operators graphs and `--graphs N N+1` reproduces one. Results are appended to
bench/results/cross_quantizer.jsonl as they come (a rerun skips graphs already there unless --fresh), and
bench/results/cross_quantizer.md summarises them: outcomes, the delegated share per quantizer kind and per operator,
every failure with its graph number.

    nice -n 10 python bench/cross_quantizer_soak.py --graphs 0 2000
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
RAW = RESULTS_DIR / "cross_quantizer.jsonl"
SUMMARY = RESULTS_DIR / "cross_quantizer.md"


class GraphTimeout(Exception):
    """A graph took longer than the time limit."""


def _alarm(signum: int, frame: Any) -> None:
    raise GraphTimeout("the graph did not finish within the time limit")


def run_graph(number: int, limit: int) -> dict:
    import torch
    from cross_quantizer import QUANTIZERS, check, draw, operator_names

    names = operator_names()
    operator = names[number % len(names)]
    quantizer = QUANTIZERS[(number // len(names)) % len(QUANTIZERS)]
    record: dict[str, Any] = {"graph": number, "operator": operator, "quantizer": quantizer}
    case = draw(number, operator, quantizer)
    if case is None:
        record.update(status="no shape")
        return record
    record["case"] = str(case)
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    try:
        with tempfile.TemporaryDirectory() as directory, torch.no_grad():
            outcome = check(case, Path(directory))
        record.update(status="ok", delegated=outcome.delegated, operators=outcome.operators,
                      max_error_steps=outcome.max_error_steps, tolerance_steps=outcome.tolerance_steps)
    except AssertionError as error:
        record.update(status="mismatch", error=str(error)[:3000])
    except GraphTimeout as error:
        record.update(status="hang", error=str(error))
    except Exception as error:  # a crash is a finding: record it with its traceback
        record.update(status="error", error="".join(traceback.format_exception(error))[-3000:])
    finally:
        signal.alarm(0)
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


def summarise(records: list[dict]) -> str:
    outcomes = collections.Counter(r["status"] for r in records)
    ran = [r for r in records if r["status"] != "no shape"]
    lines = ["# Cross-quantizer soak", "",
             "Graphs of one registered operator each (its tests/fuzz_graphs.py builder), quantized by "
             "XNNPACKQuantizer (symmetric config, per-channel or per-tensor weights) or by hand with random qparams "
             "(equal or unequal input/output, zero points at -128/127/0/random, scales 1e-4 to 10), lowered with "
             "NeutronPartitioner (imxrt700) and run on the host against the quantized model. Property: no crash, "
             "every CPU node with a reason, every result within the operator's declared requantizations (at least "
             "one output step).", "",
             f"Command: `nice -n 10 python bench/cross_quantizer_soak.py --graphs {min(r['graph'] for r in records)} "
             f"{max(r['graph'] for r in records) + 1}`", "",
             f"Machine: Python {platform.python_version()}, {platform.machine()}; commit {_commit()}; "
             f"{sum(r.get('seconds', 0) for r in ran) / 3600:.2f} h of graph time.", "",
             "## Outcomes", "", "| outcome | graphs |", "|---|---:|"]
    for status in ("ok", "mismatch", "error", "hang", "no shape"):
        lines.append(f"| {status} | {outcomes.get(status, 0)} |")
    lines += [f"| **total** | **{len(records)}** |", "", "## Delegated share", "",
              "| quantizer | graphs | operators delegated |", "|---|---:|---:|"]
    for quantizer in sorted({r["quantizer"] for r in ran}):
        done = [r for r in ran if r["quantizer"] == quantizer and r["status"] == "ok"]
        delegated, total = sum(r["delegated"] for r in done), sum(r["operators"] for r in done)
        share = f"{delegated} of {total} ({100 * delegated / total:.1f}%)" if total else "-"
        lines.append(f"| {quantizer} | {len(done)} | {share} |")
    lines += ["", "## Per operator (graphs ok / where delegated)", "", "| operator | xnnpack_per_channel | "
              "xnnpack_per_tensor | hand |", "|---|---|---|---|"]
    for operator in sorted({r["operator"] for r in ran}):
        cells = []
        for quantizer in ("xnnpack_per_channel", "xnnpack_per_tensor", "hand"):
            done = [r for r in ran if r["operator"] == operator and r["quantizer"] == quantizer]
            ok = [r for r in done if r["status"] == "ok"]
            cells.append(f"{len(ok)}/{len(done)} ok, {sum(r['delegated'] > 0 for r in ok)} delegated")
        lines.append(f"| {operator} | {' | '.join(cells)} |")
    failures = [r for r in ran if r["status"] != "ok"]
    lines += ["", "## Failures", ""]
    lines += [f"- graph {r['graph']} ({r['status']}): {r.get('case', r['operator'])}: "
              f"{r.get('error', '').splitlines()[0] if r.get('error') else ''}" for r in failures] or ["None."]
    return "\n".join(lines) + "\n"


def _commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    return result.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, nargs=2, default=(0, 2000), metavar=("FIRST", "END"))
    parser.add_argument("--limit", type=int, default=300, help="seconds per graph before it counts as a hang")
    parser.add_argument("--fresh", action="store_true", help="discard earlier results")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    import torch

    torch.set_num_threads(1)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    if args.fresh and RAW.exists():
        RAW.unlink()
    records = [json.loads(line) for line in RAW.read_text().splitlines()] if RAW.exists() else []
    done = {r["graph"] for r in records}
    with RAW.open("a") as raw:
        for number in range(*args.graphs):
            if number in done:
                continue
            record = run_graph(number, args.limit)
            records.append(record)
            raw.write(json.dumps(record) + "\n")
            raw.flush()
            SUMMARY.write_text(summarise(records))
            print(f"graph {number}: {record['status']} {record.get('case', record['operator'])}", flush=True)
    SUMMARY.write_text(summarise(records))
    return 0 if all(r["status"] in ("ok", "no shape") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
