"""Our int8 flow for ExecuTorch's backend operator test suite (``executorch/backends/test/suite`` in the wheel).

The suite runs each case as: eager check, quantize, export, ``to_edge_transform_and_lower``, ``to_executorch``,
serialize, run the ``.pte`` with ExecuTorch's pybindings and compare with the exported quantized model. This flow
fills those stages with NeutronQuantizer (calibrated on the example inputs and seeded batches drawn from their
domain), a non-strict export of the quantized model, NeutronPartitioner, and the host runtime
(``neutron_backend.runtime.register()``, so the pybindings run Neutron delegates). Outputs are compared with the
harness's quantized tolerance of one output quantization step (``qtol=1``, one step per requantizing operator) on
top of the suite's atol/rtol.

Loaded as a pytest plugin (``-p neutron_suite_flow``) it replaces the suite's flows with this one before the
suite's conftest reads them, records every case's outcome as a JSON line in ``$NEUTRON_SUITE_RESULTS``, and stops
a case that runs longer than ``$NEUTRON_SUITE_TIMEOUT`` seconds (default 300) at that point, recording it as
failed. ``bench/backend_suite.py`` and ``tests/test_backend_suite.py`` run the suite this way.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize for to_executorch)
import pytest
import torch
from executorch.backends.test.harness import Tester
from executorch.backends.test.harness.stages import Export, Quantize, Serialize, StageType, ToEdgeTransformAndLower
from executorch.backends.test.suite import flow as suite_flow
from executorch.backends.test.suite.flow import TestFlow

TARGET = "imxrt700"
FLOW_NAME = f"neutron_{TARGET}_int8"
SUITE_DIR = Path(suite_flow.__file__).parent
CALIBRATION_BATCHES = 4
RESULTS_ENV = "NEUTRON_SUITE_RESULTS"
TIMEOUT_ENV = "NEUTRON_SUITE_TIMEOUT"
DEFAULT_TIMEOUT_S = 300
# One output quantization step on top of the suite's tolerances: the per-op bound (LiteRT requantizes in fixed point,
# torch in float).
QUANTIZED_STEPS = 1


def domain_batches(example_inputs: tuple[Any, ...], count: int, seed: int = 0) -> list[tuple[Any, ...]]:
    """`count` seeded batches like `example_inputs`: every float tensor drawn uniformly from its own [min, max]
    (the case's input domain: a log's inputs stay positive), anything else reused as given."""
    from torch.utils._pytree import tree_map

    generator = torch.Generator().manual_seed(seed)

    def draw(value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.numel() == 0:
            return value
        low, high = value.min(), value.max()
        return low + (high - low) * torch.rand(value.shape, generator=generator, dtype=value.dtype)

    return [tuple(tree_map(draw, tuple(example_inputs))) for _ in range(count)]


class NeutronQuantize(Quantize):
    """Export (non-strict, as users export), NeutronQuantizer, calibrate on the example inputs and seeded batches
    drawn from their domain, convert."""

    def __init__(self) -> None:
        from neutron_backend.quantizer import NeutronQuantizer

        super().__init__(quantizer=NeutronQuantizer(TARGET))

    def run(self, artifact: torch.nn.Module, inputs: tuple[Any, ...] | None) -> None:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        from neutron_backend.quantizer.calibration import calibrate

        assert inputs is not None
        prepared = prepare_pt2e(torch.export.export(artifact, tuple(inputs)).module(), self.quantizer)
        batches = [tuple(inputs), *domain_batches(tuple(inputs), CALIBRATION_BATCHES)]
        calibrate(prepared, batches, progress=False)
        self.converted_graph = convert_pt2e(prepared)


class NeutronExport(Export):
    """Export of the quantized model, non-strict (torch.export's default, and how users export) where the harness's
    stage traces with TorchDynamo (strict=True): the same ATen graph at half the time on the suite's LSTMs, whose
    unrolled time steps make thousands of nodes (the 2-layer one: 9 s of 45 s strict, 4 s non-strict)."""

    def run(self, artifact: torch.nn.Module, inputs: tuple[torch.Tensor]) -> None:
        self.exported_program = torch.export.export(artifact, inputs, dynamic_shapes=self.dynamic_shapes,
                                                    strict=False)


class NeutronLower(ToEdgeTransformAndLower):
    """to_edge_transform_and_lower with NeutronPartitioner for TARGET."""

    def __init__(self) -> None:
        from neutron_backend.compile_spec import generate_neutron_compile_spec
        from neutron_backend.partitioner import NeutronPartitioner

        super().__init__(partitioners=None)
        self.partitioners = [NeutronPartitioner(generate_neutron_compile_spec(TARGET))]


class NeutronTester(Tester):
    """The suite's Tester with Neutron's stages; the host runtime is registered so the .pte runs here."""

    def __init__(self, module: torch.nn.Module, example_inputs: tuple[Any, ...],
                 dynamic_shapes: tuple[Any, ...] | None = None) -> None:
        from neutron_backend.runtime import register

        register()
        stages = Tester.default_stage_classes() | {
            StageType.QUANTIZE: NeutronQuantize,
            StageType.EXPORT: NeutronExport,
            StageType.TO_EDGE_TRANSFORM_AND_LOWER: NeutronLower,
            StageType.SERIALIZE: Serialize,
        }
        super().__init__(module, example_inputs, stages, dynamic_shapes)

    def _calculate_reference_output(self, program: Any, inputs: Any) -> tuple[Any, float | None]:
        output, scale = Tester._calculate_reference_output(program, inputs)
        self._output_scale = scale
        return output, scale

    def run_method_and_compare_outputs(self, *args: Any, **kwargs: Any) -> NeutronTester:
        kwargs["qtol"] = QUANTIZED_STEPS
        callback = kwargs.get("statistics_callback")
        if callback is not None:
            def with_scale(statistics: Any) -> None:
                # The output's quantization scale, so the record can give the error in output steps.
                statistics.output_scale = self._output_scale
                callback(statistics)

            kwargs["statistics_callback"] = with_scale
        return super().run_method_and_compare_outputs(*args, **kwargs)


NEUTRON_FLOW = TestFlow(
    name=FLOW_NAME,
    backend="neutron",
    tester_factory=NeutronTester,
    quantize=True,
    quantize_stage_factory=NeutronQuantize,
    supports_serialize=True,
)


# -- the pytest plugin ----------------------------------------------------------------------------------------

# The suite's conftest parametrizes its `test_runner` fixture over all_flows() when it is imported; plugins load
# before conftests, so this makes our flow the only one.
suite_flow.all_flows = lambda: {NEUTRON_FLOW.name: NEUTRON_FLOW}


class CaseTimeout(BaseException):
    """A suite case ran longer than $NEUTRON_SUITE_TIMEOUT seconds.

    A BaseException, so the suite's runner (which turns any Exception of a stage into that subtest's result and goes
    on with the next subtest) cannot swallow it: the case stops at its limit."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout(f"the case ran longer than {os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)} s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(int(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    try:
        outcome = yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if isinstance(outcome.exception, CaseTimeout):
        # The alarm lands in whatever frame runs, often code that torch generated at run time, whose traceback
        # entries have no line number: formatting one crashed pytest (INTERNALERROR) and ended the whole run.
        # Report a fresh exception whose traceback is this frame only.
        outcome.force_exception(_fresh(outcome.exception))


def _fresh(timeout: CaseTimeout) -> CaseTimeout:
    try:
        raise CaseTimeout(str(timeout)) from None
    except CaseTimeout as fresh:
        return fresh


def _subtests(item: pytest.Item) -> list[dict[str, Any]]:
    runner = getattr(item, "funcargs", {}).get("test_runner")
    found = []
    for summary in getattr(runner, "_results", []):
        found.append({
            "result": summary.result.name,
            "error": "" if summary.error is None else f"{type(summary.error).__name__}: {summary.error}"[:2000],
            "error_max": [round(float(s.error_max), 6) for s in summary.tensor_error_statistics],
            "error_steps": [round(float(s.error_max) / s.output_scale, 4) if getattr(s, "output_scale", None)
                            else None for s in summary.tensor_error_statistics],
        })
    return found


def classify(outcome: str, subtests: list[dict[str, Any]]) -> str:
    """One of: delegated, undelegated, skipped, failed (a case with several subtests counts as its worst)."""
    if outcome == "skipped":
        return "skipped"
    if outcome != "passed":
        return "failed"
    return "delegated" if any(s["result"] == "SUCCESS" for s in subtests) else "undelegated"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    path = os.environ.get(RESULTS_ENV)
    if not path or not (report.when == "call" or (report.when == "setup" and report.outcome != "passed")):
        return
    subtests = _subtests(item)
    error = ""
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        error = str(report.longrepr[2])[:2000]
    elif report.outcome == "failed":
        error = str(call.excinfo.value)[:2000] if call.excinfo is not None else str(report.longrepr)[:2000]
    record = {"case": item.nodeid.split("::")[-1], "file": Path(str(item.path)).name, "outcome": report.outcome,
              "status": classify(report.outcome, subtests), "subtests": subtests, "error": error,
              "seconds": round(report.duration, 3), "time": time.time()}
    with open(path, "a", encoding="utf-8") as results:
        results.write(json.dumps(record) + "\n")


def read_results(path: Path) -> list[dict[str, Any]]:
    """The records a run wrote to `path`, one per case."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
