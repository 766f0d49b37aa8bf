"""Shared machinery of the per-operator numerics tests (`test_lowering_numerics.py`, `test_ops_*.py`).

A case is a one-op (or minimal) model quantized with NeutronQuantizer, lowered with NeutronPartitioner into ONE
partition, written to a .pte and run with ``load_pte`` on seeded random inputs. `check_case` asserts that

(a) the listed edge operators are delegated and the model lowers to exactly one partition (data-movement ops
    that would be a lone no-op partition are paired with a compute op),
(b) the .pte is within `max_error_steps` output quantization steps of the quantized torch model (fixed-point against
float requantization:
    1 step per requantizing operator),
(c) the shim's output (our exact engine) equals the pure-Python emulator's run with LiteRT's reference kernels bit
    for bit, and the two engines agree on random int8 inputs to the delegate too.

Every test module named `test_ops_*.py` (and `test_lowering_numerics.py`) declares `COVERED`, the registry names
its cases exercise, and optionally `NOT_REACHABLE` (name -> reason); `test_lowering_numerics.py` checks that
together they cover every registered operator.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize for to_executorch)
import torch
from executorch.exir import to_edge_transform_and_lower
from torch import nn

from neutron_backend.compile_spec import generate_neutron_compile_spec
from neutron_backend.partitioner import NeutronPartitioner
from neutron_backend.quantizer.calibration import quantize_model, random_batches
from neutron_backend.report import DelegationReport
from neutron_backend.runtime import cross_check, emulate, load_pte
from neutron_backend.verify import verify

CALIBRATION_BATCHES = 4
NUM_INPUTS = 3
MAX_ERROR_STEPS = 1.0
# Q/DQ nodes at the partition boundary legitimately stay on the CPU.
QDQ_PREFIX = "quantized_decomposed."


@dataclass
class Lowered:
    quantized: torch.fx.GraphModule
    edge: object  # EdgeProgramManager, before to_executorch
    pte: Path
    report: DelegationReport


def lower(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], directory: Path,
          target: str = "imxrt700") -> Lowered:
    """Quantizes `model` (calibrated on seeded N(0, 1) batches), lowers it for `target` and writes a .pte."""
    torch.manual_seed(0)
    quantized = quantize_model(model.eval(), example_inputs,
                               calibration_batches=random_batches(example_inputs, CALIBRATION_BATCHES),
                               progress=False)
    partitioner = NeutronPartitioner(generate_neutron_compile_spec(target))
    edge = to_edge_transform_and_lower(torch.export.export(quantized, example_inputs), partitioner=[partitioner])
    kept = copy.deepcopy(edge)  # to_executorch() mutates the edge program
    pte = directory / "model.pte"
    pte.write_bytes(edge.to_executorch().buffer)
    return Lowered(quantized, kept, pte, partitioner.report)


def sample_inputs(example_inputs: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, ...]]:
    """Seeded inputs drawn like the calibration data but different from it."""
    return random_batches(example_inputs, NUM_INPUTS, seed=1234)


class Conv(nn.Module):
    def __init__(self, cin=3, cout=8, kernel=3, act=None, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, **kwargs)
        self.act = act

    def forward(self, x):
        y = self.conv(x)
        return y if self.act is None else self.act(y)


class Linear(nn.Module):
    def __init__(self, features=16, out=10, act=None, **kwargs) -> None:
        super().__init__()
        self.linear = nn.Linear(features, out, **kwargs)
        self.act = act

    def forward(self, x):
        y = self.linear(x)
        return y if self.act is None else self.act(y)


class Fn(nn.Module):
    """A parameterless model applying `fn` to its inputs."""

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def qdq(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """`x` through an int8 quantize/dequantize pair with the given qparams, as convert_pt2e writes it."""
    ops = torch.ops.quantized_decomposed
    q = ops.quantize_per_tensor(x, scale, zero_point, -128, 127, torch.int8)
    return ops.dequantize_per_tensor(q, scale, zero_point, -128, 127, torch.int8)


class HandQuantized(nn.Module):
    """`fn` between hand-written int8 quantize/dequantize pairs with the given (scale, zero point): graphs
    NeutronQuantizer never produces, to test verdicts on qparams. `in_qparams` is one pair for every input, or a
    list with one pair per input."""

    def __init__(self, fn: Callable, in_qparams: tuple[float, int] | list[tuple[float, int]],
                 out_qparams: tuple[float, int]) -> None:
        super().__init__()
        self.fn, self.in_qparams, self.out_qparams = fn, in_qparams, out_qparams

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        per_input = self.in_qparams if isinstance(self.in_qparams, list) else [self.in_qparams] * len(xs)
        return qdq(self.fn(*(qdq(x, *q) for x, q in zip(xs, per_input, strict=True))), *self.out_qparams)


def assert_delegated(report: DelegationReport, targets: tuple[str, ...]) -> None:
    """One partition, every listed edge target present, and nothing but boundary Q/DQ left on the CPU."""
    assert report.num_partitions == 1, str(report)
    present = {entry.target for entry in report.nodes}
    for target in targets:
        assert target in present, f"{target} not in the lowered graph:\n{report}"
    cpu = [entry for entry in report.nodes if not entry.delegated and not entry.target.startswith(QDQ_PREFIX)]
    assert not cpu, f"operators left on the CPU: {[(e.target, e.reason) for e in cpu]}\n{report}"


def _first_output(outputs) -> torch.Tensor:
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def check_case(name: str, model: nn.Module, shapes: tuple[tuple[int, ...], ...], targets: tuple[str, ...],
               directory: Path, record_property: Callable | None = None,
               max_error_steps: float = MAX_ERROR_STEPS, min_levels: int = 3) -> Lowered:
    """Lowers `model` on N(0, 1) inputs of `shapes` and asserts (a), (b) and (c) of the module docstring."""
    torch.manual_seed(0)
    example_inputs = tuple(torch.randn(shape) for shape in shapes)
    lowered = lower(model, example_inputs, directory)
    assert_delegated(lowered.report, targets)

    program = load_pte(lowered.pte)
    samples = sample_inputs(example_inputs)
    result = verify(program, lowered.quantized, samples)
    if record_property is not None:
        record_property("max_error_steps", result.max_error_steps)
        record_property("mean_error_steps", result.mean_error_steps)
    assert result.num_samples == NUM_INPUTS
    assert result.max_error_steps <= max_error_steps, f"{name}: {result}"

    # The comparison means something only if the outputs are not (nearly) constant.
    levels = torch.cat([_first_output(lowered.quantized(*sample)).reshape(-1) for sample in samples]).unique()
    assert len(levels) >= min_levels, f"{name}: degenerate reference output {levels.tolist()}"

    for sample in samples:
        shim = program(*sample)
        oracle = emulate(lowered.edge, *sample, kernels="reference")
        assert len(shim) == len(oracle)
        for got, want in zip(shim, oracle, strict=True):
            assert torch.equal(got, want), f"{name}: shim and emulator differ by {(got - want).abs().max()}"
    engines = cross_check(lowered.edge)
    assert engines.identical, f"{name}: exact engine vs LiteRT reference kernels on random int8: {engines}"
    return lowered
