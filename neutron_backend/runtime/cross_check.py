"""Cross-check the two engines (our exact kernels against LiteRT's reference kernels) on every Neutron delegate.

:func:`cross_check` takes a lowered program (or one payload), runs each delegate's payload with both engines on
the same int8 inputs and reports every output that differs in any element. Inputs are the delegate inputs the
program's own inputs produce (when given) followed by seeded random int8 tensors covering the whole int8 range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from neutron_backend.payload import DeployablePayload, EmulationPayload, read_payload
from neutron_backend.runtime.execute import PreparedPayload


@dataclass(frozen=True)
class OutputMismatch:
    """One delegate output where the engines disagree."""

    delegate: int
    output: int
    differing: int
    total: int
    max_abs_difference: int

    def __str__(self) -> str:
        return (f"delegate {self.delegate} output {self.output}: {self.differing} of {self.total} elements differ, "
                f"by up to {self.max_abs_difference}")


@dataclass
class CrossCheckReport:
    """The outcome: delegates checked, input sets per delegate (the program's inputs, random int8), mismatches and
    errors (an engine failing to prepare or run a delegate)."""

    delegates: int = 0
    input_sets: int = 0
    mismatches: list[OutputMismatch] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """True when both engines produced the same bits on every delegate output."""
        return self.delegates > 0 and not self.mismatches and not self.errors

    def __str__(self) -> str:
        head = (f"{self.delegates} delegate(s), {self.input_sets} input set(s) each: "
                f"{'bit-identical' if self.identical else 'MISMATCH'}")
        return "\n".join([head, *(f"  {m}" for m in self.mismatches), *(f"  error: {e}" for e in self.errors)])


def delegate_payloads(program: Any) -> list[EmulationPayload]:
    """Returns the emulation payloads of the Neutron delegates of a lowered program (EdgeProgramManager,
    ExecutorchProgramManager, ExportedProgram), an EmulationPayload, or payload bytes, in graph order.
    Raises ValueError for a deployable payload (nothing to emulate)."""
    if isinstance(program, EmulationPayload):
        return [program]
    if isinstance(program, bytes | bytearray):
        payloads = [read_payload(bytes(program))]
    else:
        from neutron_backend.runtime.emulator import BACKEND_ID, _exported_program

        payloads = []
        for module in _exported_program(program).graph_module.modules():
            for child in module.children():
                if getattr(child, "backend_id", None) == BACKEND_ID:
                    payloads.append(read_payload(bytes(child.processed_bytes)))
    if any(isinstance(p, DeployablePayload) for p in payloads):
        raise ValueError("a delegate holds a deployable payload (NXP microcode): there is nothing to emulate")
    return payloads  # type: ignore[return-value]


def _captured_inputs(program: Any, inputs: Sequence[torch.Tensor]) -> list[list[list[np.ndarray]]]:
    """Runs the program once with the reference engine, recording each delegate's inputs."""
    from neutron_backend.runtime.emulator import emulate

    captured: list[list[np.ndarray]] = []
    emulate(program, *inputs, kernels="reference", on_delegate=lambda arrays: captured.append(arrays))
    return [[arrays] for arrays in captured]


def _random_inputs(payload: EmulationPayload, samples: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {spec.arg_index: spec.shape for spec in payload.inputs}
    return [rng.integers(-128, 128, size=(samples * shapes[i][0], *shapes[i][1:]), dtype=np.int8)
            for i in range(len(shapes))]


def cross_check(program: Any, inputs: Sequence[torch.Tensor] | None = None, *, random_samples: int = 4,
                seed: int = 0) -> CrossCheckReport:
    """Compares the exact engine with LiteRT's reference kernels on every Neutron delegate of ``program``.

    ``inputs`` (the program's user inputs) add the delegate inputs they produce; ``random_samples`` seeded
    uniform int8 samples per delegate are always added. Returns a :class:`CrossCheckReport`; an engine that
    fails to prepare or run a delegate is an error in the report, not an exception.
    """
    report = CrossCheckReport()
    payloads = delegate_payloads(program)
    captured = _captured_inputs(program, inputs) if inputs is not None and not isinstance(
        program, EmulationPayload | bytes | bytearray) else [[] for _ in payloads]
    for index, payload in enumerate(payloads):
        report.delegates += 1
        try:
            exact = PreparedPayload(payload, "exact")
            reference = PreparedPayload(payload, "reference")
        except Exception as exc:  # a report, not a crash: the integrator runs this over whole model gardens
            report.errors.append(f"delegate {index}: preparing failed: {exc}")
            continue
        batches = [*captured[index], _random_inputs(payload, random_samples, seed + index)] if index < len(
            captured) else [_random_inputs(payload, random_samples, seed + index)]
        for batch in batches:
            try:
                got, expected = exact.run(batch), reference.run(batch)
            except Exception as exc:  # see above
                report.errors.append(f"delegate {index}: running failed: {exc}")
                continue
            report.input_sets = max(report.input_sets, len(batches))
            for output, (a, b) in enumerate(zip(got, expected, strict=True)):
                if a.shape != b.shape or not np.array_equal(a, b):
                    diff = (np.abs(a.astype(np.int64) - b.astype(np.int64)) if a.shape == b.shape
                            else np.array([256]))
                    report.mismatches.append(OutputMismatch(index, output, int(np.count_nonzero(diff)),
                                                            int(b.size), int(diff.max())))
    return report
