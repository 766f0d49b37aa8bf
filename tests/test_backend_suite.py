"""A bounded subset of ExecuTorch's backend operator test suite through our int8 flow (tests/neutron_suite_flow.py);
bench/backend_suite.py runs every case.

Each case must end as a delegated success, an undelegated success or a clean skip, as listed below; a delegated
case's .pte must be within one output quantization step of the quantized model (these cases are one operator).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from neutron_suite_flow import FLOW_NAME, RESULTS_ENV, SUITE_DIR, TIMEOUT_ENV, read_results
from suite_stage_timing import EDGE_CONVERSION, TIMES_ENV

TESTS_DIR = Path(__file__).parent
MAX_ERROR_STEPS = 1.0

# (operator test file, case) -> the outcome it must have.
CASES = {
    ("test_conv2d.py", "test_conv2d_basic"): "delegated",
    ("test_conv2d.py", "test_conv2d_groups"): "delegated",
    ("test_convtranspose2d.py", "test_convtranspose2d_no_bias"): "delegated",
    ("test_add.py", "test_add_f32_bcast_first"): "delegated",
    ("test_mul.py", "test_multiply_f32_bcast_second"): "delegated",
    ("test_sigmoid.py", "test_sigmoid_f32_multi_dim"): "delegated",
    ("test_tanh.py", "test_tanh_f32_multi_dim"): "delegated",
    ("test_silu.py", "test_silu_f32_multi_dim"): "delegated",
    ("test_prelu.py", "test_prelu_dtype"): "delegated",
    ("test_hardtanh.py", "test_hardtanh_f32_custom_range"): "delegated",
    ("test_mean.py", "test_mean_basic"): "delegated",
    ("test_upsample_nearest2d.py", "test_upsample_nearest2d_dtype"): "delegated",
    # Float-only operators, and ones NeutronQuantizer leaves in float: nothing to delegate.
    ("test_div.py", "test_divide_f32_bcast_first"): "undelegated",
    ("test_round.py", "test_round_dtype"): "undelegated",
    # A lone data-movement operator is not worth a delegate call.
    ("test_permute.py", "test_permute_dtype"): "undelegated",
    # The suite's own skip (NaN and Inf inputs).
    ("test_abs.py", "test_abs_edge_cases"): "skipped",
}


def _run_suite(results: Path, files: list[str], selection: str, extra_env: dict[str, str] | None = None):
    command = [sys.executable, "-m", "pytest", "-c", os.devnull, "--rootdir", str(SUITE_DIR), "-p",
               "neutron_suite_flow", "-p", "suite_stage_timing", "-p", "no:cacheprovider", "-q", "-W", "ignore", "-k",
               selection,
               *(str(SUITE_DIR / "operators" / file) for file in files)]
    env = dict(os.environ, **{RESULTS_ENV: str(results)}, **(extra_env or {}),
               PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])))
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory holding the run's case records (results.jsonl) and stage times (times.jsonl)."""
    directory = tmp_path_factory.mktemp("suite")
    results = directory / "results.jsonl"
    run = _run_suite(results, sorted({file for file, _ in CASES}), " or ".join(sorted({case for _, case in CASES})),
                     {TIMES_ENV: str(directory / "times.jsonl")})
    assert results.exists(), f"the suite wrote no results:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return directory


@pytest.fixture(scope="module")
def outcomes(suite_run: Path) -> dict[tuple[str, str], dict]:
    results = suite_run / "results.jsonl"
    found = {}
    for record in read_results(results):
        assert FLOW_NAME in record["case"], record["case"]
        found[(record["file"], record["case"].split("[")[0])] = record
    return found


@pytest.mark.parametrize(("file", "case"), sorted(CASES), ids=[case for _, case in sorted(CASES)])
def test_suite_case_outcome(outcomes: dict[tuple[str, str], dict], file: str, case: str) -> None:
    record = outcomes.get((file, case))
    assert record is not None, f"{file}::{case} did not run"
    details = [(s["result"], s["error"][:500]) for s in record["subtests"]] or record["error"][:500]
    assert record["status"] == CASES[(file, case)], details
    for subtest in record["subtests"]:
        if subtest["result"] == "SUCCESS":
            steps = subtest["error_steps"]
            assert steps and None not in steps, f"no output scale to measure the error in steps: {subtest}"
            assert max(steps) <= MAX_ERROR_STEPS, subtest


def test_stage_times_cover_every_stage_of_a_delegated_case(suite_run: Path) -> None:
    # tests/suite_stage_timing.py, which bench/suite_stages.py reads: per model every stage the harness ran, the
    # edge conversion inside the lowering, and one record for the whole case.
    records = [json.loads(line) for line in (suite_run / "times.jsonl").read_text(encoding="utf-8").splitlines()]
    case = [r for r in records if r["case"].split("[")[0] == "test_conv2d_basic"]
    stages = [r["stage"] for r in case if r["stage"] != "case"]
    assert stages == ["quantize", "export", "to_edge_transform_and_lower", "to_executorch", "serialize"], stages
    assert {r["flow"] for r in case} == {FLOW_NAME} and {r["model"] for r in case if r["stage"] != "case"} == {0}
    lowering = next(r for r in case if r["stage"] == "to_edge_transform_and_lower")
    assert 0 < lowering[EDGE_CONVERSION] < lowering["seconds"], lowering
    assert all(r[EDGE_CONVERSION] == 0 for r in case if r["stage"] in ("quantize", "export")), case
    whole = [r for r in case if r["stage"] == "case"]
    assert len(whole) == 1 and whole[0]["passed"], whole
    assert whole[0]["seconds"] >= sum(r["seconds"] for r in case if r["stage"] != "case"), case


def test_a_case_over_the_time_limit_stops_there_and_the_run_goes_on(tmp_path: Path) -> None:
    # Two LSTM cases with a 1 s limit: each stops in its first subtest (num_layers has two), is recorded as failed
    # with the reason, and the run reaches the second case. The runner used to swallow the time-out as one
    # subtest's result and run the case's other subtests in full; pytest once crashed formatting its traceback.
    results = tmp_path / "results.jsonl"
    run = _run_suite(results, ["test_lstm.py"], "test_lstm_num_layers or test_lstm_batch_first_false",
                     {TIMEOUT_ENV: "1"})
    assert "INTERNALERROR" not in run.stdout + run.stderr, run.stdout[-3000:]
    assert run.returncode == 1, run.stdout[-3000:]
    records = {record["case"].split("[")[0]: record for record in read_results(results)}
    assert sorted(records) == ["test_lstm_batch_first_false", "test_lstm_num_layers"]
    for record in records.values():
        assert record["status"] == "failed" and record["subtests"] == [], record
        assert record["error"] == "the case ran longer than 1 s", record
        # 1 s, plus what the interpreter finishes before it handles the signal (one torch call).
        assert record["seconds"] < 10, record
