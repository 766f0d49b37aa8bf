"""Graceful fallback: a partition that fails to convert goes back to the CPU, with a warning, and lowering completes.

Failures are provoked two ways: an operator's convert replaced by one that raises for one node (a lowering bug or
a LoweringError), and the converter test doubles in tests/fake_converter (a crashing converter, one that leaves an
operator unconverted). Each case asserts where every node ended up, the reason in the report, the warning, and the
numbers: the .pte still reproduces the quantized model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

import pytest
import torch
from numerics import lower, sample_inputs
from torch import nn

from neutron_backend import ops
from neutron_backend.lowering import LoweringError
from neutron_backend.runtime import load_pte
from neutron_backend.verify import verify

CONV = "aten.convolution.default"
FAKE_DIR = Path(__file__).parent / "fake_converter"
# Three requantizing convolutions in a chain: the .pte may differ from the reference by one step per conv.
MAX_ERROR_STEPS = 3.0


class ConvChain(nn.Module):
    """Three Conv2d(8, 8, 3, padding=1) + ReLU blocks."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1) for i in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x


EXAMPLE = (torch.randn(1, 3, 8, 8),)


def _fail_on(monkeypatch: pytest.MonkeyPatch, node_name: str, error: Exception) -> None:
    """Makes the registered convolution's convert raise `error` for the node called `node_name`."""
    registry = ops._registry()
    key = next(k for k, op in registry.items() if op.name == CONV)
    operator = registry[key]
    original = operator.convert

    def convert(node, ctx) -> None:
        if node.name == node_name:
            raise error
        original(node, ctx)

    monkeypatch.setitem(registry, key, dataclasses.replace(operator, convert=convert))


def _conv_entries(report):
    return [entry for entry in report.nodes if entry.target == CONV]


def _assert_matches_reference(lowered) -> None:
    samples = sample_inputs(EXAMPLE)
    result = verify(load_pte(lowered.pte), lowered.quantized, samples)
    assert result.num_samples == len(samples)
    assert result.max_error_steps <= MAX_ERROR_STEPS, str(result)


@pytest.mark.parametrize("error", [RuntimeError("kernel table overflow"), LoweringError("kernel table overflow")],
                         ids=["unexpected-exception", "lowering-error"])
def test_node_whose_conversion_fails_runs_on_the_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture, error: Exception) -> None:
    _fail_on(monkeypatch, "aten_convolution_default_1", error)
    with caplog.at_level(logging.WARNING, logger="neutron_backend.partitioner"):
        lowered = lower(ConvChain(), EXAMPLE, tmp_path)

    first, middle, last = _conv_entries(lowered.report)
    assert (first.delegated, middle.delegated, last.delegated) == (True, False, True)
    assert middle.name == "aten_convolution_default_1"
    assert middle.reason.startswith("converting it for Neutron failed: ") and "kernel table overflow" in middle.reason
    assert lowered.report.num_partitions == 2 and first.partition != last.partition
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "neutron_backend.partitioner"]
    assert "'aten_convolution_default_1' (aten.convolution.default)" in warning
    assert "kernel table overflow" in warning and "on the CPU" in warning
    _assert_matches_reference(lowered)


