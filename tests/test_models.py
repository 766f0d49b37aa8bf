"""The random-weight zoo models end to end: every one lowers for imxrt700 with all of its MACs on the NPU, in one
partition, and its .pte, run on the host (ExecuTorch runtime), returns the reference's outputs on the reference's
int8 output grid.

Weights are random (seeded) with batchnorm statistics warmed up, and inputs are seeded N(0, 1), so these check the
lowering, not numbers a model is judged by: on random weights a deep network is chaotic (two correct integer
implementations, LiteRT's optimized and reference kernels, differ by up to 16 output steps on MobileNetV2), so no
model-level error or agreement figure is asserted here. Per-operator bounds (1 step per
requantizing operator) are asserted in tests/test_ops_*.py and tests/test_lowering_numerics.py; accuracy and top-1
agreement are asserted on the trained zoo models in tests/test_trained_models.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from neutron_backend.models import get_model, list_models, zoo_entry
from neutron_backend.pipeline import CompiledModel, compile_model
from neutron_backend.quantizer.calibration import random_batches
from neutron_backend.runtime import load_pte
from neutron_backend.verify import VerifyResult, output_scales, verify

TARGET = "imxrt700"
CALIBRATION_BATCHES = 16
# Inputs differ from the calibration batches (seed 0).
INPUT_SEED = 1
NUM_INPUTS = 10
BOUNDARY_QDQ = {"quantized_decomposed.quantize_per_tensor.default",
                "quantized_decomposed.dequantize_per_tensor.default"}


RANDOM_WEIGHT_MODELS = sorted(name for name in list_models() if not zoo_entry(name).trained)
# Every operator of these models is supported, so all of it between the input's quantize and the output's
# dequantize is one partition.
PARTITIONS = 1
SLOW = {"mobilenet_v2"}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Batch-1 models are too small for intra-op threads to pay off: on a busy 2-core machine their wake-ups made
    torch ops up to 100x slower (a 1x16x32x32 round: 8 ms with 2 threads, 3 us with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _reference_macs(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> int:
    """Multiply-accumulates of the float model's convolutions and linear layers, counted with forward hooks."""
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * (module.in_channels // module.groups) * kernel
        else:
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(*example_inputs)
    for handle in handles:
        handle.remove()
    return total


class _FirstOutputs:
    """Wraps a callable returning tensors and keeps each call's first output, flattened."""

    def __init__(self, function) -> None:
        self.function = function
        self.outputs: list[torch.Tensor] = []

    def __call__(self, *args: torch.Tensor):
        result = self.function(*args)
        result = result if isinstance(result, tuple | list) else (result,)
        self.outputs.append(result[0].detach().reshape(-1).double())
        return result


@dataclass
class _Run:
    compiled: CompiledModel
    model: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    result: VerifyResult
    reference_outputs: list[torch.Tensor]
    pte_outputs: list[torch.Tensor]


_RUNS: dict[str, _Run] = {}


def _run(name: str, directory: Path) -> _Run:
    """Compiles the zoo model `name` once per session and verifies its .pte on the expected number of inputs."""
    if name not in _RUNS:
        model, example_inputs = get_model(name)
        compiled = compile_model(model, example_inputs, TARGET, progress=False,
                                 calibration_batches=random_batches(example_inputs, CALIBRATION_BATCHES))
        pte = directory / f"{name}.pte"
        pte.write_bytes(compiled.pte)
        program, reference = _FirstOutputs(load_pte(pte)), _FirstOutputs(compiled.quantized)
        inputs = random_batches(example_inputs, NUM_INPUTS, seed=INPUT_SEED)
        result = verify(program, reference, inputs, output_scale=output_scales(compiled.quantized))
        _RUNS[name] = _Run(compiled, model, example_inputs, result, reference.outputs, program.outputs)
    return _RUNS[name]


def _params(names: list[str]) -> list:
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in names]


@pytest.mark.parametrize("name", _params(RANDOM_WEIGHT_MODELS))
def test_zoo_model_delegates_all_macs(name: str, tmp_path_factory: pytest.TempPathFactory,
                                      record_property) -> None:
    run = _run(name, tmp_path_factory.mktemp(name))
    report = run.compiled.report
    record_property("partitions", report.num_partitions)
    record_property("macs", report.total_macs)
    assert report.delegated_mac_fraction == 1.0, str(report)
    assert report.total_macs == _reference_macs(run.model, run.example_inputs)
    assert report.num_partitions == PARTITIONS, str(report)
    # Only the quantize of the model input and the dequantize of its output stay on the CPU.
    cpu = report.rejected()
    assert len(cpu) == 2 and {entry.target for entry in cpu} == BOUNDARY_QDQ, str(report)


@pytest.mark.parametrize("name", _params(RANDOM_WEIGHT_MODELS))
def test_zoo_model_pte_outputs_lie_on_the_reference_output_grid(name: str,
                                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    run = _run(name, tmp_path_factory.mktemp(name))
    assert run.result.num_samples == NUM_INPUTS
    # The .pte's output is the int8 result of its last operator dequantized by the CPU with the reference's output
    # qparams: every value is (q - zero_point) * scale for an integer q in [-128, 127].
    dequantize = next(n for n in run.compiled.quantized.graph.nodes if n.op == "output").args[0][0]
    scale, zero_point = float(dequantize.args[1]), int(dequantize.args[2])
    for pte, reference in zip(run.pte_outputs, run.reference_outputs, strict=True):
        assert pte.shape == reference.shape
        steps = pte / scale + zero_point
        assert torch.allclose(steps, steps.round(), atol=1e-3), f"{name}: off the output grid"
        assert steps.round().min() >= -128 and steps.round().max() <= 127


@pytest.mark.parametrize("name", sorted(set(RANDOM_WEIGHT_MODELS) - SLOW))
def test_zoo_model_is_deterministic_with_warmed_up_batchnorm(name: str) -> None:
    (first, (x_first,)), (second, (x_second,)) = get_model(name), get_model(name.upper())
    assert not first.training
    torch.testing.assert_close(x_first, x_second, rtol=0, atol=0)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert tuple(x_first.shape) == zoo_entry(name).input_shape
    for norm in (m for m in first.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)):
        assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var)), "batchnorm not warmed up"


def test_classifier_dropout_stays_in_the_partition(partition_model, entry_for) -> None:
    # MobileNetV2's head: pool, flatten, dropout (a clone in eval mode), linear. The dropout shares its input's
    # qparams, so it is delegated with the rest instead of splitting the graph.
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                          nn.Linear(8, 4))
    report, _ = partition_model(model, (torch.randn(1, 3, 8, 8),))
    assert report.num_partitions == 1, str(report)
    assert entry_for(report, "dim_order_ops._clone_dim_order.default").delegated, str(report)
