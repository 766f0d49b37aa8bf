"""End to end on real data: a small CNN (conv+batchnorm, one conv without a bias) trained here on scikit-learn's 8x8
digits, quantized with NeutronQuantizer by PTQ and by a short QAT run, lowered to one Neutron partition, written to a
.pte and run on the host through ExecuTorch's runtime. The models are exported with a dynamic batch, so each .pte
takes the whole test set as one batch.

Each .pte must agree with its quantized torch model (the reference) on >= 99% of the test images. PTQ
accuracy stays within 1 point of the float model's; QAT accuracy is no worse than PTQ's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize for to_executorch)
import pytest
import torch
from executorch.exir import to_edge_transform_and_lower
from torch import nn
from torch.fx import GraphModule
from torchao.quantization.pt2e import move_exported_model_to_eval
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e

from neutron_backend.compile_spec import generate_neutron_compile_spec
from neutron_backend.partitioner import NeutronPartitioner
from neutron_backend.quantizer import NeutronQuantizer, calibrate
from neutron_backend.report import DelegationReport
from neutron_backend.verify import VerifyResult, verify

SEED = 0
TEST_FRACTION = 0.3
EPOCHS = 8
BATCH_SIZE = 64
LEARNING_RATE = 1e-2
# QAT fine-tunes the float model briefly at a lower rate: one pass over the training set.
QAT_EPOCHS = 1
QAT_LEARNING_RATE = 1e-3
CALIBRATION_IMAGES = 256
CALIBRATION_BATCH_SIZE = 32
MIN_FLOAT_ACCURACY = 0.90
MIN_AGREEMENT = 0.99
MAX_ACCURACY_DROP = 0.01

aten = torch.ops.aten
DQ_PER_CHANNEL = torch.ops.quantized_decomposed.dequantize_per_channel.default


class DigitsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@dataclass
class Digits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


@dataclass
class Lowered:
    quantized: GraphModule
    report: DelegationReport
    result: VerifyResult


def _train(model: nn.Module, data: Digits, epochs: int, learning_rate: float) -> None:
    """Seeded Adam over shuffled mini-batches; `model` is trained in place (in whatever mode it is in)."""
    torch.manual_seed(SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        order = torch.randperm(len(data.train_y), generator=generator)
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(data.train_x[batch]), data.train_y[batch]).backward()
            optimizer.step()


@pytest.fixture(scope="module")
def digits() -> Digits:
    """Train and test images ([N, 1, 8, 8] in [0, 1]) and labels, split 70/30 with a fixed seed."""
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    loaded = datasets.load_digits()
    images = torch.tensor(loaded.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(loaded.target, dtype=torch.int64)
    train_idx, test_idx = model_selection.train_test_split(
        range(len(labels)), test_size=TEST_FRACTION, random_state=SEED, stratify=loaded.target)
    train_idx, test_idx = torch.tensor(train_idx), torch.tensor(test_idx)
    return Digits(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx])


@pytest.fixture(scope="module")
def float_model(digits: Digits) -> DigitsNet:
    torch.manual_seed(SEED)
    model = DigitsNet().train()
    _train(model, digits, EPOCHS, LEARNING_RATE)
    return model.eval()


def _export(model: nn.Module, data: Digits) -> GraphModule:
    """`model` exported with a dynamic batch dimension (in its current train/eval mode)."""
    batch = torch.export.Dim("batch")
    return torch.export.export(model, (data.train_x[:BATCH_SIZE],), dynamic_shapes=({0: batch},)).module()


def _lower_and_verify(quantized: GraphModule, model: nn.Module, data: Digits, path: Path) -> Lowered:
    """Lowers `quantized` for a batch of the whole test set, writes it to `path` and runs the test set through it and
    through `quantized`."""
    partitioner = NeutronPartitioner(generate_neutron_compile_spec("imxrt700"))
    edge = to_edge_transform_and_lower(torch.export.export(quantized, (data.test_x,)), partitioner=[partitioner])
    path.write_bytes(edge.to_executorch().buffer)
    result = verify(path, quantized, [(data.test_x,)], float_model=model, labels=[data.test_y])
    return Lowered(quantized, partitioner.report, result)


def _assert_fully_delegated(report: DelegationReport) -> None:
    assert report.num_partitions == 1, str(report)
    on_cpu = [e for e in report.nodes if not e.delegated and not e.target.startswith("quantized_decomposed.")]
    assert not on_cpu, f"left on the CPU: {[(e.target, e.reason) for e in on_cpu]}"
    assert report.delegated_mac_fraction == 1.0


@pytest.fixture(scope="module")
def ptq(digits: Digits, float_model: DigitsNet, tmp_path_factory: pytest.TempPathFactory) -> Lowered:
    prepared = prepare_pt2e(_export(float_model, digits), NeutronQuantizer("imxrt700"))
    images = digits.train_x[:CALIBRATION_IMAGES]
    calibrate(prepared, list(images.split(CALIBRATION_BATCH_SIZE)), progress=False)
    quantized = convert_pt2e(prepared)
    return _lower_and_verify(quantized, float_model, digits, tmp_path_factory.mktemp("ptq") / "digits.pte")


def _qat(model: DigitsNet, data: Digits) -> GraphModule:
    """Fine-tunes a copy of `model` with fake quantization (conv+batchnorm fused by simulated fusion) and converts
    it."""
    prepared = prepare_qat_pt2e(_export(copy.deepcopy(model).train(), data), NeutronQuantizer("imxrt700", is_qat=True))
    _train(prepared, data, QAT_EPOCHS, QAT_LEARNING_RATE)
    move_exported_model_to_eval(prepared)
    return convert_pt2e(prepared)


def test_digits_ptq_on_neutron(digits: Digits, float_model: DigitsNet, ptq: Lowered) -> None:
    with torch.no_grad():
        float_accuracy = (float_model(digits.test_x).argmax(1) == digits.test_y).double().mean().item()
    assert float_accuracy >= MIN_FLOAT_ACCURACY, f"float model only reached {float_accuracy:.3f}"
    _assert_fully_delegated(ptq.report)

    result = ptq.result
    assert result.num_top1_samples == len(digits.test_y)
    assert result.float_accuracy == pytest.approx(float_accuracy)
    assert result.top1_agreement >= MIN_AGREEMENT, str(result)
    assert abs(result.pte_accuracy - result.float_accuracy) <= MAX_ACCURACY_DROP, str(result)
    # Per-operator differences are at most one step; through four layers they stay small on average.
    assert result.mean_error_steps < 0.5, str(result)


def test_digits_qat_on_neutron(digits: Digits, float_model: DigitsNet, ptq: Lowered, tmp_path: Path) -> None:
    quantized = _qat(float_model, digits)
    # Batchnorm folded into both convs; the biasless conv got the folded shift as an int32 per-channel bias.
    assert not [n for n in quantized.graph.nodes if n.target == aten.batch_norm.default]
    convs = [n for n in quantized.graph.nodes if n.target == aten.conv2d.default]
    assert len(convs) == 2
    for conv in convs:
        bias = conv.args[2]
        assert bias.target == DQ_PER_CHANNEL and bias.args[-1] == torch.int32, conv.format_node()

    qat = _lower_and_verify(quantized, float_model, digits, tmp_path / "digits_qat.pte")
    _assert_fully_delegated(qat.report)
    assert qat.result.top1_agreement >= MIN_AGREEMENT, str(qat.result)
    assert qat.result.pte_accuracy >= ptq.result.pte_accuracy, f"QAT:\n{qat.result}\nPTQ:\n{ptq.result}"
