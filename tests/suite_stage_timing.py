"""A pytest plugin for ExecuTorch's backend operator test suite: the seconds of every stage of every model a case
lowers, for any flow (ours or the suite's own XNNPACK flows).

Loaded with ``-p suite_stage_timing``, it times each harness stage (quantize, export, to_edge_transform_and_lower,
to_executorch, serialize, run and compare) and, inside the lowering, ExecuTorch's own conversion to the edge dialect
(`ExportedProgram.run_decompositions` and `_generate_edge_program`'s passes): work every backend's flow pays on the
same graph, before any partitioner decides anything. One JSON line per stage goes to ``$SUITE_STAGE_TIMES``.
``bench/suite_stages.py`` runs it.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import pytest

TIMES_ENV = "SUITE_STAGE_TIMES"
EDGE_CONVERSION = "executorch_edge_conversion"


class _Clock:
    """Where the run is: the case, its flow and model, and the seconds ExecuTorch's edge conversion has taken
    inside the stage running now."""

    case = ""
    flow = ""
    model = -1
    edge_seconds = 0.0
    in_edge_generation = False  # inside _gen_edge_manager_for_partitioners
    timing = False  # inside a timed call (a nested one is not counted twice)


def _timed_edge_conversion(function: Any) -> Any:
    """`function`, its seconds added to the stage's edge conversion when called by _gen_edge_manager_for_partitioners
    (a backend's preprocess may call run_decompositions too: that is the backend's own work)."""

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if not _Clock.in_edge_generation or _Clock.timing:
            return function(*args, **kwargs)
        _Clock.timing = True
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _Clock.edge_seconds += time.perf_counter() - started
            _Clock.timing = False

    return timed


def _marking_edge_generation(function: Any) -> Any:
    @functools.wraps(function)
    def marked(*args: Any, **kwargs: Any) -> Any:
        _Clock.in_edge_generation = True
        try:
            return function(*args, **kwargs)
        finally:
            _Clock.in_edge_generation = False

    return marked


def _write(record: dict[str, Any]) -> None:
    path = os.environ.get(TIMES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as times:
            times.write(json.dumps(record) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    from executorch.backends.test.harness import tester
    from executorch.exir.program import _program
    from torch.export import exported_program

    exported_program.ExportedProgram.run_decompositions = _timed_edge_conversion(
        exported_program.ExportedProgram.run_decompositions)
    # Called by its module-level name inside _program, so replacing the module attribute times every call.
    _program._generate_edge_program = _timed_edge_conversion(_program._generate_edge_program)
    _program._gen_edge_manager_for_partitioners = _marking_edge_generation(
        _program._gen_edge_manager_for_partitioners)

    new_tester = tester.Tester.__init__
    run_stage = tester.Tester._run_stage

    @functools.wraps(new_tester)
    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        _Clock.model += 1  # the suite makes one Tester per model it lowers
        new_tester(self, *args, **kwargs)

    @functools.wraps(run_stage)
    def timed_stage(self: Any, stage: Any, *args: Any, **kwargs: Any) -> Any:
        _Clock.edge_seconds = 0.0
        started = time.perf_counter()
        try:
            return run_stage(self, stage, *args, **kwargs)
        finally:
            _write({"case": _Clock.case, "flow": _Clock.flow, "model": _Clock.model,
                    "stage": stage.stage_type().name.lower(), "seconds": round(time.perf_counter() - started, 3),
                    EDGE_CONVERSION: round(_Clock.edge_seconds, 3)})

    tester.Tester.__init__ = counting_init
    tester.Tester._run_stage = timed_stage


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    flow = getattr(item, "callspec", None) and item.callspec.params.get("test_runner")
    _Clock.case, _Clock.flow, _Clock.model = item.nodeid.split("::")[-1], getattr(flow, "name", ""), -1
    started = time.perf_counter()
    outcome = yield
    _write({"case": _Clock.case, "flow": _Clock.flow, "model": None, "stage": "case",
            "seconds": round(time.perf_counter() - started, 3), "passed": outcome.exception is None})