def test_every_node_failing_leaves_a_cpu_only_program(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    registry = ops._registry()
    key = next(k for k, op in registry.items() if op.name == CONV)

    def convert(node, ctx) -> None:
        raise ValueError(f"cannot lower {node.name}")

    monkeypatch.setitem(registry, key, dataclasses.replace(registry[key], convert=convert))
    with caplog.at_level(logging.WARNING, logger="neutron_backend.partitioner"):
        lowered = lower(ConvChain(), EXAMPLE, tmp_path)

    assert lowered.report.num_partitions == 0
    assert not any(entry.delegated for entry in lowered.report.nodes)
    for entry in _conv_entries(lowered.report):
        assert f"ValueError: cannot lower {entry.name}" in entry.reason
    warned = [r.getMessage() for r in caplog.records if r.name == "neutron_backend.partitioner"]
    assert sum("could not be converted" in w for w in warned) == 3
    _assert_matches_reference(lowered)


@pytest.fixture
def fake_converter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes the converter test doubles importable here and in the converter subprocess."""
    monkeypatch.syspath_prepend(str(FAKE_DIR))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FAKE_DIR), os.environ.get("PYTHONPATH")])))
    yield
    for name in [m for m in sys.modules if m.startswith(("neutron_converter_", "eiq_neutron_sdk", "fake_neutron"))]:
        del sys.modules[name]


def _lower_with_flavor(flavor: str, tmp_path: Path) -> tuple[object, list[str]]:
    from executorch.exir import to_edge_transform_and_lower

    from neutron_backend.compile_spec import generate_neutron_compile_spec
    from neutron_backend.partitioner import NeutronPartitioner
    from neutron_backend.quantizer.calibration import quantize_model, random_batches

    quantized = quantize_model(ConvChain().eval(), EXAMPLE, calibration_batches=random_batches(EXAMPLE, 2),
                               progress=False)
    partitioner = NeutronPartitioner(generate_neutron_compile_spec("imxrt700", neutron_converter_flavor=flavor))
    edge = to_edge_transform_and_lower(torch.export.export(quantized, EXAMPLE), partitioner=[partitioner])
    return edge, partitioner.report


@pytest.mark.parametrize(("flavor", "reason"), [
    ("SDK_99_01", "crashed"),
    ("SDK_99_02", "not fully convertible"),
], ids=["crashing-converter", "partial-conversion"])
def test_converter_failure_sends_the_partition_to_the_cpu(fake_converter: None, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture, flavor: str,
                                                         reason: str) -> None:
    with caplog.at_level(logging.WARNING, logger="neutron_backend.partitioner"):
        edge, report = _lower_with_flavor(flavor, tmp_path)

    assert "call_delegate" not in str(edge.exported_program().graph)
    assert report.num_partitions == 0
    for entry in _conv_entries(report):
        assert entry.reason.startswith("converting it for Neutron failed: ConversionError: ") and reason in entry.reason
    (warning,) = [r.getMessage() for r in caplog.records
                  if r.name == "neutron_backend.partitioner" and "could not be converted" in r.getMessage()]
    for name in ("aten_convolution_default", "aten_convolution_default_1", "aten_convolution_default_2"):
        assert f"'{name}' (aten.convolution.default)" in warning
    assert f"neutron_converter_{flavor}" in warning


def test_partition_is_converted_once(fake_converter: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The partitioner's trial conversion sees the real weights, so preprocess reuses its converter result."""
    from neutron_backend import converter

    calls: list[bytes] = []
    original = converter.convert_partition

    def counting(lowered, options, **kwargs):
        calls.append(lowered.tflite)
        return original(lowered, options, **kwargs)

    monkeypatch.setattr(converter, "convert_partition", counting)
    edge, report = _lower_with_flavor("SDK_25_06", tmp_path)
    assert report.num_partitions == 1 and len(calls) == 1
    assert "call_delegate" in str(edge.exported_program().graph)


def test_each_partition_is_lowered_once_and_models_do_not_share_results(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    """preprocess takes the trial conversion's result for the same program, and only for the same program: two
    models with the same graph (same node names) but different weights each get their own payload."""
    from neutron_backend import backend

    lowered_programs: list[str] = []
    original = backend._process

    def counting(program, options):
        lowered_programs.append(type(program).__name__)
        return original(program, options)

    monkeypatch.setattr(backend, "_process", counting)
    _fail_on(monkeypatch, "aten_convolution_default_1", RuntimeError("kernel table overflow"))
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = ConvChain()
        with torch.no_grad():
            for conv in model.convs:
                conv.weight.mul_(seed)
        lowered_programs.clear()
        (tmp_path / str(seed)).mkdir()
        lowered = lower(model, EXAMPLE, tmp_path / str(seed))
        # Two partitions, each lowered once (by the partitioner's trial), plus the trial of the first proposal.
        assert lowered.report.num_partitions == 2
        assert lowered_programs == ["PartitionProgram"] * 3
        _assert_matches_reference(lowered)
